"""Allocation: an id that exists (a lookup), and new ids up to 10,000 devices."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from _unroll import unrolled

from pmem_metrics import PmemMetricsPerDevice

pytestmark = pytest.mark.benchmark(group="alloc")
_batches = itertools.count()


def test_alloc_existing(measure: Any) -> None:
    PmemMetricsPerDevice.alloc("bench-existing")
    measure(unrolled("alloc(i)", alloc=PmemMetricsPerDevice.alloc, i="bench-existing"))


def test_alloc_new_10000(measure: Any) -> None:
    """10,000 new ids per round, in random order (inserts land all over the array)."""

    def fresh_ids() -> tuple[tuple[list[str]], dict[str, Any]]:
        batch = [f"new{next(_batches):03d}-{i:05d}" for i in range(10_000)]
        random.Random(len(batch)).shuffle(batch)
        return (batch,), {}

    def alloc_all(batch: list[str]) -> None:
        for i in batch:
            PmemMetricsPerDevice.alloc(i)

    measure.pedantic(alloc_all, setup=fresh_ids, rounds=5)
