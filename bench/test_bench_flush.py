"""Flush: flush_metrics_json() against encoding an equivalent prebuilt dict, and Prometheus."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pmem_metrics import FIELDS, PmemMetricsPerDevice, device_count, flush_metrics_json
from pmem_metrics._binding import lib

SIZES = (19, 1000, 10_000)
# What every counter gets between two flushes, so each flush reports these.
VALUES = dict(zip(FIELDS, (1, 0, 3, 4096)))


def ids(n: int) -> list[str]:
    return [f"bench{i:05d}" for i in range(n)]


def equivalent(n: int) -> dict[str, dict[str, int]]:
    """The dict a flush of *n* devices reports, built without the library."""
    out = {f"pmem_{i}": dict(VALUES) for i in ids(n)}
    out["pmem"] = {f: v * n for f, v in VALUES.items()}
    return out


def bumper(n: int) -> Any:
    """A setup function that gives every counter of *n* devices its VALUES."""
    pointers = [
        (getattr(PmemMetricsPerDevice.alloc(i), f)._c, v)
        for i in ids(n)
        for f, v in VALUES.items()
        if v
    ]
    add = lib.pmem_metrics_add

    def bump() -> None:
        for c, v in pointers:
            add(c, v)

    return bump


@pytest.mark.parametrize("n", SIZES)
def test_flush_json(measure: Any, n: int) -> None:
    for i in ids(n):
        PmemMetricsPerDevice.alloc(i)
    assert device_count() == n, "flush benchmarks must run first, smallest first"
    flush_metrics_json()
    text = measure.pedantic(flush_metrics_json, setup=bumper(n), rounds=max(20, 40_000 // n))
    assert text == json.dumps(equivalent(n), separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("n", SIZES)
def test_json_dumps_prebuilt(measure: Any, n: int) -> None:
    """Baseline: encoding the same object, already built, with the stdlib's C encoder."""
    measure(json.dumps, equivalent(n), separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("n", SIZES)
def test_prometheus_generate_latest(measure: Any, n: int) -> None:
    """The same devices and 4 counters, as prometheus_client counters."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    for f, v in VALUES.items():
        counter = Counter(f"pmem_{f}", f, ["drive_id"], registry=registry)
        for i in ids(n):
            counter.labels(i).inc(v)
    text = measure(generate_latest, registry)
    assert text.count(f'drive_id="{ids(n)[-1]}"'.encode()) == 2 * len(FIELDS)  # _total, _created
