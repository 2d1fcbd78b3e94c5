"""Registries as objects: segments opened with open_segment(), beside the default registry.

Opening a segment does not change the process (unlike attach()), so these
run in the test process itself.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pmem_metrics import (
    InvalidSegmentError,
    MetricsWriter,
    PmemMetricsPerDevice,
    Registry,
    SegmentError,
    SegmentFullError,
    device_count,
    flush_metrics,
    is_shared,
    open_segment,
)
from pmem_metrics.segment import segment_offset

from .helpers import run_threads


def test_a_segment_is_a_registry_of_its_own(tmp_path: Path, uid: str) -> None:
    seg = open_segment(tmp_path / "seg", capacity=8)
    before = device_count()
    assert seg.is_shared() and seg.capacity == 8 and seg.path == str(tmp_path / "seg")
    assert not is_shared() and Registry.default().capacity is None
    here, there = PmemMetricsPerDevice.alloc(uid), seg.alloc(uid)
    assert here != there  # one id, two registries, two sets of counters
    assert seg.alloc(uid) == there and Registry.default().alloc(uid) == here
    here.cfg_fails.add(2)
    there.cfg_fails.add(5)
    assert seg.device_count() == 1 and device_count() == before + 1
    assert seg.flush_metrics() == {
        f"pmem_{uid}": {"activate_fails": 0, "cfg_fails": 5, "event_fails": 0,
                        "queue_event_count": 0},
        "pmem": {"activate_fails": 0, "cfg_fails": 5, "event_fails": 0, "queue_event_count": 0},
    }  # fmt: skip
    assert json.loads(seg.flush_metrics_json())["pmem"]["cfg_fails"] == 0  # flushed once
    assert flush_metrics()[f"pmem_{uid}"]["cfg_fails"] == 2  # the default's own flush
    assert here.cfg_fails.fetch_diff() == 0 and there.cfg_fails.count() == 5


def test_opening_a_segment_again_gives_the_same_registry(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg")
    os.link(tmp_path / "seg", tmp_path / "twin")
    twin = open_segment(str(tmp_path / "twin"), capacity=3)  # an existing segment keeps its own
    assert twin == seg and hash(twin) == hash(seg) and twin.capacity == 4096
    assert twin.alloc("d") == seg.alloc("d")
    assert Registry.default() == Registry.default() != seg
    assert repr(seg) == f"open_segment({str(tmp_path / 'seg')!r})"
    assert repr(Registry.default()) == "Registry.default()"
    assert repr(seg.alloc("d")) == f"open_segment({str(tmp_path / 'seg')!r}).alloc('d')"
    assert repr(PmemMetricsPerDevice.alloc("d")) == "PmemMetricsPerDevice.alloc('d')"


def test_a_full_segment_refuses_new_devices_only(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "small", capacity=2)
    a, _ = seg.alloc("a"), seg.alloc("b")
    with pytest.raises(SegmentFullError) as info:
        seg.alloc("c")
    assert info.value.errno == errno.ENOSPC
    a.activate_fails.inc()
    assert seg.alloc("a") == a and seg.device_count() == 2
    assert seg.flush_metrics()["pmem"]["activate_fails"] == 1


def test_bad_segments_and_arguments_are_refused_with_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a segment" * 100)
    with pytest.raises(InvalidSegmentError, match="cannot open the metrics segment") as info:
        open_segment(junk)
    assert info.value.filename == str(junk) and info.value.errno == errno.EINVAL
    (tmp_path / "link").symlink_to(junk)
    with pytest.raises(SegmentError) as failed:
        open_segment(tmp_path / "link")
    assert failed.value.errno == errno.ELOOP
    with pytest.raises(SegmentError) as failed:
        open_segment(tmp_path / "missing-dir" / "seg")
    assert failed.value.errno == errno.ENOENT
    for bad, exc in [
        ({"capacity": 0}, ValueError),
        ({"capacity": 1 << 25}, ValueError),
        ({"capacity": 2.0}, TypeError),
        ({"capacity": True}, TypeError),
        ({"mode": 0o1777}, ValueError),
        ({"mode": "0600"}, TypeError),
    ]:
        with pytest.raises(exc):
            open_segment(tmp_path / "never", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        open_segment("")
    assert not (tmp_path / "never").exists()
    with pytest.raises(TypeError, match="open_segment"):
        Registry()
    with pytest.raises(TypeError, match="Registry"):
        MetricsWriter(str(tmp_path / "seg"))  # type: ignore[arg-type]


def test_a_segment_is_made_with_the_mode_asked_for(tmp_path: Path) -> None:
    open_segment(tmp_path / "group", mode=0o660)
    open_segment(tmp_path / "mine")
    assert (tmp_path / "group").stat().st_mode & 0o777 == 0o660
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o600


def test_a_writer_writes_the_lines_of_its_registry(tmp_path: Path, uid: str) -> None:
    seg = open_segment(tmp_path / "seg")
    seg.alloc(uid).event_fails.add(4)
    PmemMetricsPerDevice.alloc(uid).event_fails.add(1)
    writer = MetricsWriter(seg)
    writer.init(str(tmp_path / "lines"))
    assert writer.write() and writer.write()
    lines = [json.loads(x) for x in (tmp_path / "lines").read_text().splitlines()]
    assert list(lines[0]) == ["utc_timestamp_ms", f"pmem_{uid}", "pmem"]
    assert [line["pmem"]["event_fails"] for line in lines] == [4, 0]
    assert flush_metrics()[f"pmem_{uid}"]["event_fails"] == 1  # untouched by the writer


def test_threads_flush_two_segments_exactly(tmp_path: Path) -> None:
    segs = [open_segment(tmp_path / f"seg{i}") for i in range(2)]
    counters = [seg.alloc("x").queue_event_count for seg in segs]
    reported = [[0, 0], [0, 0]]  # per flusher thread: += on a shared list would race
    stop = threading.Event()

    def bump() -> None:
        for i in range(20_000):
            counters[i % 2].inc()

    def flush(mine: list[int]) -> None:
        while True:
            last = stop.is_set()
            for i, seg in enumerate(segs):
                mine[i] += seg.flush_metrics()["pmem"]["queue_event_count"]
            if last:
                return

    bumpers = [threading.Thread(target=bump) for _ in range(2)]
    flushers = [threading.Thread(target=flush, args=(mine,)) for mine in reported]
    run_threads(bumpers, flushers, stop)
    assert [x + y for x, y in zip(*reported)] == [20_000, 20_000]


def test_the_collector_labels_each_segment(tmp_path: Path) -> None:
    from pmem_metrics.prometheus import PmemCollector, register

    a, b = open_segment(tmp_path / "a"), open_segment(tmp_path / "b")
    a.alloc("drv0").cfg_fails.add(3)
    b.alloc("drv0").cfg_fails.add(4)
    registry = CollectorRegistry()
    register(registry, {"vm-a": a, "vm-b": b})
    text = generate_latest(registry).decode()
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="vm-a"} 3.0' in text
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="vm-b"} 4.0' in text
    assert a.flush_metrics()["pmem"]["cfg_fails"] == 3  # a scrape resets nothing
    with pytest.raises(TypeError, match="segments"):
        PmemCollector({"vm-a": "not a registry"})  # type: ignore[dict-item]


# Where the segment header keeps the index's and the slots' offsets, and the device count.
INDEX_OFF_AT, SLOTS_OFF_AT, USED_AT = (
    segment_offset(f"header.{name}") for name in ("index_off", "slots_off", "used")
)


def spoil(path: Path, what: str) -> None:
    """Spoil the segment at *path* as a buggy writer might: its ``"index"``, ``"count"``
    or first ``"id"``."""
    with open(path, "r+b") as f:
        header = f.read(segment_offset("header.end"))
        index_at, slots_at = (
            int.from_bytes(header[o : o + 8], sys.byteorder) for o in (INDEX_OFF_AT, SLOTS_OFF_AT)
        )
        if what == "index":  # the first entry names a slot past the capacity
            f.seek(index_at)
            f.write(b"\xff\xff\xff\xff")
        elif what == "count":  # more devices than the segment has room for
            f.seek(USED_AT)
            f.write((1 << 40).to_bytes(8, sys.byteorder))
        else:  # the first device's id gets a NUL: it would read as another id
            f.seek(slots_at + segment_offset("slot.id"))
            f.write(b"z\0")


def test_one_segment_that_cannot_be_read_does_not_fail_the_scrape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pmem_metrics.prometheus import register

    good = open_segment(tmp_path / "good")
    good.alloc("drv0").cfg_fails.add(3)
    segments = {"good": good}
    for what in ("index", "count", "id"):
        segments[what] = bad = open_segment(tmp_path / what)
        bad.alloc("drv0").cfg_fails.add(4)
        spoil(tmp_path / what, what)
    registry = CollectorRegistry()
    register(registry, segments)
    text = generate_latest(registry).decode()
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="good"} 3.0' in text
    # An index that names no device is not followed: the slots are sorted instead.
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="index"} 4.0' in text
    assert "4.0" not in text.replace('segment="index"} 4.0', "")  # nor under another name
    for what in ("good", "index"):
        assert f'pmem_segment_up{{segment="{what}"}} 1.0' in text
    for what in ("count", "id"):
        assert f'pmem_segment_up{{segment="{what}"}} 0.0' in text
        assert f"cannot read segment {what!r}" in caplog.text
        with pytest.raises(InvalidSegmentError):
            segments[what].flush_metrics()  # and a flush says why
