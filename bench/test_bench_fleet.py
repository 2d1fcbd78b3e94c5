"""Smoke run of ``bench_fleet.py`` (10 segments, untimed checks only): it still runs end to end.

The figures come from ``python bench/bench_fleet.py`` on a quiet machine
(``bench/README.md``); this only shows the script, its workers and the
agent it starts still work, and that it leaves nothing in /dev/shm.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_fleet_smoke() -> None:
    before = set(glob.glob("/dev/shm/pmem-fleet-*"))
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "bench_fleet.py"), "--quick", "--creations", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 10 |")]
    assert len(rows) == 1, proc.stdout
    assert set(glob.glob("/dev/shm/pmem-fleet-*")) == before  # scratch removed
