"""Delivery of metrics lines: whole lines to a descriptor, or to a file object.

A line goes out whole or is taken back.  The writer calls :meth:`FdSink.write`
with a fresh :class:`Progress`, and, if anything fails before the flush is
published, :meth:`FdSink.take_back` with the same one, still holding the flush.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import os
import select
import signal
import stat
import time
from typing import IO, Any, Union

from .errors import MetricsDestinationError

Destination = Union[str, "os.PathLike[str]", IO[Any]]

_SIGPIPE = {signal.SIGPIPE}

CUT = "\x18\n"
"""What closes off a fragment of a cut line: ASCII CAN ("cancel"), then a newline.

The CAN makes the fragment's line invalid JSON even when all that was cut
was the final newline, so a reader that skips lines that do not parse never
counts a cut line."""


class Progress:
    """How far one line got: what :meth:`FdSink.take_back` needs to undo it."""

    __slots__ = ("sent", "start", "unsure", "was_torn", "whole")

    def __init__(self) -> None:
        self.was_torn = False  # the sink's torn flag before this line
        self.start: int | None = None  # where the line began (a regular file), once writing starts
        self.sent = 0  # bytes known to be out
        self.unsure = False  # a write may have put out bytes not counted in `sent`
        self.whole = False  # the line is out, every byte of it


class FdSink:
    """A file descriptor: a line goes out whole or not at all.

    If a line fails part way, for whatever reason (an OSError, a timeout, or
    an exception from a signal handler), a regular file is cut back to where
    the line began.  Where that is impossible (a pipe), the next line starts
    with :data:`CUT`, so the fragment stays a line of its own that does not
    parse, and never spoils the next one.  Anything but a regular file is written in chunks of at
    most ``PIPE_BUF`` bytes, each once the descriptor is writable, so a line
    waits for a destination that does not drain only until its deadline
    (non-blocking descriptors included).  For a file object that has a
    descriptor, its own buffer is flushed first, so earlier text written
    through it keeps its place.
    """

    def __init__(self, fd: int, name: str, stream: IO[Any] | None = None) -> None:
        try:
            mode = os.fstat(fd).st_mode
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as e:
            raise MetricsDestinationError(
                e.errno, f"metrics destination {name!r}: file descriptor {fd} is not open"
            ) from e
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise MetricsDestinationError(
                errno.EBADF, f"metrics destination {name!r} is not open for writing"
            )
        self.fd = fd
        self.name = name  # for error messages
        self.stream = stream
        self.regular = stat.S_ISREG(mode)
        self.append = bool(flags & os.O_APPEND)
        self.torn = False  # a fragment went out: the next line starts with CUT
        self._cut_at = -1  # where the last line began (a regular file)
        # Cuts a regular file back to an offset: a C callable, no Python frame.
        self.cut = functools.partial(os.ftruncate, fd) if self.regular else None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FdSink:
        """Open *path* for appending; a named pipe with no reader is an error, not a hang."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            # O_NONBLOCK: opening a named pipe with no reader fails with ENXIO
            # instead of hanging until one shows up.
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            why = "named pipe has no reader" if e.errno == errno.ENXIO else e.strerror
            raise MetricsDestinationError(
                e.errno, f"cannot open metrics destination {os.fspath(path)!r}: {why}"
            ) from e
        os.set_blocking(fd, True)
        return cls(fd, os.fspath(path))

    def write(self, line: str, deadline: float, progress: Progress) -> None:
        """Write *line* whole, by *deadline* (``time.monotonic()``) where it can block."""
        # A reader that went away must give EPIPE, not kill the process, whatever
        # SIGPIPE's disposition (Python ignores it; an application may not).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
        try:
            if self.stream is not None:
                self.stream.flush()
            if self.regular:
                size = os.fstat(self.fd).st_size
                if self.torn and size == self._cut_at:
                    self.torn = False  # the file ends where the cut line began: it is gone
                progress.start = size if self.append else self._position(size)
            else:
                progress.start = 0
            data = memoryview(((CUT if self.torn else "") + line).encode("utf-8"))
            progress.was_torn = self.torn
            # In flight: if this line is cut and not taken back (even by a
            # second interrupt), the next line closes the fragment off.
            self._cut_at = progress.start
            self.torn = True
            while progress.sent < len(data):
                if self.regular:
                    self._write_some(data[progress.sent :], progress)
                else:
                    self._wait_writable(deadline)
                    end = progress.sent + select.PIPE_BUF
                    self._write_some(data[progress.sent : end], progress)
            self.torn = False
            progress.whole = True
        except OSError as e:
            if e.errno == errno.EPIPE and signal.SIGPIPE not in mask:
                signal.sigtimedwait(_SIGPIPE, 0)  # take the pending one back
            if e.filename is None:
                e.filename = self.name  # "[Errno 28] No space left on device: '/dev/full'"
            raise
        finally:
            if signal.SIGPIPE not in mask:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _position(self, size: int) -> int:
        """Where the line begins: the file position, or the end if a take-back left it past it."""
        at = os.lseek(self.fd, 0, os.SEEK_CUR)
        return at if at <= size else os.lseek(self.fd, size, os.SEEK_SET)

    def _write_some(self, chunk: memoryview, progress: Progress) -> None:
        progress.unsure = True
        try:
            n = os.write(self.fd, chunk)
        except BlockingIOError:
            progress.unsure = False  # it wrote nothing: wait and try again
            return
        except OSError:
            progress.unsure = False  # os.write raised: it wrote nothing
            raise
        progress.sent += n
        progress.unsure = False

    def _wait_writable(self, deadline: float) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT, "metrics destination did not take the line in time", self.name
                )

    def take_back(self, progress: Progress) -> None:
        """Remove whatever part of a failed line got out (the caller holds the flush)."""
        if progress.start is None:
            return  # nothing was written
        if self.regular:
            try:
                if os.fstat(self.fd).st_size > progress.start:
                    os.ftruncate(self.fd, progress.start)
                if not self.append:
                    os.lseek(self.fd, progress.start, os.SEEK_SET)
                self.torn = progress.was_torn  # as it was before this line
                return
            except OSError:
                pass
        # A pipe: how much the reader got is unknowable; if none of this line
        # went out, a fragment of an earlier one may still need closing off.
        self.torn = progress.was_torn or progress.sent > 0 or progress.unsure


class FileSink:
    """A file object with no descriptor (``io.StringIO``, ...): ``write()`` then ``flush()``.

    Text streams get ``str``, binary ones ``bytes``.  If either call fails the
    line counts as not delivered, so its counts are reported again by the next
    write: nothing is lost, but an object that kept the line buffered through
    a failed ``flush()`` will later emit it too.  No deadline applies.
    """

    cut = None  # nothing can be cut back

    def __init__(self, f: IO[Any]) -> None:
        self.f = f
        self.binary = isinstance(f, (io.RawIOBase, io.BufferedIOBase))

    def write(self, line: str, deadline: float, progress: Progress) -> None:
        """Hand *line* to the object and flush it."""
        self.f.write(line.encode("utf-8") if self.binary else line)
        flush = getattr(self.f, "flush", None)
        if flush is not None:
            flush()
        progress.whole = True

    def take_back(self, progress: Progress) -> None:
        """Nothing can be taken back from a file object."""


def sink_for(destination: Destination) -> FdSink | FileSink:
    """The sink for *destination*, refusing at once one that cannot take lines."""
    if isinstance(destination, (str, os.PathLike)):
        return FdSink.open(destination)
    if not callable(getattr(destination, "write", None)):
        raise TypeError(
            "metrics destination must be a path or a writable file object, "
            f"not {type(destination).__name__}"
        )
    name = str(getattr(destination, "name", destination))
    if getattr(destination, "closed", False):
        raise MetricsDestinationError(errno.EBADF, f"metrics destination {name!r} is closed")
    writable = getattr(destination, "writable", None)
    if callable(writable) and not writable():
        raise MetricsDestinationError(
            errno.EBADF, f"metrics destination {name!r} is not open for writing"
        )
    try:
        fd = destination.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return FileSink(destination)
    return FdSink(fd, name, destination)
