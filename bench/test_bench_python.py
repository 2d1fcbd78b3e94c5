"""Python-side microbenchmarks: compare each group's entries as ratios, never as absolutes.

Run: ``pytest bench/ --benchmark-group-by=group``.
"""

from __future__ import annotations

import json

import pytest

from pmem_metrics import FIELDS, PmemMetricsPerDevice, flush_metrics, flush_metrics_json
from pmem_metrics._binding import lib

LOOP = 1000


@pytest.mark.benchmark(group="inc x1000")
def test_inc_bare_cffi_call(benchmark) -> None:
    """Baseline: the exported C function called directly on a counter pointer."""
    c = PmemMetricsPerDevice.alloc("bench-inc").activate_fails._c
    inc = lib.pmem_metrics_inc

    def run() -> None:
        for _ in range(LOOP):
            inc(c)

    benchmark(run)


@pytest.mark.benchmark(group="inc x1000")
def test_inc_handle(benchmark) -> None:
    m = PmemMetricsPerDevice.alloc("bench-inc")

    def run() -> None:
        for _ in range(LOOP):
            m.activate_fails.inc()

    benchmark(run)


@pytest.mark.benchmark(group="flush 19 devices")
def test_flush_json_19(benchmark) -> None:
    for i in range(19):
        PmemMetricsPerDevice.alloc(f"bench-flush{i}").queue_event_count.inc()
    benchmark(flush_metrics_json)


@pytest.mark.benchmark(group="flush 19 devices")
def test_json_dumps_prebuilt_19(benchmark) -> None:
    """Baseline: encoding an equivalent dict that already exists."""
    for i in range(19):
        PmemMetricsPerDevice.alloc(f"bench-flush{i}")
    obj = flush_metrics()
    assert set(obj["pmem"]) == set(FIELDS)
    benchmark(json.dumps, obj, separators=(",", ":"), ensure_ascii=False)
