"""Increment: pmem_metrics against the bare CFFI floor and against the peers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _unroll import unrolled

from pmem_metrics import PmemMetricsPerDevice
from pmem_metrics._binding import lib

pytestmark = pytest.mark.benchmark(group="inc, 1000 calls")


def test_inc_floor(measure: Any, floor_lib: Any) -> None:
    """Baseline: a trivial API-mode CFFI function, one relaxed atomic add on a pointer."""
    p = floor_lib.ffi.new("uint64_t *")
    measure(unrolled("inc(p)", inc=floor_lib.lib.floor_inc, p=p))
    assert p[0] > 0


def test_inc_bare_lib(measure: Any) -> None:
    """Our own C increment called straight through the binding, no handle."""
    c = PmemMetricsPerDevice.alloc("bench-inc").activate_fails._c
    measure(unrolled("inc(c)", inc=lib.pmem_metrics_inc, c=c))


def test_inc_pmem_metrics(measure: Any) -> None:
    m = PmemMetricsPerDevice.alloc("bench-inc")
    before = m.activate_fails.count()
    measure(unrolled("m.activate_fails.inc()", m=m))
    assert m.activate_fails.count() > before


def test_inc_prometheus_client(measure: Any) -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("pmem_activate_fails", "doc", ["drive_id"], registry=CollectorRegistry())
    measure(unrolled("c.inc()", c=counter.labels("drv0")))


def test_inc_opentelemetry(measure: Any) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    counter = provider.get_meter("bench").create_counter("pmem_activate_fails")
    measure(unrolled("c.add(1, attrs)", c=counter, attrs={"drive_id": "drv0"}))
    provider.shutdown()


class LockAndInt:
    """The pure-Python way: an int behind a lock."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def inc(self) -> None:
        with self._lock:
            self.value += 1


def test_inc_lock_and_int(measure: Any) -> None:
    c = LockAndInt()
    measure(unrolled("c.inc()", c=c))
