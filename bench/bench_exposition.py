"""A Prometheus scrape, rendered from templates against prometheus_client, as ratios of one run.

Run: ``pip install '.[bench]' && python bench/bench_exposition.py [--sizes 1000,10000,100000]``.

For each size, in a fresh process whose default registry holds that many
devices (counts of every magnitude, a few ids with ``"`` and ``\\``) and in a
segment of the same devices (the exporter's case: a ``segment`` label, and
the room gauges):

- ``generate_latest()`` over a registered ``PmemCollector``, against
  ``Exposition.render()`` (text 0.0.4) (targets: >= 10x faster at 10,000
  and 100,000 devices; moonshot 30x); the same for OpenMetrics, and for a
  gzipped body (what Prometheus asks for): prometheus_client's handler
  compresses at level 9, ``respond()`` at level 1 (no target);
- the peak memory of a ``render()`` (``tracemalloc``, the snapshot's copy
  included), against the size of the text it returns (target <= 2x).

Times are the best of several repeats; the two renderings are checked to be
the same bytes first.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc

from _timing import best


def worker(n: int, seg: str) -> dict[str, float]:
    """One size, in this (fresh) process: seconds of each rendering, and the memory ratio."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    import pmem_metrics as p
    from pmem_metrics.exposition import Exposition
    from pmem_metrics.prometheus import register

    r = p.open_segment(seg, capacity=n + 16) if seg else p.Registry.default()
    for i in range(n):
        m = r.alloc(f"drv{i:06d}" if i % 1000 else f'odd"\\{i}')
        m.activate_fails.add(i % 3)
        m.queue_event_count.add(i * 7919 if i % 10 else i**3)  # some above 1e6: Go's exponents
    segments = {"vm-1": r} if seg else None
    collectors = CollectorRegistry()
    register(collectors, segments)
    ours = Exposition(segments)
    assert generate_latest(collectors) == ours.render()
    assert om_latest(collectors) == ours.render(True)
    repeat = 3 if n >= 100_000 else 7
    out = {
        "theirs": best(lambda: generate_latest(collectors), repeat=repeat),
        "ours": best(ours.render, repeat=repeat),
        "theirs_om": best(lambda: om_latest(collectors), repeat=repeat),
        "ours_om": best(lambda: ours.render(True), repeat=repeat),
        # What prometheus_client's handler does for Accept-Encoding: gzip (level 9).
        "theirs_gzip": best(lambda: gzip.compress(generate_latest(collectors)), repeat=repeat),
        "ours_gzip": best(lambda: ours.respond(None, "gzip"), repeat=repeat),
    }
    tracemalloc.start()
    text = ours.render()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["bytes"] = len(text)
    out["peak_ratio"] = peak / len(text)
    return out


def measure(n: int, shared: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        seg = os.path.join(d, "seg") if shared else ""
        code = f"import bench_exposition as b, json; print(json.dumps(b.worker({n}, {seg!r})))"
        here = os.path.dirname(os.path.abspath(__file__))
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=here, capture_output=True, text=True, check=True
        )
        result: dict[str, float] = json.loads(proc.stdout)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    args = ap.parse_args()
    print("| devices | registry | text MB | text 0.0.4 | OpenMetrics | gzipped "
          "| peak / text | targets |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in map(int, args.sizes.split(",")):
        for shared in (False, True):
            m = measure(n, shared)
            speed, om = m["theirs"] / m["ours"], m["theirs_om"] / m["ours_om"]
            gz = m["theirs_gzip"] / m["ours_gzip"]
            ok = (n < 10_000 or speed >= 10) and m["peak_ratio"] <= 2
            print(
                f"| {n:,} | {'segment' if shared else 'default'} | {m['bytes'] / 1e6:.1f} "
                f"| {speed:.1f}x ({m['theirs'] * 1e3:.1f} / {m['ours'] * 1e3:.2f} ms) "
                f"| {om:.1f}x | {gz:.1f}x | {m['peak_ratio']:.2f}x "
                f"| {'PASS' if ok else 'MISS'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
