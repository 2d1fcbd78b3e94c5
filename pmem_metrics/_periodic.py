"""Periodic writing: a thread writes a line every interval, late beats skipped, failures logged.

:class:`PeriodicWriting` is the part of :class:`~pmem_metrics.MetricsWriter`
that starts and stops that thread (and writes the final line at exit).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from .errors import WriterStateError

_log = logging.getLogger("pmem_metrics")


class Periodic(NamedTuple):
    """A periodic writer: its thread, the event that stops it, who started it."""

    thread: threading.Thread
    stop: threading.Event
    pid: int  # the process that started it: a forked child inherits the state, not the thread
    at_exit: bool  # stop it, writing a final line, at interpreter exit

    @classmethod
    def new(cls, write: Callable[[], bool], interval: float, at_exit: bool) -> Periodic:
        """A periodic writer calling *write* every *interval* seconds, not started yet."""
        stop = threading.Event()
        thread = threading.Thread(
            target=_run,
            args=(write, interval, stop),
            name="pmem_metrics periodic writer",
            daemon=True,
        )
        return cls(thread, stop, os.getpid(), at_exit)


def _run(write: Callable[[], bool], interval: float, stop: threading.Event) -> None:
    due = time.monotonic() + interval
    while not stop.wait(max(0.0, due - time.monotonic())):
        try:
            write()
        except Exception as e:
            # One line per failure, saying why; the traceback only for debugging.
            _log.error("pmem_metrics: a metrics line failed (its counts are kept): %s", e)
            _log.debug("pmem_metrics: the failed line's traceback", exc_info=True)
        due = _next_beat(due, interval, time.monotonic())


def _next_beat(due: float, interval: float, now: float) -> float:
    """The beat after *due*; when that is already past, the next one from *now* (no burst)."""
    due += interval
    return due if due > now else now + interval


def seconds(what: str, value: float) -> float:
    """*value* as a float, if it is a positive number of seconds that threading can wait."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not 0 < value <= threading.TIMEOUT_MAX or math.isnan(value):
        raise ValueError(
            f"{what} must be a positive number of seconds, at most "
            f"threading.TIMEOUT_MAX ({threading.TIMEOUT_MAX:g}), not {value!r}"
        )
    return float(value)


class PeriodicWriting:
    """The periodic half of :class:`~pmem_metrics.MetricsWriter`: start, stop, the final line."""

    _lock: threading.RLock
    _sink: object
    _periodic: Periodic | None
    _exit_hook: bool
    _timeout: float

    if TYPE_CHECKING:  # MetricsWriter's

        def write(self) -> bool: ...

        def _write(self, deadline: float | None) -> bool: ...

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
        interval = seconds("interval", interval)
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
