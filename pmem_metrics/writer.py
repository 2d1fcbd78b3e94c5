"""The metrics line writer: :class:`MetricsWriter` and the process-wide :data:`METRICS`.

Like Firecracker's ``--metrics-path``: initialised once with a destination, it
writes one line per :meth:`~MetricsWriter.write`, or one per interval from a
daemon thread (:meth:`~MetricsWriter.start_periodic`), and a final line at exit.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping

from ._binding import DEFAULT_REGISTRY
from ._periodic import Periodic
from ._sink import Destination, FdSink, FileSink, Progress, sink_for
from ._snapshot import dispose, new_slot, publish, take
from .errors import AlreadyInitializedError, WriterStateError
from .flush import as_json, line_head
from .registry import Registry

_log = logging.getLogger("pmem_metrics")

DEFAULT_TIMEOUT = 10.0
"""Seconds a line may wait for a destination that does not drain (:meth:`MetricsWriter.init`)."""


def _seconds(what: str, value: float) -> float:
    """*value* as a float, if it is a positive number of seconds that threading can wait."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not 0 < value <= threading.TIMEOUT_MAX or math.isnan(value):
        raise ValueError(
            f"{what} must be a positive number of seconds, at most "
            f"threading.TIMEOUT_MAX ({threading.TIMEOUT_MAX:g}), not {value!r}"
        )
    return float(value)


class MetricsWriter:
    """Writes metrics lines to one destination, like Firecracker's ``--metrics-path``.

    Call :meth:`init` once, then :meth:`write` whenever a line is due, or let
    :meth:`start_periodic` do it.  The process-wide instance is :data:`METRICS`.
    Each line flushes *registry* (a :class:`~pmem_metrics.Registry`; ``None``:
    the process's default registry, the one :data:`METRICS` flushes).
    """

    def __init__(self, registry: Registry | None = None) -> None:
        if registry is not None and not isinstance(registry, Registry):
            what = type(registry).__name__
            raise TypeError(f"registry must be a pmem_metrics.Registry, not {what}")
        self._r = DEFAULT_REGISTRY if registry is None else registry._r
        self._sink: FdSink | FileSink | None = None
        self._head = line_head(None, None)
        self._timeout = DEFAULT_TIMEOUT
        # Guards init and the periodic thread's start/stop.  Reentrant: a
        # signal handler may stop periodic writing while the same thread is
        # in the middle of starting it.
        self._lock = threading.RLock()
        self._periodic: Periodic | None = None
        self._exit_hook = False  # _stop_at_exit is registered with atexit
        _WRITERS.add(self)

    def set_registry(self, registry: Registry) -> None:
        """Flush *registry* for every line from now on, instead of the one flushed so far.

        For a writer that follows a segment's path: when the segment was
        replaced (a line failed with :class:`~pmem_metrics.SegmentReplacedError`),
        the exporter opens the path again and hands the new one here.  The
        old registry's counts since its last line are not reported.  A line
        being written meanwhile (by the periodic thread) flushes one or the
        other, whole.  Raises ``TypeError`` for what is not a ``Registry``.
        """
        if not isinstance(registry, Registry):
            what = type(registry).__name__
            raise TypeError(f"registry must be a pmem_metrics.Registry, not {what}")
        self._r = registry._r  # read once per line, by _write

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
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Set the destination: a path (regular file, appended to, or named pipe) or a file object.

        Lines are UTF-8.  A file object with a file descriptor is flushed
        before each line, which then goes straight to the descriptor.  *id*
        and *properties*, if given, go into every line after the timestamp,
        as newer Firecracker versions write them.  *timeout* (seconds) bounds
        how long one line waits for a destination that does not take it (a
        pipe whose reader stopped reading, a non-blocking descriptor): the
        line then fails with ``TimeoutError``, its counts kept for the next.
        It also bounds the final line at interpreter exit.

        Raises :class:`AlreadyInitializedError` on a second call,
        ``TypeError`` for a destination that is neither a path nor writable,
        an *id* that is not a ``str`` or *properties* that do not map ``str``
        to ``str``, ``ValueError`` for text with lone surrogates or a bad
        *timeout*, and :class:`MetricsDestinationError` (an ``OSError``) for a
        destination that cannot take lines: a path that cannot be opened
        (including a named pipe with no reader yet), a closed file object or
        one not open for writing, a ``fileno()`` that is no open descriptor.
        A refused call leaves the writer uninitialised.
        """
        with self._lock:
            if self._sink is not None:
                raise AlreadyInitializedError("metrics writer is already initialized")
            head = line_head(id, properties)
            timeout = _seconds("timeout", timeout)
            self._sink = sink_for(destination)
            self._head = head
            self._timeout = timeout

    def write(self) -> bool:
        """Flush and write one metrics line; ``False`` (writing nothing) before :meth:`init`.

        If the destination fails, its exception propagates and no count is
        lost: the next successful write reports them.  A regular file gets
        each line whole or not at all, whatever interrupts the write (a
        ``KeyboardInterrupt`` included).  On a pipe, a line cut short stays
        a line of its own (closed off by a newline) and its counts come again
        in the next whole line.  A file object without a descriptor gets
        ``write()`` and ``flush()``; if either fails, the line counts as
        undelivered.
        """
        return self._write(None)

    def _write(self, deadline: float | None) -> bool:
        """:meth:`write`; *deadline* (monotonic) also bounds the wait for other flushes."""
        sink = self._sink
        if sink is None:
            return False
        slot = new_slot()
        progress = Progress()
        try:
            body = as_json(take(slot, deadline, self._r))
            line = self._head % (time.time_ns() // 1_000_000) + body[1:] + "\n"
            until = time.monotonic() + self._timeout
            sink.write(line, until if deadline is None else min(deadline, until), progress)
            publish(slot)
        except:  # bare: nothing to evaluate before the cleanup starts
            # A line that went out whole stands: publish it, if that was not
            # done yet.  Any other is cut back from a regular file while the
            # flush is still held, then the flush is aborted.  Each is one C
            # call reached with no Python frame on the way, on counts that C
            # recorded before returning, so a second interrupt cannot leave a
            # delivered line unpublished or a cut one in the file.
            try:
                if progress.sent[0] == progress.length:
                    publish(slot)
                elif sink.cut is not None:
                    sink.cut(progress.start[0], progress.sent)
            finally:
                dispose(slot)
            raise
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
        the last counts are written; it gives up after the writer's
        *timeout* (see :meth:`init`), logging why, rather than hang the exit.
        A child process forked meanwhile has no periodic writer (its parent's
        thread is not there) and writes nothing at its exit.  Raises
        :class:`WriterStateError` before :meth:`init` or while periodic
        writing already runs, ``TypeError`` or ``ValueError`` for an
        *interval* that is not a positive number of seconds up to
        ``threading.TIMEOUT_MAX``.
        """
        interval = _seconds("interval", interval)
        with self._lock:
            if self._sink is None:
                raise WriterStateError("init() the metrics writer before start_periodic()")
            if self.periodic:
                raise WriterStateError("periodic writing is already running")
            self._periodic = running = Periodic.new(self.write, interval, at_exit)
            if at_exit and not self._exit_hook:
                atexit.register(self._stop_at_exit)  # once; it checks _periodic.at_exit
                self._exit_hook = True
            running.thread.start()

    def stop_periodic(self) -> None:
        """Stop the periodic thread and write a final line; nothing happens if none runs.

        An error of the final write propagates (its counts stay for a later
        write).
        """
        self._stop_periodic(None)

    def _stop_periodic(self, deadline: float | None) -> None:
        with self._lock:
            running = self._periodic
            if running is None or running.pid != os.getpid():
                return  # none, or the parent's: this forked child has no thread to stop
            running.stop.set()
            self._periodic = None
        # (ident None: an interrupt came between recording the thread and starting it.)
        if running.thread.ident is not None and running.thread is not threading.current_thread():
            running.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._write(deadline)

    def _stop_at_exit(self) -> None:
        running = self._periodic
        if running is None or not running.at_exit or running.pid != os.getpid():
            return
        try:
            self._stop_periodic(time.monotonic() + self._timeout)
        except Exception:
            _log.exception(
                "pmem_metrics: the final metrics line at exit failed (gave up after at most "
                "%g s); its counts were not written",
                self._timeout,
            )

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a thread that does not
        # exist here; nothing else of the writer waits on the parent.
        self._lock = threading.RLock()


_WRITERS: weakref.WeakSet[MetricsWriter] = weakref.WeakSet()


def _reset_writers_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_writers_in_child)

METRICS = MetricsWriter()
"""The process-wide metrics writer."""
