"""The OpenTelemetry bridge's read strategy: one read per collection against one per callback.

    python bench/bench_otel.py [--devices 1000,10000] [--runs 7]

For a read-only segment of N devices (what the exporter reads), prints the
median time of an SDK collection (InMemoryMetricReader) with the bridge as
it is (one peek serves the four fields' callbacks) and with every callback
reading for itself, as a ratio, and the share of one peek in a collection.
Every figure is a ratio within one run (see README.md here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pmem_metrics import open_segment, otel
from pmem_metrics._snapshot import peek


def median_collect(seg: Any, runs: int, each: bool) -> float:
    reader = InMemoryMetricReader(cardinality_limits={ObservableCounter: 1 << 20})
    mp = MeterProvider(metric_readers=[reader])
    handle = otel.instrument(mp, segments={"s": seg})
    real = otel.Instrumentation.observe

    def observe(self: Any, field: int, deadline: float) -> Any:
        self._served = set(range(4))  # every field counts as served: each callback reads
        return real(self, field, deadline)

    if each:
        otel.Instrumentation.observe = observe  # type: ignore[method-assign]
    try:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            reader.get_metrics_data()
            times.append(time.perf_counter() - t)
    finally:
        otel.Instrumentation.observe = real  # type: ignore[method-assign]
        handle.uninstrument()
        mp.shutdown()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1000,10000")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        for n in (int(x) for x in args.devices.split(",")):
            path = Path(d) / f"seg{n}"
            seg = open_segment(path, capacity=n)
            for i in range(n):
                seg.alloc(f"drv{i}").cfg_fails.add(i)
            ro = open_segment(path, readonly=True, create=False)
            once = median_collect(ro, args.runs, each=False)
            each = median_collect(ro, args.runs, each=True)
            t = time.perf_counter()
            for _ in range(args.runs):
                peek(ro._r)
            one_peek = (time.perf_counter() - t) / args.runs
            print(
                f"{n:>7} devices: a read per callback / one per collection {each / once:.2f}x; "
                f"one peek / a collection {one_peek / once:.4f}"
            )


if __name__ == "__main__":
    main()
