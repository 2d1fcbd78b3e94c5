"""Flushing: the Firecracker-compatible JSON object and the metrics line writer.

A flush reports, for every counter, what was added since the previous flush,
then moves the counter's baseline up to what it reported.  It happens in two
steps in C: a snapshot loads every counter once, and is committed only after
the report was built and (for :meth:`MetricsWriter.write`) delivered.  A
failed write aborts the snapshot, so the next flush reports those counts.

The object (compact JSON, ids kept as UTF-8, devices in id order, ``"pmem"``,
the aggregate, last)::

    {"pmem_drv0":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":0},
     "pmem_drv1":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":3},
     "pmem":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":3}}

A metrics line puts ``"utc_timestamp_ms"`` first and ends with ``\\n``::

    {"utc_timestamp_ms":1700000000000,"pmem_drv0":{...},"pmem_drv1":{...},"pmem":{...}}
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Union

from ._binding import FIELDS, NFIELDS, ffi, lib
from .errors import AlreadyInitializedError, MetricsDestinationError, error_from_errno

Flush = dict[str, dict[str, int]]
"""What :func:`flush_metrics` returns: ``{"pmem_<id>": {field: diff}, ..., "pmem": {...}}``."""

# '"pmem_%s":{"activate_fails":%d,...}' -- field names are C identifiers, no escaping needed.
_FIELDS_JSON = ",".join(f'"{name}":%d' for name in FIELDS)
_DEVICE_JSON = '"pmem_%s":{' + _FIELDS_JSON + "}"
_AGGREGATE_JSON = '"pmem":{' + _FIELDS_JSON + "}"


class _Snapshot:
    """What one C snapshot holds, copied out in three calls."""

    __slots__ = ("aggregate", "diffs", "ids_utf8")

    def __init__(self, s: Any) -> None:
        n = lib.pmem_metrics_snapshot_len(s)
        size = ffi.new("size_t *")
        ids = lib.pmem_metrics_snapshot_ids(s, size)
        # Every id followed by NUL; ids never contain NUL (C rejects it).
        self.ids_utf8: str = ffi.unpack(ids, size[0]).decode("utf-8") if n else ""
        self.diffs: list[int] = ffi.unpack(lib.pmem_metrics_snapshot_diffs(s), n * NFIELDS)
        self.aggregate: list[int] = ffi.unpack(lib.pmem_metrics_snapshot_aggregate(s), NFIELDS)

    def _rows(self, ids: str) -> Iterator[tuple[Any, ...]]:
        """(id, diff of each field) per device, in id order."""
        names = ids.split("\0")[:-1]
        d = self.diffs
        return zip(names, *(d[f::NFIELDS] for f in range(NFIELDS)))

    def as_dict(self) -> Flush:
        out = {f"pmem_{row[0]}": dict(zip(FIELDS, row[1:])) for row in self._rows(self.ids_utf8)}
        out["pmem"] = dict(zip(FIELDS, self.aggregate))
        return out

    def as_json(self) -> str:
        ids = self.ids_utf8
        # Ids hold no control characters, so '"' and '\' are all JSON must escape
        # (ensure_ascii=False / serde_json style: everything else stays UTF-8).
        if "\\" in ids or '"' in ids:
            ids = ids.replace("\\", "\\\\").replace('"', '\\"')
        parts = [_DEVICE_JSON % row for row in self._rows(ids)]
        parts.append(_AGGREGATE_JSON % tuple(self.aggregate))
        return "{" + ",".join(parts) + "}"


@contextmanager
def _flush() -> Iterator[_Snapshot]:
    """Take a snapshot; commit it if the body succeeds, abort it (losing nothing) if not."""
    s = ffi.NULL
    try:
        # Inside the try, so that an exception raised by a signal handler as the
        # call returns still aborts (what is left is the instant between the
        # C call's return and this assignment).
        s = lib.pmem_metrics_snapshot_take()
        if s == ffi.NULL:
            raise error_from_errno(ffi.errno, "cannot take a metrics snapshot")
        yield _Snapshot(s)
    except BaseException:
        lib.pmem_metrics_snapshot_abort(s)  # a no-op on NULL
        raise
    lib.pmem_metrics_snapshot_commit(s)


def flush_metrics() -> Flush:
    """Flush: every device's counts since the last flush, then the aggregate, as a dict.

    Keys are ``"pmem_<drive id>"`` in id order, then ``"pmem"``; each value maps
    every name in ``FIELDS`` to its diff.  The aggregate is the field-wise sum
    of the devices in this same flush.
    """
    with _flush() as snap:
        return snap.as_dict()


def flush_metrics_json() -> str:
    """Flush, as compact JSON text (the same object :func:`flush_metrics` returns)."""
    with _flush() as snap:
        return snap.as_json()


Destination = Union[str, "os.PathLike[str]", IO[Any]]


_SIGPIPE = {signal.SIGPIPE}


class _FdSink:
    """A file descriptor: a line goes out whole or not at all.

    If a write fails part way, for whatever reason (an OSError, or an
    exception from a signal handler), a regular file is cut back to where the
    line began.  Where that is impossible (a pipe), the next line starts with
    a newline, so the fragment stays a line of its own and never spoils the
    next one.  For a file object that has a descriptor, its own buffer is
    flushed first, so earlier text written through it keeps its place.
    """

    def __init__(self, fd: int, name: str, stream: IO[Any] | None = None) -> None:
        self.fd = fd
        self.name = name  # for error messages
        self.stream = stream
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self.append = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        self.torn = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> _FdSink:
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

    def write(self, line: str) -> None:
        data = memoryview((("\n" if self.torn else "") + line).encode("utf-8"))
        # A reader that went away must give EPIPE, not kill the process, whatever
        # SIGPIPE's disposition (Python ignores it; an application may not).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
        start = None  # where the line begins, once writing starts
        done = 0
        try:
            if self.stream is not None:
                self.stream.flush()
            start = 0
            if self.regular:
                start = os.fstat(self.fd).st_size if self.append else os.lseek(self.fd, 0, 1)
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except BaseException as e:
            if isinstance(e, OSError):
                if e.errno == errno.EPIPE and signal.SIGPIPE not in mask:
                    signal.sigtimedwait(_SIGPIPE, 0)  # take the pending one back
                if e.filename is None:
                    e.filename = self.name  # "[Errno 28] No space left on device: '/dev/full'"
            # An OSError from os.write wrote nothing more than `done`; after any
            # other exception (a signal handler's) the count may have missed a write.
            if start is not None and (done or not isinstance(e, OSError)):
                self._take_back(start)
            raise
        finally:
            if signal.SIGPIPE not in mask:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.torn = False

    def _take_back(self, start: int) -> None:
        """Remove whatever part of a failed line got out (we are the only writer)."""
        if self.regular:
            try:
                if os.fstat(self.fd).st_size > start:
                    os.ftruncate(self.fd, start)
                if not self.append:
                    os.lseek(self.fd, start, 0)
                return
            except OSError:
                pass
        self.torn = True  # a pipe: how much the reader got is unknowable


class _FileSink:
    """A file object with no descriptor (``io.StringIO``, ...): ``write()`` then ``flush()``.

    Text streams get ``str``, binary ones ``bytes``.  If either call fails the
    line counts as not delivered, so its counts are reported again by the next
    write: nothing is lost, but an object that kept the line buffered through
    a failed ``flush()`` will later emit it too.
    """

    def __init__(self, f: IO[Any]) -> None:
        self.f = f
        self.binary = isinstance(f, (io.RawIOBase, io.BufferedIOBase))

    def write(self, line: str) -> None:
        self.f.write(line.encode("utf-8") if self.binary else line)
        flush = getattr(self.f, "flush", None)
        if flush is not None:
            flush()


def _sink_for(destination: Destination) -> _FdSink | _FileSink:
    if isinstance(destination, (str, os.PathLike)):
        return _FdSink.open(destination)
    if not callable(getattr(destination, "write", None)):
        raise TypeError(
            "metrics destination must be a path or a writable file object, "
            f"not {type(destination).__name__}"
        )
    try:
        fd = destination.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return _FileSink(destination)
    return _FdSink(fd, str(getattr(destination, "name", destination)), destination)


class MetricsWriter:
    """Writes metrics lines to one destination, like Firecracker's ``--metrics-path``.

    Call :meth:`init` once, then :meth:`write` whenever a line is due.  The
    process-wide instance is :data:`METRICS`.
    """

    def __init__(self) -> None:
        self._sink: _FdSink | _FileSink | None = None
        self._init_lock = threading.Lock()

    @property
    def initialized(self) -> bool:
        """Whether :meth:`init` has succeeded."""
        return self._sink is not None

    def init(self, destination: Destination) -> None:
        """Set the destination: a path (regular file, appended to, or named pipe) or a file object.

        Lines are UTF-8.  A file object with a file descriptor is flushed
        before each line, which then goes straight to the descriptor.

        Raises :class:`AlreadyInitializedError` on a second call, and
        :class:`MetricsDestinationError` (an ``OSError``) if a path cannot be
        opened, including a named pipe that has no reader yet.
        """
        with self._init_lock:
            if self._sink is not None:
                raise AlreadyInitializedError("metrics writer is already initialized")
            self._sink = _sink_for(destination)

    def write(self) -> bool:
        """Flush and write one metrics line; ``False`` (writing nothing) before :meth:`init`.

        If the destination fails, its exception propagates and no count is
        lost: the next successful write reports them.  Paths and file objects
        with a file descriptor (``sys.stdout``, ``open(...)``) get each line in
        whole-line writes to the descriptor, so a line is delivered exactly
        once or not at all; see ``_FileSink`` for objects without one.
        """
        sink = self._sink
        if sink is None:
            return False
        with _flush() as snap:
            body = snap.as_json()
            stamp = time.time_ns() // 1_000_000
            sink.write(f'{{"utc_timestamp_ms":{stamp},{body[1:]}\n')
        return True


METRICS = MetricsWriter()
"""The process-wide metrics writer."""
