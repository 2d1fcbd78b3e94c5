"""Fuzzing drive ids and add values (hypothesis-driven, with a fixed budget).

Ids are checked against an independent rule written from Python's own Unicode
database: a ``str`` of 1 to 64 code points, none a control character (Cc) or
a lone surrogate (Cs).  The C validator must agree on every input, a rejected
id must leave the registry as it was, and an accepted one must come back out
of a flush unchanged.  The C side has its own libFuzzer target
(``make -C csrc fuzz``).  Set PMEM_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import json
import os
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmem_metrics import (
    ID_MAX_CHARS,
    InvalidDriveIdError,
    PmemMetricsPerDevice,
    device_count,
    flush_metrics_json,
)

BUDGET = settings(
    max_examples=int(os.environ.get("PMEM_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def expected_error(drive_id: object) -> type[Exception] | None:
    if not isinstance(drive_id, str):
        return TypeError
    if not 1 <= len(drive_id) <= ID_MAX_CHARS:
        return InvalidDriveIdError
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in drive_id):
        return InvalidDriveIdError
    return None


ids = st.one_of(
    st.text(max_size=ID_MAX_CHARS + 4),
    st.text(st.characters(max_codepoint=0xFF), max_size=12),
    st.binary(max_size=70).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=60, max_size=68),
    st.one_of(st.none(), st.integers(), st.binary(max_size=4)),
)


@BUDGET
@given(drive_id=ids)
def test_fuzz_drive_ids(drive_id: object) -> None:
    want = expected_error(drive_id)
    sentinel = PmemMetricsPerDevice.alloc("fuzz-sentinel").cfg_fails
    sentinel.inc()
    counts = (sentinel.count(), sentinel.fetch_diff())
    before = device_count()
    if want is not None:
        with pytest.raises(want):
            PmemMetricsPerDevice.alloc(drive_id)  # type: ignore[arg-type]
        assert device_count() == before
        assert (sentinel.count(), sentinel.fetch_diff()) == counts
        return
    assert isinstance(drive_id, str)
    m = PmemMetricsPerDevice.alloc(drive_id)
    assert PmemMetricsPerDevice.alloc(drive_id) == m
    assert device_count() in (before, before + 1)
    m.event_fails.inc()
    assert json.loads(flush_metrics_json())[f"pmem_{drive_id}"]["event_fails"] == 1


@BUDGET
@given(n=st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=2)))
def test_fuzz_add_values(n: object) -> None:
    c = PmemMetricsPerDevice.alloc("fuzz-add").queue_event_count
    before = c.count()
    if isinstance(n, int) and 0 <= n < 2**64:
        c.add(n)
        assert c.count() == (before + n) % 2**64
    else:
        with pytest.raises((OverflowError, TypeError)):
            c.add(n)  # type: ignore[arg-type]
        assert c.count() == before
