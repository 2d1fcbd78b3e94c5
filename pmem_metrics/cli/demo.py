"""The demo: ``python -m pmem_metrics demo``.

It simulates pmem devices whose counters a few worker threads bump at random
(at most four threads, each with its share of the devices), and writes a
metrics line every ``--interval`` seconds and a final one at the end, to
stdout or to ``--metrics-path`` (a file or named pipe), like
``firecracker --metrics-path``.  It ends by itself after ``--duration``
seconds, or at a Ctrl-C or SIGTERM: then it still writes the final line and
its summary, and exits with status 130 after a Ctrl-C, 0 after a SIGTERM (a
service manager's stop).  SIGHUP reopens ``--metrics-path`` (log rotation).
The summary on stderr gives the wall time the run actually took.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

from ..device import PmemMetricsPerDevice
from ..segment import attach
from ..writer import METRICS
from ._args import add_prometheus, count, counted, interval, prog, prometheus_of, seconds
from ._service import Signals, serve_prometheus, write_lines
from ._workers import Processes, Threads

_MAX_WORKERS = 4
"""The demo's worker threads, whatever the number of devices: each bumps a share of them."""

_STOPPED_BY: dict[int | None, str] = {
    signal.SIGINT: "interrupted; ",
    signal.SIGTERM: "terminated; ",
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``demo`` command and its options."""
    p = commands.add_parser(
        "demo",
        help="simulate pmem devices and write metrics lines",
        description="Simulate pmem devices that worker threads (or processes) bump at random, "
        "and write a Firecracker metrics line every --interval seconds and a final one. "
        "Ctrl-C or SIGTERM ends it (final line, then status 130 or 0); SIGHUP reopens "
        "--metrics-path.",
    )
    p.add_argument("--devices", type=count, default=4, metavar="N", help="devices (default 4)")
    p.add_argument(
        "--duration",
        type=seconds,
        default=3.0,
        metavar="SECONDS",
        help="seconds to run (default 3; inf: until stopped)",
    )
    p.add_argument(
        "--interval",
        type=interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between lines (default 1, at least 0.01)",
    )
    p.add_argument(
        "--metrics-path", metavar="PATH", help="file or named pipe to write to (default: stdout)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument(
        "--processes",
        type=count,
        default=0,
        metavar="N",
        help="bump the devices from N worker processes sharing a temporary segment (default: "
        "threads of this process)",
    )
    add_prometheus(p, "the counters")
    p.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    return demo(
        args.devices,
        args.duration,
        args.interval,
        args.metrics_path,
        args.seed,
        prometheus_of(args),
        args.processes,
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
    """Run the simulation; return the process exit status (130 after a Ctrl-C, else 0).

    With *processes*, that many worker processes bump the devices in a
    temporary shared segment while this process writes the lines.
    """
    if metrics_path is None and sys.stdout is None:
        raise SystemExit(
            f"{prog()}: stdout is closed; give --metrics-path to write the metrics elsewhere"
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
    with Signals(on_hup=METRICS.reopen if metrics_path is not None else None) as signals:
        # Processes first: fork before this one starts any thread of its own.
        pool: Threads | Processes
        if processes:
            pool = Processes(handles, processes, seed)
        else:
            pool = Threads(handles, min(devices, _MAX_WORKERS), seed)
        start = time.monotonic()
        try:
            if prometheus is not None:
                serve_prometheus(*prometheus, who="demo")
            lines = write_lines(signals, start, interval, duration, METRICS.write)
        finally:
            added = pool.stop()  # the workers stop whatever failed
        elapsed = time.monotonic() - start
        METRICS.write()
        lines += 1
        where = metrics_path if metrics_path is not None else "stdout"
        stopped = _STOPPED_BY.get(signals.caught, "")
        requested = f"{stopped}{duration:g} s requested"
        print(
            f"demo: {counted(devices, 'device')} on {len(pool.started)} worker {pool.kind}, "
            f"{counted(added, 'increment')} in {elapsed:.2f} s ({requested}), "
            f"{counted(lines, 'metrics line')} written to {where}",
            file=sys.stderr,
        )
        return signals.status
