"""The demo's workers: a few threads, or processes sharing a segment, bumping devices."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from itertools import accumulate
from types import FrameType
from typing import Protocol

from .._binding import FIELDS
from ..device import PmemMetricsPerDevice


class Stop(Protocol):
    """What tells a worker to stop: a ``threading.Event``, or a flag a signal sets."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def bump(
    devices: Sequence[PmemMetricsPerDevice], rng: random.Random, stop: Stop, done: list[int]
) -> None:
    """Bump random counters of *devices*, one device after another, until *stop*.

    What it added goes into *done* when it ends, so the total is exact.
    """
    counters = [[getattr(m, name) for name in FIELDS] for m in devices]
    # Queue events are common, failures rare.
    weights = list(accumulate(20 if name == "queue_event_count" else 1 for name in FIELDS))
    added = 0
    try:
        while not stop.is_set():
            for device in counters:
                for counter in rng.choices(device, cum_weights=weights, k=16):
                    counter.inc()
                added += 16
                if stop.is_set():
                    break
            stop.wait(rng.uniform(0.0, 0.002))
    finally:
        done.append(added)


class Threads:
    """*n* threads in this process, each bumping its share of *devices*."""

    kind = "threads"

    def __init__(self, devices: Sequence[PmemMetricsPerDevice], n: int, seed: int) -> None:
        self._stop = threading.Event()
        self._done: list[int] = []
        self.started: list[threading.Thread] = []
        for w in range(n):
            t = threading.Thread(
                target=bump,
                args=(devices[w::n], random.Random(seed + w), self._stop, self._done),
                name=f"pmem-demo-{w}",
                daemon=True,
            )
            t.start()
            self.started.append(t)

    def stop(self) -> int:
        """Stop them all; what they added."""
        self._stop.set()
        for t in self.started:
            t.join()
        return sum(self._done)


class _SignalFlag:
    """Set by SIGTERM: a worker process's stop (no lock a signal handler could deadlock on)."""

    def __init__(self) -> None:
        self.set_ = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.set_ = True

    def is_set(self) -> bool:
        return self.set_

    def wait(self, timeout: float) -> bool:
        time.sleep(timeout)
        return self.set_


class Processes:
    """*n* forked processes, each bumping its share of *devices* in the attached segment."""

    kind = "processes"

    def __init__(self, devices: Sequence[PmemMetricsPerDevice], n: int, seed: int) -> None:
        self.started: list[tuple[int, int]] = []  # (pid, read end of its pipe)
        for w in range(n):
            r, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: bump until SIGTERM, then report its count
                os.close(r)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's
                done: list[int] = []
                try:
                    bump(devices[w::n], random.Random(seed + w), _SignalFlag(), done)
                    os.write(wfd, str(done[0]).encode())
                finally:
                    os._exit(0)
            os.close(wfd)
            self.started.append((pid, r))

    def stop(self) -> int:
        """Stop them all; what they added (in the shared counters)."""
        for pid, _ in self.started:
            os.kill(pid, signal.SIGTERM)
        added = 0
        for pid, r in self.started:
            with os.fdopen(r, "rb") as f:
                added += int(f.read() or 0)
            os.waitpid(pid, 0)
        return added
