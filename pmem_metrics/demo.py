"""The demo: ``python -m pmem_metrics demo``.

It simulates pmem devices whose counters a few worker threads bump at random
(at most four threads, each with its share of the devices), and writes a
metrics line every ``--interval`` seconds and a final one at the end, to
stdout or to ``--metrics-path`` (a file or named pipe), like
``firecracker --metrics-path``.  It ends by itself after ``--duration``
seconds, or at a Ctrl-C: then it still writes the final line and its summary,
and exits with status 130.  The summary on stderr gives the wall time the
run actually took.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

from ._workers import Processes, Threads
from .device import PmemMetricsPerDevice, attach
from .registry import Registry
from .writer import METRICS

_MAX_WORKERS = 4
"""The demo's worker threads, whatever the number of devices: each bumps a share of them."""

_MAX_WAIT = 60.0  # seconds one select() may wait (a deadline may be inf: --duration inf)


def _abort(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler: ignore any further SIGINT, and raise ``KeyboardInterrupt`` (for main)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


class CtrlC:
    """While entered, the first SIGINT only sets :attr:`caught` and wakes :meth:`sleep_until`.

    So a Ctrl-C never cuts a metrics line or the workers' bookkeeping short:
    the demo stops at its next step and ends as usual.  A second Ctrl-C
    raises ``KeyboardInterrupt`` (to abort a final write that hangs), and
    from then on, or once a Ctrl-C'd demo is done, SIGINT is ignored: the
    process is on its way out with status 130, and a further one would only
    interrupt its exit with a traceback.  The signal wakeup fd (written by
    the C-level handler) wakes the sleep even when the signal lands just
    before ``select()`` blocks.  Outside the main thread, or where SIGINT is
    not Python's default (ignored, say), nothing is installed.
    """

    def __init__(self) -> None:
        self.caught = False
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def __enter__(self) -> CtrlC:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._pipe = (r, w)
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.caught = True
        signal.signal(signal.SIGINT, _abort)

    def __exit__(self, *exc_info: object) -> None:
        if self._pipe is not None:
            signal.signal(
                signal.SIGINT, signal.SIG_IGN if self.caught else signal.default_int_handler
            )
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def sleep_until(self, deadline: float) -> bool:
        """Sleep until ``time.monotonic()`` reaches *deadline*; ``True`` at once on a Ctrl-C."""
        while not self.caught:
            left = min(deadline - time.monotonic(), _MAX_WAIT)
            if left <= 0:
                return False
            if self._pipe is None:
                time.sleep(left)
            elif select.select([self._pipe[0]], [], [], left)[0]:
                try:  # a signal came: empty the pipe, then look at self.caught
                    while os.read(self._pipe[0], 512):
                        pass
                except BlockingIOError:
                    pass
        return True


def write_lines(
    ctrl_c: CtrlC,
    start: float,
    interval: float,
    duration: float,
    write: Callable[[], bool] = METRICS.write,
) -> int:
    """*write* writes a line at every multiple of *interval* before *duration*; then wait.

    Late beats are written all the same, so the count of lines is exact
    (``MetricsWriter.start_periodic`` instead skips them); a Ctrl-C ends it
    at once.  Returns the lines written.
    """
    lines = 0
    while (lines + 1) * interval < duration:
        if ctrl_c.sleep_until(start + (lines + 1) * interval):
            break
        lines += write()
    ctrl_c.sleep_until(start + duration)
    return lines


def serve_prometheus(
    port: int,
    addr: str,
    who: str = "demo",
    segments: Mapping[str, Registry] | None = None,
    reopen: bool = False,
) -> None:
    """Serve the counters (of *segments*, if given) for Prometheus on addr:port while *who* runs.

    *reopen*: as for :class:`pmem_metrics.prometheus.PmemCollector`.
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from .prometheus import register
    except ImportError:
        raise SystemExit(
            "python -m pmem_metrics: --prometheus-port needs prometheus_client: "
            "pip install '.[prometheus]' (from a checkout)"
        ) from None
    registry = CollectorRegistry()
    register(registry, segments, reopen=reopen)
    server, _ = start_http_server(port, addr=addr, registry=registry)
    bound = server.server_address[1]
    print(
        f"{who}: Prometheus metrics at http://{addr}:{bound}/metrics", file=sys.stderr, flush=True
    )


def demo(
    devices: int,
    duration: float,
    interval: float,
    metrics_path: str | None,
    seed: int,
    prometheus: tuple[int, str] | None = None,
    processes: int = 0,
) -> int:
    """Run the simulation; return the process exit status (130 after a Ctrl-C).

    With *processes*, that many worker processes bump the devices in a
    temporary shared segment while this process writes the lines.
    """
    if metrics_path is None and sys.stdout is None:
        raise SystemExit(
            "python -m pmem_metrics: stdout is closed; "
            "give --metrics-path to write the metrics elsewhere"
        )
    with tempfile.TemporaryDirectory(prefix="pmem-demo-") as scratch:
        if processes:
            attach(os.path.join(scratch, "segment"), capacity=max(devices, 1))
        return _run(devices, duration, interval, metrics_path, seed, prometheus, processes)


def _run(
    devices: int,
    duration: float,
    interval: float,
    metrics_path: str | None,
    seed: int,
    prometheus: tuple[int, str] | None,
    processes: int,
) -> int:
    handles = [PmemMetricsPerDevice.alloc(f"drv{i}") for i in range(devices)]
    METRICS.init(metrics_path if metrics_path is not None else sys.stdout)
    with CtrlC() as ctrl_c:
        # Processes first: fork before this one starts any thread of its own.
        pool: Threads | Processes
        if processes:
            pool = Processes(handles, processes, seed)
        else:
            pool = Threads(handles, min(devices, _MAX_WORKERS), seed)
        if prometheus is not None:
            serve_prometheus(*prometheus)
        start = time.monotonic()
        try:
            lines = write_lines(ctrl_c, start, interval, duration)
        finally:
            added = pool.stop()
        elapsed = time.monotonic() - start
        METRICS.write()
        lines += 1
        where = metrics_path if metrics_path is not None else "stdout"
        requested = f"{'interrupted; ' if ctrl_c.caught else ''}{duration:g} s requested"
        print(
            f"demo: {devices} devices on {len(pool.started)} worker {pool.kind}, "
            f"{added} increments in {elapsed:.2f} s ({requested}), "
            f"{lines} metrics lines written to {where}",
            file=sys.stderr,
        )
        return 130 if ctrl_c.caught else 0
