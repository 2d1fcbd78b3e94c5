"""The exporter: ``python -m pmem_metrics export --shm PATH``.

It attaches to a shared segment and reports every device of every process
attached to it: Firecracker metrics lines every ``--interval`` seconds (and a
final one), and/or a Prometheus endpoint, until Ctrl-C or ``--duration``.
It creates no device of its own.
"""

from __future__ import annotations

import sys
import time

from .demo import CtrlC, serve_prometheus, write_lines
from .device import attach
from .writer import METRICS


def export(
    shm: str,
    metrics_path: str | None,
    interval: float,
    duration: float,
    prometheus: tuple[int, str] | None,
) -> int:
    """Run the exporter; return the process exit status (130 after a Ctrl-C).

    Lines go to *metrics_path*, or to stdout unless only Prometheus was asked for.
    """
    attach(shm)
    lines_to = metrics_path if metrics_path is not None else sys.stdout
    if prometheus is not None and metrics_path is None:
        lines_to = None
    if lines_to is not None:
        if sys.stdout is None and metrics_path is None:
            raise SystemExit("python -m pmem_metrics: stdout is closed; give --metrics-path")
        METRICS.init(lines_to)
    if prometheus is not None:
        serve_prometheus(*prometheus, who="export")
    with CtrlC() as ctrl_c:
        start = time.monotonic()
        lines = write_lines(ctrl_c, start, interval, duration)
        lines += METRICS.write()
    print(
        f"export: {lines} metrics lines from {shm} in {time.monotonic() - start:.2f} s",
        file=sys.stderr,
    )
    return 130 if ctrl_c.caught else 0
