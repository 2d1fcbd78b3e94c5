"""Allocation, counter semantics and bad input (pmem_metrics.device)."""

from __future__ import annotations

import errno
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from pmem_metrics import (
    FIELDS,
    ID_MAX_CHARS,
    Counter,
    InvalidDriveIdError,
    OutOfMemoryError,
    PmemMetricsError,
    PmemMetricsPerDevice,
    device_count,
    flush_metrics,
)
from pmem_metrics._binding import ffi


def test_fields_come_from_c_in_flush_order() -> None:
    assert FIELDS == ("activate_fails", "cfg_fails", "event_fails", "queue_event_count")
    m = PmemMetricsPerDevice.alloc("fields-probe")
    assert all(isinstance(getattr(m, f), Counter) for f in FIELDS)


def test_every_counter_has_a_cache_line_of_its_own(uid: str) -> None:
    addresses = [
        int(ffi.cast("uintptr_t", getattr(PmemMetricsPerDevice.alloc(uid + d), f)._c))
        for d in ("a", "b")
        for f in FIELDS
    ]
    assert all(a % 64 == 0 for a in addresses)
    assert len({a // 64 for a in addresses}) == len(addresses)


def test_max_pmem_dev_metrics(uid: str) -> None:
    """Port of the seed's test: the most pmem devices x86_64 has IRQs for (5..23)."""
    ids = [f"{uid}drv{i}" for i in range(19)]
    before = device_count()
    for i, drive_id in enumerate(ids):
        m = PmemMetricsPerDevice.alloc(drive_id)
        m.activate_fails.inc()
        m.queue_event_count.add(i)
    assert device_count() == before + 19
    flushed = flush_metrics()
    for i, drive_id in enumerate(ids):
        m = PmemMetricsPerDevice.alloc(drive_id)
        assert m.activate_fails.count() == 1
        assert m.queue_event_count.count() == i
        assert flushed[f"pmem_{drive_id}"]["activate_fails"] == 1
        assert flushed[f"pmem_{drive_id}"]["queue_event_count"] == i


def test_single_pmem_dev_metrics(uid: str) -> None:
    """Port of the seed's test: one device, bumped through two handles from two threads."""
    drive_id = uid + "drv0"
    m = PmemMetricsPerDevice.alloc(drive_id)
    m.activate_fails.inc()
    assert m.activate_fails.count() == 1

    def other() -> None:  # the seed's "concurrent writer": a second alloc, same counters
        PmemMetricsPerDevice.alloc(drive_id).activate_fails.add(5)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert m.activate_fails.count() == 6
    assert m.activate_fails.fetch_diff() == 6


def test_alloc_is_idempotent(uid: str) -> None:
    a = PmemMetricsPerDevice.alloc(uid + "x")
    n = device_count()
    b = PmemMetricsPerDevice.alloc(uid + "x")
    assert device_count() == n
    assert a == b and hash(a) == hash(b)
    assert a != PmemMetricsPerDevice.alloc(uid + "y")
    a.cfg_fails.add(7)
    assert b.cfg_fails.count() == 7


def test_concurrent_alloc_of_one_id_gives_one_device(uid: str) -> None:
    barrier = threading.Barrier(8)
    got: list[PmemMetricsPerDevice] = []

    def racer() -> None:
        barrier.wait()
        m = PmemMetricsPerDevice.alloc(uid + "race")
        m.event_fails.inc()
        got.append(m)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1
    assert got[0].event_fails.count() == 8


def test_count_is_cumulative_and_fetch_diff_changes_nothing(uid: str) -> None:
    c = PmemMetricsPerDevice.alloc(uid + "d").queue_event_count
    c.add(5)
    assert (c.count(), c.fetch_diff(), c.fetch_diff()) == (5, 5, 5)
    flush_metrics()
    assert (c.count(), c.fetch_diff()) == (5, 0)
    c.inc()
    assert (c.count(), c.fetch_diff()) == (6, 1)


def test_counters_wrap_modulo_2_64(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid + "wrap")
    c = m.cfg_fails
    c.add(2**64 - 3)
    assert flush_metrics()[f"pmem_{uid}wrap"]["cfg_fails"] == 2**64 - 3
    c.add(5)  # current wraps to 2; old is 2**64 - 3
    assert c.count() == 2
    assert c.fetch_diff() == 5
    assert flush_metrics()[f"pmem_{uid}wrap"]["cfg_fails"] == 5
    assert c.fetch_diff() == 0


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70, -(2**64)])
def test_add_out_of_range_is_rejected_and_changes_nothing(uid: str, bad: int) -> None:
    c = PmemMetricsPerDevice.alloc(uid + "add").activate_fails
    c.add(3)
    with pytest.raises((ValueError, OverflowError)):
        c.add(bad)
    assert (c.count(), c.fetch_diff()) == (3, 3)


@pytest.mark.parametrize("bad", [1.0, "1", None])
def test_add_of_a_non_int_is_a_type_error(uid: str, bad: object) -> None:
    c = PmemMetricsPerDevice.alloc(uid + "add").activate_fails
    with pytest.raises(TypeError):
        c.add(bad)  # type: ignore[arg-type]
    assert c.count() == 0


class IndexOnly:
    """An integer by ``__index__`` alone, as numpy's integers are."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class IntOnly:
    """Convertible by ``int()`` but not an integer: ``__int__`` alone."""

    def __int__(self) -> int:
        return 4

    def __repr__(self) -> str:
        return "IntOnly()"


@pytest.mark.parametrize(
    "bad", [Fraction(7, 2), Fraction(4, 1), Decimal("-0.5"), Decimal(3), 2.0, IntOnly()], ids=repr
)
def test_add_of_a_non_integer_number_is_a_type_error_adding_nothing(uid: str, bad: object) -> None:
    """operator.index semantics: nothing is truncated, not even a whole Fraction or Decimal."""
    c = PmemMetricsPerDevice.alloc(uid + "add").activate_fails
    c.add(3)
    with pytest.raises(TypeError):
        c.add(bad)  # type: ignore[arg-type]
    assert (c.count(), c.fetch_diff()) == (3, 3)


def test_add_takes_bools_and_objects_with_index(uid: str) -> None:
    c = PmemMetricsPerDevice.alloc(uid + "add").activate_fails
    c.add(True)
    c.add(False)
    c.add(IndexOnly(5))
    assert c.count() == 6
    c.add(IndexOnly(2**64 - 6))  # wraps to 0
    assert c.count() == 0
    with pytest.raises(OverflowError):
        c.add(IndexOnly(-1))
    with pytest.raises(OverflowError):
        c.add(IndexOnly(2**64))
    assert c.count() == 0


def test_add_takes_numpy_integers(uid: str) -> None:
    import numpy as np  # a test dependency: the [test] extra brings it

    c = PmemMetricsPerDevice.alloc(uid + "add").activate_fails
    c.add(np.uint64(2**64 - 1))
    c.add(np.int8(3))
    assert c.count() == 2
    for bad in (np.float32(1.5), np.float64(1.0)):  # not integers, though they have __int__
        with pytest.raises(TypeError):
            c.add(bad)
    with pytest.raises(OverflowError):
        c.add(np.int64(-1))
    assert c.count() == 2


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("Counter.inc", lambda c: c.inc(1)),
        ("Counter.inc", lambda c: c.inc(n=1)),
        ("Counter.add", lambda c: c.add()),
        ("Counter.add", lambda c: c.add(1, 2)),
        ("Counter.add", lambda c: c.add(n=1)),
    ],
)
def test_a_wrong_call_names_the_method(uid: str, name: str, call: Any) -> None:
    """Not the C function behind it ("pmem_metrics_inc() takes exactly one argument")."""
    c = PmemMetricsPerDevice.alloc(uid + "call").activate_fails
    with pytest.raises(TypeError, match=rf"^{name}\(\)"):
        call(c)
    assert c.count() == 0


@pytest.mark.parametrize("bad", [None, 0, b"drv0", ["drv0"]])
def test_non_str_drive_id_is_a_type_error(bad: object) -> None:
    n = device_count()
    with pytest.raises(TypeError, match="must be a str"):
        PmemMetricsPerDevice.alloc(bad)  # type: ignore[arg-type]
    assert device_count() == n


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("", "empty"),
        ("x" * (ID_MAX_CHARS + 1), "at most 64 characters"),
        ("é" * (ID_MAX_CHARS + 1), "at most 64 characters"),
        ("drv\x00", "control characters"),
        ("drv\n0", "control characters"),
        ("\tdrv", "control characters"),
        ("drv\x7f", "control characters"),
        ("drv\x85", "control characters"),  # C1 (NEL)
        ("drv\ud800", "Unicode"),  # a lone surrogate cannot be UTF-8
    ],
)
def test_invalid_drive_id_is_a_value_error_naming_the_rule(bad: str, rule: str) -> None:
    n = device_count()
    before = flush_metrics()
    with pytest.raises(InvalidDriveIdError, match=rule) as info:
        PmemMetricsPerDevice.alloc(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PmemMetricsError)
    assert repr(bad) in str(info.value)  # a short id is quoted whole
    assert device_count() == n
    assert flush_metrics().keys() == before.keys()


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("x" * 10**6, "at most 64 characters"),
        ("\x00" * 10**6, "control characters"),
        ("drv\ud800" + "x" * 10**6, "Unicode"),
    ],
    ids=["long", "long-control", "long-surrogate"],
)
def test_a_long_invalid_id_is_quoted_shortened(bad: str, rule: str) -> None:
    """Its first characters and its length, not a message as long as the id."""
    with pytest.raises(InvalidDriveIdError, match=rule) as info:
        PmemMetricsPerDevice.alloc(bad)
    message = str(info.value)
    assert len(message) < 200
    assert f"({len(bad)} characters)" in message
    assert repr(bad[:5])[:-1] in message  # its first characters


def test_out_of_memory_quotes_a_long_id_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C library is made to fail with ENOMEM (a real long id is refused first)."""
    import pmem_metrics.device

    def out_of_memory(r: Any, raw: bytes, n: int, timeout_ms: int) -> Any:
        ffi.errno = errno.ENOMEM
        return ffi.NULL

    monkeypatch.setattr(pmem_metrics.device, "_alloc_within", out_of_memory)
    with pytest.raises(OutOfMemoryError) as info:
        PmemMetricsPerDevice.alloc("z" * 10**6)
    message = str(info.value)
    assert message.startswith("cannot allocate metrics for drive id 'zzz")
    assert len(message) < 200 and "(1000000 characters)" in message


def test_ids_at_the_limit_are_accepted(uid: str) -> None:
    for drive_id in ("x" * ID_MAX_CHARS, "é" * ID_MAX_CHARS, "\U0001f600" * ID_MAX_CHARS):
        assert PmemMetricsPerDevice.alloc(drive_id).drive_id == drive_id


def test_handles_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError, match="alloc"):
        PmemMetricsPerDevice()
