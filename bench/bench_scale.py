"""How alloc and flush times grow with the number of devices (a sorted-array registry).

Run: ``python bench/bench_scale.py``.  Each size runs in a fresh interpreter
(the registry never shrinks).  Per-operation times are reported with their
ratio to the smallest size, next to what a sorted array predicts:

- alloc of an existing id: a binary search, O(log n) -- nearly flat, the
  Python handle dominates;
- alloc of a new id (random order): search plus a memmove of half the
  pointer array on average, O(n) -- grows, with a small constant;
- flush: O(n) in total, so per device roughly flat.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

SIZES = (1_000, 10_000, 100_000)


def worker(n: int) -> dict[str, float]:
    from pmem_metrics import PmemMetricsPerDevice, flush_metrics_json
    from pmem_metrics._binding import lib

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    ids = [f"drive-{i:06d}" for i in range(n)]
    random.Random(1).shuffle(ids)
    before = rss()
    t0 = time.perf_counter()
    for drive_id in ids:
        PmemMetricsPerDevice.alloc(drive_id)
    t1 = time.perf_counter()
    grown = rss() - before
    for drive_id in ids:
        PmemMetricsPerDevice.alloc(drive_id)
    t2 = time.perf_counter()
    rounds = max(3, 300_000 // n)
    for _ in range(rounds):
        lib.pmem_metrics_snapshot_commit(lib.pmem_metrics_snapshot_take())
    t3 = time.perf_counter()
    for _ in range(rounds):
        flush_metrics_json()
    t4 = time.perf_counter()
    return {
        "alloc_new_us": (t1 - t0) / n * 1e6,
        "alloc_existing_us": (t2 - t1) / n * 1e6,
        "snapshot_ns_per_device": (t3 - t2) / rounds / n * 1e9,
        "flush_json_ns_per_device": (t4 - t3) / rounds / n * 1e9,
        "rss_bytes_per_device": grown / n,
    }


def main() -> None:
    results = {}
    for n in SIZES:
        cmd = [sys.executable, __file__, "--worker", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[n] = json.loads(out)
    columns = list(results[SIZES[0]])
    print(f"{'devices':>8} " + " ".join(f"{c:>26}" for c in columns))
    for n in SIZES:
        cells = []
        for c in columns:
            value, base = results[n][c], results[SIZES[0]][c]
            cells.append(f"{value:>17.2f} ({value / base:>5.2f}x)")
        print(f"{n:>8} " + " ".join(cells))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(int(sys.argv[2]))))
    else:
        main()
