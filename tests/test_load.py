"""Exact accounting under load: nothing lost, nothing counted twice.

Python threads and native C threads increment counters on many devices while
another thread allocates new devices and two threads flush (one as a dict, one
as JSON).  Every flushed object must have its aggregate equal to the sum of
its devices, and, per device and field, the diffs of all flushes plus a final
one must add up to exactly what was incremented.

The ``soak`` size runs for minutes and is not in the quick run:
``pytest -m heavy``.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass

import pytest

from pmem_metrics import (
    FIELDS,
    PmemMetricsPerDevice,
    flush_metrics,
    flush_metrics_json,
)

from .helpers import assert_aggregate_is_sum, retire_mine, run_threads


@dataclass(frozen=True)
class Load:
    devices: int  # bumped by Python threads, on every field
    python_threads: int
    python_incs: int  # per Python thread
    native_devices: int  # bumped by native threads (activate_fails +1, queue_event_count +2)
    native_threads: int  # per native device
    native_incs: int  # per native thread
    new_devices: int  # allocated while all this goes on, each bumped once


QUICK = Load(8, 3, 20_000, 2, 2, 1_000_000, 1000)
SOAK = Load(64, 8, 1_500_000, 8, 4, 20_000_000, 50_000)


@pytest.mark.parametrize("load", [QUICK, pytest.param(SOAK, marks=pytest.mark.heavy)], ids=str)
def test_exact_accounting_under_load(native, uid: str, load: Load) -> None:
    py_ids = [f"{uid}py{i}" for i in range(load.devices)]
    native_ids = [f"{uid}c{i}" for i in range(load.native_devices)]
    new_ids = [f"{uid}new{i}" for i in range(load.new_devices)]
    flush_metrics()  # whatever other tests left is not ours to count
    stop = threading.Event()
    flushes: list[dict] = []
    results: list[int] = []

    def python_bumper(seed: int) -> None:
        rng = random.Random(seed)
        handles = [PmemMetricsPerDevice.alloc(i) for i in py_ids]
        for _ in range(load.python_incs):
            getattr(rng.choice(handles), rng.choice(FIELDS)).inc()

    def native_bumper(drive_id: str) -> None:
        results.append(native.bump(drive_id.encode(), load.native_threads, load.native_incs))

    def allocator() -> None:
        for i in new_ids:
            PmemMetricsPerDevice.alloc(i).event_fails.inc()

    def flusher(as_json: bool) -> None:
        mine = []
        while not stop.is_set():
            mine.append(json.loads(flush_metrics_json()) if as_json else flush_metrics())
        flushes.extend(mine)

    workers = [threading.Thread(target=native_bumper, args=(i,)) for i in native_ids]
    seeds = range(load.python_threads)
    workers += [threading.Thread(target=python_bumper, args=(s,)) for s in seeds]
    workers.append(threading.Thread(target=allocator))
    flushers = [threading.Thread(target=flusher, args=(j,)) for j in (False, True)]
    run_threads(workers, flushers, stop)
    flushes.append(flush_metrics())

    assert results == [0] * load.native_devices
    assert len(flushes) > 2
    for obj in flushes:
        assert_aggregate_is_sum(obj)

    def reported(drive_id: str, field: str) -> int:
        return sum(obj.get(f"pmem_{drive_id}", {}).get(field, 0) for obj in flushes)

    expected = {(i, f): 0 for i in py_ids for f in FIELDS}
    for seed in range(load.python_threads):  # replay the bumpers' choices
        rng = random.Random(seed)
        for _ in range(load.python_incs):
            i, f = rng.choice(py_ids), rng.choice(FIELDS)
            expected[i, f] += 1
    for i in native_ids:
        n = load.native_threads * load.native_incs
        expected.update({(i, f): 0 for f in FIELDS})
        expected[i, "activate_fails"], expected[i, "queue_event_count"] = n, 2 * n
    for i in new_ids:
        expected.update({(i, f): int(f == "event_fails") for f in FIELDS})

    wrong = {
        key: (reported(*key), want) for key, want in expected.items() if reported(*key) != want
    }
    assert wrong == {}
    for (i, f), want in expected.items():
        assert getattr(PmemMetricsPerDevice.alloc(i), f).count() == want
    retire_mine(uid)  # the later tests' flushes go over their own devices, not these thousands
