"""Plot the C benchmark's thread scaling: ``python bench/plot_threads.py RESULT.json OUT.png``.

RESULT.json comes from ``make -C csrc bench BENCH_ARGS="--json RESULT.json"``.
Several results may be given (e.g. a 2-core and a 16-core machine); each gets
a panel.  Needs matplotlib (``pip install '.[bench]'``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {
    "one-counter": "all threads on one counter",
    "one-device": "own counter, one device (4 counters)",
    "devices": "own device each",
    "packed": "control: own counter, one shared cache line",
    "spread": "control: raw atomic of its own, 128 B apart",
}


def main(results: list[str], out: str) -> None:
    data = [json.loads(Path(r).read_text()) for r in results]
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.5), squeeze=False)
    for ax, d in zip(axes[0], data):
        threads = d["threads"]
        for mode, rates in d["throughput"].items():
            relative = [r / rates[0] for r in rates]
            ax.plot(threads, relative, marker="o", label=LABELS.get(mode, mode))
        ax.plot(threads, threads, color="grey", linestyle=":", label="ideal (linear)")
        ax.set_xlabel("threads")
        ax.set_ylabel("increments/s relative to 1 thread")
        ax.set_title(f"pmem_metrics_inc, {d['cores']} cores online")
        ax.set_xticks(threads)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:-1], sys.argv[-1])
