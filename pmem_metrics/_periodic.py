"""The periodic writer's thread: a line every interval, late beats skipped, failures logged."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, NamedTuple

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
        except Exception:
            _log.exception("pmem_metrics: writing a metrics line failed; its counts are kept")
        due = _next_beat(due, interval, time.monotonic())


def _next_beat(due: float, interval: float, now: float) -> float:
    """The beat after *due*; when that is already past, the next one from *now* (no burst)."""
    due += interval
    return due if due > now else now + interval
