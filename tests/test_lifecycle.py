"""Devices that come and go: retire, the final delta, revival, reuse, references, churn."""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pmem_metrics
from pmem_metrics import (
    FIELDS,
    InvalidDriveIdError,
    PmemMetricsPerDevice,
    Registry,
    UnknownDeviceError,
    open_segment,
)

U64 = 2**64
_runs = itertools.count()


class Device:
    """The model of one device: what its next flush owes, and whether it is still there."""

    def __init__(self) -> None:
        self.pending = [0] * len(FIELDS)
        self.retired = False
        self.gone = False  # its final delta was reported: nothing it gets is ever reported


class Lifecycle(RuleBasedStateMachine):
    """Random alloc / inc / retire / re-alloc / flush / drop-handle sequences against a model.

    Every increment made through a handle before its device's final flush is
    reported exactly once, under its own id; nothing added after a device is
    gone reaches any report; an alloc before the final flush revives the
    device, one after it starts a new device from zero.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"l{next(_runs):06d}-"
        self.registry = self.make_registry()
        self.current: dict[str, Device] = {}  # id -> its device in the registry now
        self.handles: list[tuple[PmemMetricsPerDevice, Device]] = []

    def make_registry(self) -> Registry:
        return Registry.default()

    def mine(self, report: dict[str, dict[str, int]]) -> dict[str, list[int]]:
        key = f"pmem_{self.prefix}"
        return {
            k[len(key) :]: [v[f] for f in FIELDS] for k, v in report.items() if k.startswith(key)
        }

    @rule(name=st.sampled_from("abcd"))
    def alloc(self, name: str) -> None:
        handle = self.registry.alloc(self.prefix + name)
        device = self.current.setdefault(name, Device())
        device.retired = False  # revived, if it was retired and not yet flushed
        self.handles.append((handle, device))
        if len(self.handles) > 8:
            self.handles.pop(0)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), field=st.integers(0, len(FIELDS) - 1), n=st.integers(0, 9))
    def add(self, data: st.DataObject, field: int, n: int) -> None:
        handle, device = data.draw(st.sampled_from(self.handles))
        getattr(handle, FIELDS[field]).add(n)
        if not device.gone:
            device.pending[field] += n

    @rule(name=st.sampled_from("abcd"))
    def retire(self, name: str) -> None:
        device = self.current.get(name)
        if device is None or device.retired:
            with pytest.raises(UnknownDeviceError):
                self.registry.retire(self.prefix + name)
            return
        self.registry.retire(self.prefix + name)
        device.retired = True

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def drop_handle(self, data: st.DataObject) -> None:
        self.handles.pop(data.draw(st.integers(0, len(self.handles) - 1)))  # freed at once

    @rule()
    def flush(self) -> None:
        got = self.mine(self.registry.flush_metrics())
        want = {name: d.pending for name, d in self.current.items()}
        assert got == want
        for name, device in list(self.current.items()):
            device.pending = [0] * len(FIELDS)
            if device.retired:  # its final delta: gone from now on
                device.gone = True
                del self.current[name]

    @invariant()
    def reads_agree(self) -> None:
        ids = [i[len(self.prefix) :] for i in self.registry.ids() if i.startswith(self.prefix)]
        assert ids == sorted(self.current)
        pending = self.registry.read(pending=True)
        for name, device in self.current.items():
            assert list(pending[self.prefix + name].values()) == device.pending


class SegmentLifecycle(Lifecycle):
    """The same, in a segment of its own, small enough that slots are reused."""

    directory: Path

    def make_registry(self) -> Registry:
        return open_segment(self.directory / f"seg{next(_runs)}", capacity=16)


@pytest.mark.heavy
def test_lifecycle_in_the_default_registry() -> None:
    Lifecycle.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
    Lifecycle.TestCase().runTest()


@pytest.mark.heavy
def test_lifecycle_in_a_segment(tmp_path: Path) -> None:
    SegmentLifecycle.directory = tmp_path
    SegmentLifecycle.TestCase.settings = settings(
        max_examples=60, stateful_step_count=40, deadline=None
    )
    SegmentLifecycle.TestCase().runTest()


def test_retire_refuses_bad_ids_and_unknown_ones(uid: str, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        pmem_metrics.retire(7)  # type: ignore[arg-type]
    with pytest.raises(InvalidDriveIdError):
        pmem_metrics.retire("")
    with pytest.raises(KeyError, match="never allocated, or retired already"):
        pmem_metrics.retire(uid)
    seg = open_segment(tmp_path / "seg")
    seg.alloc("drv0")
    out = subprocess.run(
        [sys.executable, "-c", READ_ONLY_RETIRE, str(tmp_path / "seg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == ["ReadOnlySegmentError"], out.stderr


READ_ONLY_RETIRE = """
import sys, pmem_metrics
try:
    pmem_metrics.open_segment(sys.argv[1], readonly=True).retire("drv0")
except pmem_metrics.ReadOnlySegmentError as e:
    print(type(e).__name__)
"""


def test_stats_count_the_room(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg", capacity=2)
    a, b = seg.alloc("a"), seg.alloc("b")
    with pytest.raises(pmem_metrics.SegmentFullError):
        seg.alloc("c")
    seg.retire("a")
    assert seg.stats() == pmem_metrics.Stats(capacity=2, devices=1, retired=1, alloc_failures=1)
    seg.flush_metrics()  # a's final delta
    assert seg.stats().retired == 1  # drained, but its handle still holds its room
    del a
    gc.collect()
    c = seg.alloc("c")  # the room a left
    assert seg.stats() == pmem_metrics.Stats(capacity=2, devices=2, retired=0, alloc_failures=1)
    assert c.cfg_fails.count() == 0 and b.cfg_fails.count() == 0
    assert Registry.default().stats().capacity is None


def test_a_counter_kept_after_its_handle_keeps_the_device(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg", capacity=1)
    counter = seg.alloc("a").cfg_fails  # the handle is gone at once; the counter is not
    gc.collect()
    seg.retire("a")
    seg.flush_metrics()
    counter.add(5)  # counted nowhere: the device is gone
    with pytest.raises(pmem_metrics.SegmentTimeoutError):
        seg_wait = os.environ.get("PMEM_METRICS_SEGMENT_WAIT_MS")
        assert seg_wait is None or int(seg_wait) > 0
        _alloc_without_waiting(seg, "b")
    del counter
    gc.collect()
    assert seg.alloc("b").cfg_fails.count() == 0  # now the room is free, and b starts at zero
    assert seg.flush_metrics()["pmem"]["cfg_fails"] == 0


def _alloc_without_waiting(seg: Registry, drive_id: str) -> None:
    """An alloc that waits no time for room a retired device will leave."""
    from pmem_metrics._binding import ffi, lib
    from pmem_metrics.errors import registry_error

    raw = drive_id.encode()
    if lib.pmem_metrics_registry_alloc_within(seg._r, raw, len(raw), 0) == ffi.NULL:
        raise registry_error(ffi.errno, seg._r, "allocate in", "cannot allocate")


# ---- churn: processes plug and unplug through a small segment -------------------------------

CHURNER = """
import json, sys
from pmem_metrics import open_segment
seg = open_segment(sys.argv[1], create=False)
me, cycles, total = sys.argv[2], int(sys.argv[3]), 0
for i in range(cycles):
    m = seg.alloc(f"{me}-{i}")
    m.queue_event_count.add(i % 5 + 1)
    total += i % 5 + 1
    seg.retire(f"{me}-{i}")
    if i % 1000 == 0:
        print(total, flush=True)  # what it has counted so far (for a run it is killed in)
del m
print(total, flush=True)
"""

FLUSHER = """
import json, os, sys, time
from pmem_metrics import open_segment
seg = open_segment(sys.argv[1], create=False)
stop, total = sys.argv[2], 0
while not os.path.exists(stop):
    total += seg.flush_metrics()["pmem"]["queue_event_count"]
    time.sleep(0.003)
for _ in range(3):
    total += seg.flush_metrics()["pmem"]["queue_event_count"]
print(json.dumps({"reported": total, "stats": seg.stats()._asdict()}))
"""


def churn(tmp_path: Path, cycles: int, kill_one: bool) -> tuple[list[int], dict[str, object], int]:
    """Three churners and a flusher on a 64-slot segment; (churners' totals, flusher's, killed)."""
    path, stop = tmp_path / "seg", tmp_path / "stop"
    open_segment(path, capacity=64)
    flusher = subprocess.Popen(
        [sys.executable, "-c", FLUSHER, str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    churners = [
        subprocess.Popen(
            [sys.executable, "-c", CHURNER, str(path), f"p{k}", str(cycles)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    killed_at = 0
    try:
        if kill_one:
            victim = churners[0]
            assert victim.stdout is not None
            victim.stdout.readline()
            killed_at = int(victim.stdout.readline())  # a while into its run
            victim.send_signal(signal.SIGKILL)
        totals = []
        for c in churners:
            out, err = c.communicate(timeout=300)
            if c is churners[0] and kill_one:
                assert c.returncode == -signal.SIGKILL
                totals.append(killed_at)
                continue
            assert c.returncode == 0, err  # never SegmentFullError
            totals.append(int(out.split()[-1]))
        stop.touch()
        out, _ = flusher.communicate(timeout=120)
    finally:
        for p in (*churners, flusher):
            p.kill()
            p.communicate()
    return totals, json.loads(out), killed_at


@pytest.mark.heavy
def test_three_processes_plug_and_unplug_through_64_slots(tmp_path: Path) -> None:
    totals, result, _ = churn(tmp_path, 20_000, kill_one=False)
    assert result["reported"] == sum(totals)  # every add reported once
    assert result["stats"] == {"capacity": 64, "devices": 0, "retired": 0, "alloc_failures": 0}


@pytest.mark.heavy
def test_a_churner_killed_mid_run_leaks_no_room(tmp_path: Path) -> None:
    totals, result, killed_at = churn(tmp_path, 20_000, kill_one=True)
    # The survivors' adds exactly; the killed one's up to its last report, and at most the
    # 1,000 cycles after it (each adds at most 5).
    assert sum(totals) <= result["reported"] <= sum(totals) + 5 * 1000
    stats = result["stats"]
    assert stats["alloc_failures"] == 0
    # Its last device may stay live (it never retired it); every other slot is free again:
    # the kernel let its references go, so the room is reused.
    assert stats["devices"] <= 1 and stats["retired"] == 0
    seg = open_segment(tmp_path / "seg", create=False)
    held = [seg.alloc(f"fill{i}") for i in range(64 - stats["devices"])]
    assert len(held) == 64 - stats["devices"] and killed_at > 0
    time.sleep(0)  # (nothing timed: the room is there or the allocs above raised)


GRACE = """
import gc, sys, time
import pmem_metrics as p
seg = p.open_segment(sys.argv[1], capacity=2)
a, b = seg.alloc("a"), seg.alloc("b")
p.PmemMetricsPerDevice.alloc("priv").cfg_fails.add(1)
seg.retire("a")
p.retire("priv")
shown = ("a" in seg.read(), "priv" in p.read())
deadline = time.monotonic() + 30
while ("a" in seg.read() or "priv" in p.read()) and time.monotonic() < deadline:
    time.sleep(0.01)  # the grace period (0.2 s here) runs out; nothing flushes
hidden = ("a" not in seg.read(), "priv" not in p.read())
del a
gc.collect()
c = seg.alloc("c")  # its room: a segment nobody flushes lets an expired device go
before = p.stats().retired
time.sleep(1.1)
p.PmemMetricsPerDevice.alloc("other")  # a new id sweeps the private registry
print(shown, hidden, seg.stats().devices, before, p.stats().retired)
"""


def test_a_registry_nobody_flushes_lets_retired_devices_go_after_the_grace(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PMEM_METRICS_RETIRE_GRACE_MS": "200"}
    out = subprocess.run(
        [sys.executable, "-c", GRACE, str(tmp_path / "seg")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(True,", "True)", "(True,", "True)", "2", "1", "0"]
