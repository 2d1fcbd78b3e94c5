"""Metrics lines to a file descriptor: each goes out whole, or is cut back, or is closed off.

A line goes out whole or is cut back.  The writer calls ``write()`` with a
fresh :class:`Progress`; if anything fails before the flush is published, a
line that went out whole is published all the same, and any other is cut
back (``sink.cut``), both while the flush is still held.  The next line
closes off whatever fragment could not be cut back.  The system calls are
``pmem_metrics_line_write`` and ``pmem_metrics_line_cut`` (csrc/line.c),
which also keep several writers on one file or pipe from spoiling each
other's lines.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import signal
import stat
import time
import weakref
from typing import IO, Any

from ._binding import ffi, lib
from .errors import MetricsDestinationError

_SIGPIPE = {signal.SIGPIPE}

CUT = "\x18\n"
"""What closes off a fragment of a cut line: ASCII CAN ("cancel"), then a newline.

The CAN makes the fragment's line invalid JSON even when all that was cut
was the final newline, so a reader that skips lines that do not parse never
counts a cut line.  (C: ``PMEM_METRICS_LINE_CUT``.)"""

_LOCK_POLL = 0.001
"""Seconds between tries while another writer holds a regular file's lock (for microseconds)."""


class Progress:
    """How far one line got, in memory the C calls update before they return.

    ``sent[0] == length`` means the line went out whole: it stands, whatever
    was raised after.  ``start[0]`` is where it began in a regular file (-1
    until a byte of it is out), where a line that did not go out whole is
    cut back to; a cut sets ``sent[0]`` back to 0.
    """

    __slots__ = ("lead", "length", "sent", "start")

    def __init__(self) -> None:
        self.sent = ffi.new("size_t[1]")  # bytes out
        self.start = ffi.new("int64_t[1]", [-1])
        self.length = -1  # bytes in the line, once encoded
        self.lead = ""  # what it starts with to end what came before: "", "\n" or CUT


class FdSink:
    """A file descriptor: a line goes out whole or not at all.

    If a line fails part way, for whatever reason (an OSError, a timeout, or
    an exception from a signal handler), a regular file is cut back to where
    the line began, unless another writer appended since.  Where it cannot
    be (that, or a pipe), the next line starts with :data:`CUT`, so the
    fragment stays a line of its own that does not parse, and never spoils
    the next one.  Several writers may share a file or pipe: a line to a
    regular file that another writer left ending mid-line starts with
    :data:`CUT` (C checks how the file ends before each line), and the first
    line to anything else starts with a newline, ending any fragment a
    killed predecessor left (an empty line, which readers skip).  Anything
    but a regular file is
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
        self._last: Progress | None = None  # the line before this one, as far as it got
        # What our first line starts with: a regular file is looked at before
        # each line (in C); anything else may hold a fragment of a writer
        # killed before we came, which a newline ends.
        self._first = "" if self.regular else "\n"
        # Cuts a regular file back: a C callable, so the writer's cleanup
        # reaches the system call with no Python frame on the way.
        self.cut = functools.partial(lib.pmem_metrics_line_cut, fd) if self.regular else None

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
        sink = cls(_readable(fd, path), os.fspath(path))
        # Ours to close, once nothing uses it: a writer that reopened its
        # path drops its old sink, and a line still on its way holds it.
        weakref.finalize(sink, os.close, sink.fd)
        return sink

    def write(self, line: str, deadline: float, progress: Progress) -> None:
        """Write *line* whole, by *deadline* (``time.monotonic()``) where it can block."""
        lead = self._lead_after(self._last)
        data = (lead + line).encode("utf-8")
        progress.lead = lead
        progress.length = len(data)
        self._last = progress  # from here on, the next line settles after this one
        if self.stream is not None:
            self._flush_stream()
        buf = ffi.from_buffer(data)
        chunk = len(data) if self.regular else select.PIPE_BUF
        while progress.sent[0] < len(data):
            if not self.regular:
                self._wait_writable(deadline)
            at = progress.sent[0]
            n = min(chunk, len(data) - at)
            if lib.pmem_metrics_line_write(self.fd, buf + at, n, progress.sent, progress.start) < 0:
                err = ffi.errno
                # EINTR: a signal; its handler has run (or raised) as the call returned.
                if err not in (errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK):
                    raise OSError(err, os.strerror(err), self.name)
                if self.regular:  # EAGAIN: another writer holds the file's lock
                    self._wait_lock(deadline)

    def _lead_after(self, last: Progress | None) -> str:
        """What the next line starts with, to end the line *last* (or one before it) left."""
        if last is None:
            return self._first
        if last.sent[0] == last.length:
            return ""  # it went out whole
        if last.sent[0] == 0:
            return last.lead  # none of it went out, or it was cut back: as things stood
        return CUT

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

    def _wait_lock(self, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                errno.ETIMEDOUT, "another metrics writer held the file's lock too long", self.name
            )
        time.sleep(min(_LOCK_POLL, max(0.0, deadline - time.monotonic())))

    def _wait_writable(self, deadline: float) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT, "metrics destination did not take the line in time", self.name
                )


def _readable(fd: int, path: str | os.PathLike[str]) -> int:
    """*fd*, or, for a regular file, the same file opened for reading and appending.

    Before each line C reads the file's last byte (``pread``); a descriptor
    it can read saves it opening the file anew through /proc for that.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return fd
        rw = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return fd  # no read permission, say: C falls back
    again = os.fstat(rw)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # replaced meanwhile
        os.close(rw)
        return fd
    os.close(fd)
    return rw
