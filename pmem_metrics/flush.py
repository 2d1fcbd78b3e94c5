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

A metrics line puts ``"utc_timestamp_ms"`` first (then ``"id"`` and
``"properties"`` where :meth:`MetricsWriter.init` was given them) and ends
with ``\\n``::

    {"utc_timestamp_ms":1700000000000,"pmem_drv0":{...},"pmem_drv1":{...},"pmem":{...}}
    {"utc_timestamp_ms":1700000000000,"id":"vm-1","properties":{"k":"v"},"pmem_drv0":{...},...}
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import io
import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, NamedTuple, Union

from ._binding import FIELDS
from ._snapshot import Snapshot, flushing
from .errors import AlreadyInitializedError, MetricsDestinationError, WriterStateError

_log = logging.getLogger("pmem_metrics")

Flush = dict[str, dict[str, int]]
"""What :func:`flush_metrics` returns: ``{"pmem_<id>": {field: diff}, ..., "pmem": {...}}``."""

# '"pmem_%s":{"activate_fails":%d,...}' -- field names are C identifiers, no escaping needed.
_FIELDS_JSON = ",".join(f'"{name}":%d' for name in FIELDS)
_DEVICE_JSON = '"pmem_%s":{' + _FIELDS_JSON + "}"
_AGGREGATE_JSON = '"pmem":{' + _FIELDS_JSON + "}"


def _as_dict(snap: Snapshot) -> Flush:
    out = {f"pmem_{row[0]}": dict(zip(FIELDS, row[1:])) for row in snap.rows(snap.diffs)}
    out["pmem"] = dict(zip(FIELDS, snap.aggregate))
    return out


def _as_json(snap: Snapshot) -> str:
    ids = snap.ids_utf8
    # Ids hold no control characters, so '"' and '\' are all JSON must escape
    # (ensure_ascii=False / serde_json style: everything else stays UTF-8).
    if "\\" in ids or '"' in ids:
        ids = ids.replace("\\", "\\\\").replace('"', '\\"')
    parts = [_DEVICE_JSON % row for row in snap.rows(snap.diffs, ids)]
    parts.append(_AGGREGATE_JSON % tuple(snap.aggregate))
    return "{" + ",".join(parts) + "}"


def flush_metrics() -> Flush:
    """Flush: every device's counts since the last flush, then the aggregate, as a dict.

    Keys are ``"pmem_<drive id>"`` in id order, then ``"pmem"``; each value maps
    every name in ``FIELDS`` to its diff.  The aggregate is the field-wise sum
    of the devices in this same flush.
    """
    with flushing() as snap:
        return _as_dict(snap)


def flush_metrics_json() -> str:
    """Flush, as compact JSON text (the same object :func:`flush_metrics` returns)."""
    with flushing() as snap:
        return _as_json(snap)


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


def _check_utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates): {text!r}") from None


def _line_head(instance_id: str | None, properties: Mapping[str, str] | None) -> str:
    """The start of every line: the timestamp's key, then the optional ``id`` and ``properties``."""
    head = '{"utc_timestamp_ms":%d,'
    if instance_id is not None:
        if not isinstance(instance_id, str):
            raise TypeError(f"id must be a str, not {type(instance_id).__name__}")
        _check_utf8("id", instance_id)
        head += '"id":' + json.dumps(instance_id, ensure_ascii=False).replace("%", "%%") + ","
    if properties is not None:
        if not isinstance(properties, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in properties.items()
        ):
            raise TypeError("properties must map str to str")
        for k, v in properties.items():
            _check_utf8("properties", k + v)
        text = json.dumps(dict(properties), ensure_ascii=False, separators=(",", ":"))
        head += '"properties":' + text.replace("%", "%%") + ","
    return head


class MetricsWriter:
    """Writes metrics lines to one destination, like Firecracker's ``--metrics-path``.

    Call :meth:`init` once, then :meth:`write` whenever a line is due, or let
    :meth:`start_periodic` do it.  The process-wide instance is :data:`METRICS`.
    """

    def __init__(self) -> None:
        self._sink: _FdSink | _FileSink | None = None
        self._head = _line_head(None, None)
        self._lock = threading.Lock()  # guards init and the periodic thread's start/stop
        self._periodic: _Periodic | None = None
        self._exit_hook = False  # _stop_at_exit is registered with atexit

    @property
    def initialized(self) -> bool:
        """Whether :meth:`init` has succeeded."""
        return self._sink is not None

    def init(
        self,
        destination: Destination,
        *,
        id: str | None = None,  # named as the field of the line it fills
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Set the destination: a path (regular file, appended to, or named pipe) or a file object.

        Lines are UTF-8.  A file object with a file descriptor is flushed
        before each line, which then goes straight to the descriptor.  *id*
        and *properties*, if given, go into every line after the timestamp,
        as newer Firecracker versions write them.

        Raises :class:`AlreadyInitializedError` on a second call,
        ``TypeError`` for a destination that is neither a path nor writable,
        an *id* that is not a ``str`` or *properties* that do not map ``str``
        to ``str``, ``ValueError`` for text with lone surrogates, and
        :class:`MetricsDestinationError` (an ``OSError``) if a path cannot be
        opened, including a named pipe that has no reader yet.  A refused
        call leaves the writer uninitialised.
        """
        with self._lock:
            if self._sink is not None:
                raise AlreadyInitializedError("metrics writer is already initialized")
            head = _line_head(id, properties)
            self._sink = _sink_for(destination)
            self._head = head

    def write(self) -> bool:
        """Flush and write one metrics line; ``False`` (writing nothing) before :meth:`init`.

        If the destination fails, its exception propagates and no count is
        lost: the next successful write reports them.  A regular file gets
        each line whole or not at all.  On a pipe, a line cut short because
        its reader left stays a line of its own (closed off by a newline);
        the counts it carried come again in the next whole line.  A file
        object without a descriptor gets ``write()`` and ``flush()``; if
        either fails, the line counts as undelivered.
        """
        sink = self._sink
        if sink is None:
            return False
        with flushing() as snap:
            body = _as_json(snap)
            sink.write(self._head % (time.time_ns() // 1_000_000) + body[1:] + "\n")
        return True

    # ---- periodic writing ------------------------------------------------------

    @property
    def periodic(self) -> bool:
        """Whether a periodic writer thread runs (in this process)."""
        running = self._periodic
        return running is not None and running.pid == os.getpid()

    def start_periodic(self, interval: float = 60.0, *, at_exit: bool = True) -> None:
        """Write a line every *interval* seconds from a daemon thread, like Firecracker's timer.

        A line that fails is logged (logger ``pmem_metrics``) and its counts
        stay for the next one; the thread carries on.  When a write runs
        late, the missed beats are skipped, not written in a burst.  With
        *at_exit*, :meth:`stop_periodic` also runs at interpreter exit, so
        the last counts are written.  A child process forked meanwhile has
        no periodic writer (its parent's thread is not there) and writes
        nothing at its exit.  Raises :class:`WriterStateError` before
        :meth:`init` or while periodic writing already runs, ``TypeError``
        or ``ValueError`` for an *interval* that is not a positive number of
        seconds up to ``threading.TIMEOUT_MAX``.
        """
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number, not {type(interval).__name__}")
        if not 0 < interval <= threading.TIMEOUT_MAX:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        with self._lock:
            if self._sink is None:
                raise WriterStateError("init() the metrics writer before start_periodic()")
            if self.periodic:
                raise WriterStateError("periodic writing is already running")
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run_periodic,
                args=(float(interval), stop),
                name="pmem_metrics periodic writer",
                daemon=True,
            )
            self._periodic = _Periodic(thread, stop, os.getpid(), at_exit)
            if at_exit and not self._exit_hook:
                atexit.register(self._stop_at_exit)  # once; it checks _periodic.at_exit
                self._exit_hook = True
            thread.start()

    def stop_periodic(self) -> None:
        """Stop the periodic thread and write a final line; nothing happens if none runs.

        An error of the final write propagates (its counts stay for a later
        write).
        """
        with self._lock:
            running, self._periodic = self._periodic, None
        if running is None or running.pid != os.getpid():
            return  # none, or the parent's: this forked child has no thread to stop
        running.stop.set()
        if running.thread is not threading.current_thread():
            running.thread.join()
        self.write()

    def _run_periodic(self, interval: float, stop: threading.Event) -> None:
        due = time.monotonic() + interval
        while not stop.wait(max(0.0, due - time.monotonic())):
            try:
                self.write()
            except Exception:
                _log.exception("pmem_metrics: writing a metrics line failed; its counts are kept")
            due = _next_beat(due, interval, time.monotonic())

    def _stop_at_exit(self) -> None:
        running = self._periodic
        if running is None or not running.at_exit:
            return
        try:
            self.stop_periodic()
        except Exception:
            _log.exception("pmem_metrics: the final metrics line at exit failed")


class _Periodic(NamedTuple):
    thread: threading.Thread
    stop: threading.Event
    pid: int  # the process that started it: a forked child inherits the state, not the thread
    at_exit: bool


def _next_beat(due: float, interval: float, now: float) -> float:
    """The beat after *due*; when that is already past, the next one from *now* (no burst)."""
    due += interval
    return due if due > now else now + interval


METRICS = MetricsWriter()
"""The process-wide metrics writer."""
