"""Scale: 100,000 devices allocate, flush and stay within a memory bound.

Runs in a fresh interpreter so the registry holds exactly these devices.
Timing is measured in bench/bench_scale.py, never asserted here.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.heavy
def test_100k_devices(run_python) -> None:
    out = run_python(
        """
        import json, random
        from pmem_metrics import FIELDS, PmemMetricsPerDevice, device_count, flush_metrics_json

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        ids = [f"drive-{i:06d}" for i in range(100_000)]
        random.Random(4).shuffle(ids)  # inserts land all over the sorted array
        before = rss()
        for i, drive_id in enumerate(ids):
            m = PmemMetricsPerDevice.alloc(drive_id)
            if i % 7 == 0:
                m.queue_event_count.add(i)
        grown = rss() - before
        text = flush_metrics_json()
        print(json.dumps({"devices": device_count(), "rss_per_device": grown / len(ids),
                          "flush": json.loads(text), "bytes": len(text)}))
        """,
        timeout=300,
    )
    result = json.loads(out)
    flush = result["flush"]
    assert result["devices"] == 100_000
    keys = list(flush)
    assert keys[-1] == "pmem" and len(keys) == 100_001
    assert keys[:-1] == [f"pmem_drive-{i:06d}" for i in range(100_000)]  # sorted, once each
    assert flush["pmem"]["queue_event_count"] == sum(range(0, 100_000, 7))
    # A device is 4 cache-line counters plus its id: a few hundred bytes, not kilobytes.
    assert 256 <= result["rss_per_device"] < 1024, result["rss_per_device"]
