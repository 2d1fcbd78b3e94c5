"""Delivery of metrics lines: whole lines to a descriptor, or to a file object.

A line goes out whole or is cut back.  The writer calls ``write()`` with a
fresh :class:`Progress`; if anything fails before the flush is published, a
line that went out whole is published all the same, and any other is cut
back (``sink.cut``), both while the flush is still held.  The next line
closes off whatever fragment could not be cut back.
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

from ._binding import ffi, lib
from .errors import MetricsDestinationError

Destination = Union[str, "os.PathLike[str]", IO[Any]]

_SIGPIPE = {signal.SIGPIPE}

CUT = "\x18\n"
"""What closes off a fragment of a cut line: ASCII CAN ("cancel"), then a newline.

The CAN makes the fragment's line invalid JSON even when all that was cut
was the final newline, so a reader that skips lines that do not parse never
counts a cut line."""


class Progress:
    """How far one line got, in memory the C calls update before they return.

    ``sent[0] == length`` means the line went out whole: it stands, whatever
    was raised after.  ``start[0]`` is where it began in a regular file (-1
    until a byte of it is out), where a line that did not go out whole is
    cut back to.
    """

    __slots__ = ("length", "sent", "start", "was_torn")

    def __init__(self) -> None:
        self.sent = ffi.new("size_t[1]")  # bytes out
        self.start = ffi.new("int64_t[1]", [-1])
        self.length = -1  # bytes in the line, once encoded
        self.was_torn = False  # it starts with CUT, closing off an earlier fragment


class FdSink:
    """A file descriptor: a line goes out whole or not at all.

    If a line fails part way, for whatever reason (an OSError, a timeout, or
    an exception from a signal handler), a regular file is cut back to where
    the line began.  Where that is impossible (a pipe), the next line starts
    with :data:`CUT`, so the fragment stays a line of its own that does not
    parse, and never spoils the next one.  Anything but a regular file is
    written in chunks of at most ``PIPE_BUF`` bytes, each once the descriptor
    is writable, so a line waits for a destination that does not drain only
    until its deadline (non-blocking descriptors and sockets included; a
    terminal that stops reading can still hold a write).  For a file object
    that has a descriptor, its own buffer is flushed first, so earlier text
    written through it keeps its place.
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
        self.socket = stat.S_ISSOCK(mode)
        self._last: Progress | None = None  # the line before this one, as far as it got
        # A file that ends mid-line (a writer killed while writing, say)
        # gets its fragment closed off before our first line.
        self._ends_mid_line = self.regular and _ends_mid_line(fd, name)
        # Cuts a regular file back: a C callable, so the writer's cleanup
        # reaches the system call with no Python frame on the way.
        self.cut = functools.partial(lib.pmem_line_cut, fd) if self.regular else None

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
        torn = self._ends_mid_line or self._torn_after(self._last)
        data = ((CUT if torn else "") + line).encode("utf-8")
        progress.was_torn = torn
        progress.length = len(data)
        self._last = progress  # from here on, the next line settles after this one
        self._ends_mid_line = False
        if self.stream is not None:
            self._flush_stream()
        buf = ffi.from_buffer(data)
        chunk = len(data) if self.regular else select.PIPE_BUF
        while progress.sent[0] < len(data):
            if not self.regular:
                self._wait_writable(deadline)
            at = progress.sent[0]
            n = min(chunk, len(data) - at)
            if (
                lib.pmem_line_write(
                    self.fd, buf + at, n, self.socket, progress.sent, progress.start
                )
                < 0
            ):
                err = ffi.errno
                # EINTR: a signal; its handler has run (or raised) as the call returned.
                if err not in (errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK):
                    raise OSError(err, os.strerror(err), self.name)

    def _torn_after(self, last: Progress | None) -> bool:
        """Whether a fragment of the line *last* (or of one before it) still needs closing off."""
        if last is None or last.sent[0] == last.length:
            return False  # none, or it went out whole
        if last.sent[0] == 0:
            return last.was_torn  # none of it went out: as things stood before it
        start = last.start[0]
        if self.regular and start >= 0 and os.fstat(self.fd).st_size == start:
            return last.was_torn  # it was cut back: as things stood before it
        return True

    def _flush_stream(self) -> None:
        # The stream's own write can meet a reader that left: EPIPE, not a SIGPIPE death.
        assert self.stream is not None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
            self.stream.flush()
        except OSError as e:
            if e.errno == errno.EPIPE and signal.SIGPIPE not in mask:
                signal.sigtimedwait(_SIGPIPE, 0)  # take the pending one back
            raise
        finally:
            if signal.SIGPIPE not in mask:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _wait_writable(self, deadline: float) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT, "metrics destination did not take the line in time", self.name
                )


def _ends_mid_line(fd: int, path: str) -> bool:
    """Whether the regular file open at *fd* is not empty and does not end with a newline."""
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        try:
            last = os.pread(fd, 1, size - 1)
        except OSError:  # opened for writing only: read the file by its name
            with open(path, "rb") as f:
                f.seek(size - 1)
                last = f.read(1)
    except OSError:
        return False  # unreadable: nothing to close off that we could know of
    return last != b"\n"


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
        progress.length = 1
        self.f.write(line.encode("utf-8") if self.binary else line)
        flush = getattr(self.f, "flush", None)
        if flush is not None:
            flush()
        progress.sent[0] = 1  # delivered (an interrupt just before this repeats the line)


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
