"""Devices that come and go: what retiring costs, as ratios of timings made in this one run.

Run: ``pip install '.[bench]' && python bench/bench_lifecycle.py [--old PYTHON]``.

- increment, in a private registry and in a segment, against the same
  increment in an interpreter whose pmem_metrics predates retirement
  (``--old``: a Python with the older version installed; target <= 1.05x);
- alloc + retire + the final flush of one device, against a plain alloc of an
  id that exists (target <= 5x), private and segment;
- a flush of 1,000 devices of which 100 are retired (each flush drains
  them; they are allocated and retired again, untimed, before the next),
  against the same flush with none retired (target <= 1.2x; medians of 300),
  private and segment;
- alloc of an id that exists, against the ``--old`` interpreter (no target:
  each handle now holds its device's reference).

Each figure comes from fresh processes, the best of several repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _timing import best

INCS = 200_000


def worker(kind: str, seg: str) -> float:
    """One measurement, in this (fresh) process: seconds per operation."""
    import pmem_metrics as p

    r = p.open_segment(seg, capacity=4096) if seg else p.Registry.default()
    if kind == "inc":
        c = r.alloc("drv0").cfg_fails
        inc = c.inc
        return best(lambda: [inc() for _ in range(1000)], number=INCS // 1000) / 1000
    if kind == "alloc":
        r.alloc("drv0")
        return best(lambda: r.alloc("drv0"), number=20_000)
    if kind == "cycle":  # alloc + retire + final flush of one device (one other device there)
        r.alloc("other")
        names = iter(range(10**9))

        def cycle() -> None:
            name = f"d{next(names)}"
            r.alloc(name).cfg_fails.inc()
            r.retire(name)
            r.flush_metrics_json()

        return best(cycle, number=2_000)
    if kind.startswith("flush"):
        retired = int(kind[len("flush") :])
        held = [r.alloc(f"drv{i:05d}") for i in range(1000)]
        times = []
        for _ in range(300):
            for m in held[:retired]:  # untimed: back (revived, or new), and retired again
                r.alloc(m.drive_id)
                r.retire(m.drive_id)
            start = time.perf_counter()
            r.flush_metrics_json()  # timed: the flush alone (with its drain, if any)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    raise ValueError(kind)


def measure(python: str, kind: str, shared: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        seg = os.path.join(d, "seg") if shared else ""
        out = subprocess.run(
            [python, __file__, "--worker", kind, seg], capture_output=True, text=True, check=True
        )
        return float(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", metavar="PYTHON", help="an interpreter with the older version")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SEG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for shared in (False, True):
        where = "segment" if shared else "private"
        alloc = measure(sys.executable, "alloc", shared)
        cycle = measure(sys.executable, "cycle", shared)
        rows.append((f"alloc + retire + final flush / alloc of an existing id ({where})",
                     cycle / alloc, "<= 5x"))  # fmt: skip
        none, some = (
            measure(sys.executable, "flush0", shared),
            measure(sys.executable, "flush100", shared),
        )
        rows.append((f"flush of 1,000 with 100 retired / none ({where})", some / none, "<= 1.2x"))
        if args.old:
            for kind, target in (("inc", "<= 1.05x"), ("alloc", "none")):
                new, old = measure(sys.executable, kind, shared), measure(args.old, kind, shared)
                rows.append((f"{kind}, this version / the older ({where})", new / old, target))
    for what, ratio, target in rows:
        print(f"{what:70s} {ratio:6.2f}x  (target {target})")


if __name__ == "__main__":
    main()
