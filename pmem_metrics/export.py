"""The exporter: ``python -m pmem_metrics export --shm PATH [--shm PATH ...]``.

It opens existing shared segments (without attaching itself to any, and
never creating one: a mistyped path is an error, not a new file) and reports
every device of every process in them: Firecracker metrics lines every
``--interval`` seconds (and a final one), and/or a Prometheus endpoint, until
Ctrl-C or ``--duration``.  It creates no device of its own.

Lines are flushes: they report each count once, across every process that
flushes the segment.  A line has no room to say which segment it is from, so
lines need exactly one ``--shm``.  Prometheus reads (it resets nothing) any
number: every series is labelled ``segment`` with the path it was given as
(one segment given twice, under two names, is read once, under the first).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from .demo import CtrlC, serve_prometheus, write_lines
from .registry import Registry, open_segment
from .writer import MetricsWriter


def export(
    shms: Sequence[str],
    metrics_path: str | None,
    interval: float,
    duration: float,
    prometheus: tuple[int, str] | None,
) -> int:
    """Run the exporter; return the process exit status (130 after a Ctrl-C).

    Lines go to *metrics_path*, or to stdout unless only Prometheus was asked for.
    """
    lines_wanted = metrics_path is not None or prometheus is None
    paths = list(dict.fromkeys(shms))
    if lines_wanted and len(paths) != 1:
        raise SystemExit(
            "python -m pmem_metrics export: metrics lines report one segment; "
            "give one --shm, or several with --prometheus-port and no --metrics-path"
        )
    if lines_wanted and metrics_path is None and sys.stdout is None:
        raise SystemExit("python -m pmem_metrics: stdout is closed; give --metrics-path")
    for path in paths:
        if not path or not os.path.lexists(path):
            raise SystemExit(
                f"python -m pmem_metrics export: no segment at {path!r} "
                "(a process creates it when it attaches)"
            )
    segments: dict[str, Registry] = {}
    for path in paths:
        registry = open_segment(path)  # a SegmentError names the path and the problem
        if registry not in segments.values():
            segments[path] = registry
    writer = MetricsWriter(segments[paths[0]])
    if lines_wanted:
        writer.init(metrics_path if metrics_path is not None else sys.stdout)
    if prometheus is not None:
        serve_prometheus(*prometheus, who="export", segments=segments)
    with CtrlC() as ctrl_c:
        start = time.monotonic()
        lines = write_lines(ctrl_c, start, interval, duration, writer)
        lines += writer.write()
    what = f"{lines} metrics lines from {paths[0]}" if lines_wanted else "served"
    print(
        f"export: {what}, {len(segments)} segment(s), {time.monotonic() - start:.2f} s",
        file=sys.stderr,
    )
    return 130 if ctrl_c.caught else 0
