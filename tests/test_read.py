"""Reading without taking: read(), ids(), len(), get(), a device's fields as a dict."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import pmem_metrics
from pmem_metrics import (
    FIELDS,
    InvalidDriveIdError,
    PmemMetricsPerDevice,
    Registry,
    open_segment,
)

U64 = 2**64
_runs = itertools.count()


class ReadsTakeNothing(RuleBasedStateMachine):
    """Random allocs, adds, reads and flushes: reads agree with the model and never change it.

    The model holds each counter's current and old value; a read returns the
    currents (or, with ``pending``, current - old) and must leave the next
    flush's report as it would have been without it.  Runs on the default
    registry (its own id prefix per run) and on a segment of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        run = next(_runs)
        self.prefix = f"r{run:06d}-"
        self.registry = Registry.default()
        self.current: dict[str, list[int]] = {}
        self.old: dict[str, list[int]] = {}
        self.handles: dict[str, PmemMetricsPerDevice] = {}

    def mine(self, values: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        return {k[len(self.prefix) :]: v for k, v in values.items() if k.startswith(self.prefix)}

    @rule(name=st.sampled_from("abcdef"))
    def alloc(self, name: str) -> None:
        self.handles[name] = self.registry.alloc(self.prefix + name)
        self.current.setdefault(name, [0] * len(FIELDS))
        self.old.setdefault(name, [0] * len(FIELDS))

    @rule(
        name=st.sampled_from("abcdef"),
        field=st.integers(0, len(FIELDS) - 1),
        n=st.one_of(st.integers(0, 5), st.integers(0, U64 - 1)),
    )
    def add(self, name: str, field: int, n: int) -> None:
        if name in self.handles:
            getattr(self.handles[name], FIELDS[field]).add(n)
            self.current[name][field] = (self.current[name][field] + n) % U64

    @rule(pending=st.booleans())
    def read(self, pending: bool) -> None:
        got = self.mine(self.registry.read(pending=pending))
        want = {
            name: dict(
                zip(
                    FIELDS, [(c - o) % U64 for c, o in zip(cur, self.old[name])] if pending else cur
                )
            )
            for name, cur in self.current.items()
        }
        assert got == want
        assert list(got) == sorted(got)  # id order

    def pending(self, name: str) -> list[int]:
        return [(c - o) % U64 for c, o in zip(self.current[name], self.old[name])]

    @rule(name=st.sampled_from("abcdef"), pending=st.booleans())
    def read_one_device(self, name: str, pending: bool) -> None:
        m = self.registry.get(self.prefix + name)
        assert (m is None) == (name not in self.current)
        if m is not None:
            assert m == self.handles[name]
            assert m.read(pending=pending) == self.mine(self.registry.read(pending=pending))[name]

    @rule()
    def flush(self) -> None:
        report = self.registry.flush_metrics()
        for name, cur in self.current.items():
            assert report[f"pmem_{self.prefix}{name}"] == dict(zip(FIELDS, self.pending(name)))
            self.old[name] = list(cur)

    @invariant()
    def ids_are_the_devices(self) -> None:
        ids = [i for i in self.registry.ids() if i.startswith(self.prefix)]
        assert ids == sorted(self.prefix + n for n in self.current)


READER = """
import json, sys
import pmem_metrics
opened = {}
for request in sys.stdin:
    path, pending = json.loads(request)
    if path not in opened:
        opened[path] = pmem_metrics.open_segment(path, readonly=True)
    print(json.dumps(opened[path].read(pending=pending)), flush=True)
"""


class Reader:
    """Another process that reads segments read-only (one process opens a segment once)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self, path: Path, pending: bool) -> dict[str, dict[str, int]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([str(path), pending]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate()


class SegmentReadsTakeNothing(ReadsTakeNothing):
    """The same, on a segment; a read-only reader in another process must read the same."""

    directory: Path
    reader: Reader

    def __init__(self) -> None:
        super().__init__()
        self.path = self.directory / f"seg{next(_runs)}"
        self.registry = open_segment(self.path, capacity=16)

    @rule(pending=st.booleans())
    def read_only_elsewhere(self, pending: bool) -> None:
        assert self.reader.read(self.path, pending) == self.registry.read(pending=pending)


@pytest.mark.heavy
def test_reads_take_nothing_in_the_default_registry() -> None:
    ReadsTakeNothing.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
    ReadsTakeNothing.TestCase().runTest()


def test_reads_take_nothing_in_a_segment(tmp_path: Path) -> None:
    SegmentReadsTakeNothing.directory = tmp_path
    SegmentReadsTakeNothing.reader = reader = Reader()
    SegmentReadsTakeNothing.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None
    )
    try:
        SegmentReadsTakeNothing.TestCase().runTest()
    finally:
        reader.close()


def test_get_finds_and_never_creates(uid: str) -> None:
    before = pmem_metrics.device_count()
    assert pmem_metrics.get(uid) is None
    assert uid not in Registry.default()
    assert pmem_metrics.device_count() == before  # nothing was created
    m = PmemMetricsPerDevice.alloc(uid)
    found = pmem_metrics.get(uid)
    assert found == m and found is not None and found.drive_id == uid
    found.cfg_fails.add(2)
    assert m.cfg_fails.count() == 2  # the very same counters
    assert uid in Registry.default() and 17 not in Registry.default()  # type: ignore[operator]
    assert len(Registry.default()) == pmem_metrics.device_count() == before + 1
    assert uid in pmem_metrics.ids()
    with pytest.raises(InvalidDriveIdError, match="control"):
        pmem_metrics.get("bad\x01id")
    with pytest.raises(TypeError):
        pmem_metrics.get(7)  # type: ignore[arg-type]
    assert "bad\x01id" not in Registry.default()


def test_a_devices_fields_as_dicts(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid)
    m.queue_event_count.add(5)
    pmem_metrics.flush_metrics()
    m.queue_event_count.add(2)
    assert list(m.counters()) == list(FIELDS)
    assert m.counters()["queue_event_count"] is not None
    assert m.counters()["queue_event_count"].count() == 7
    assert m.read() == {**dict.fromkeys(FIELDS, 0), "queue_event_count": 7}
    assert m.read(pending=True) == {**dict.fromkeys(FIELDS, 0), "queue_event_count": 2}


READ_ONLY = """
import sys
import pmem_metrics
ro = pmem_metrics.open_segment(sys.argv[1], readonly=True)
print(ro.read(), ro.ids(), len(ro), "drv0" in ro, "drv1" in ro)
try:
    ro.get("drv0")
except pmem_metrics.ReadOnlySegmentError as e:
    print(type(e).__name__)
"""


def test_a_read_only_segment_reads_but_hands_out_no_handles(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg")
    seg.alloc("drv0").event_fails.add(3)
    out = subprocess.run(
        [sys.executable, "-c", READ_ONLY, str(tmp_path / "seg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    counts = {**dict.fromkeys(FIELDS, 0), "event_fails": 3}
    assert out.stdout.splitlines() == [
        f"{ {'drv0': counts} } ['drv0'] 1 True False",
        "ReadOnlySegmentError",
    ]


def test_module_calls_are_the_default_registrys_methods() -> None:
    for name in ("read", "ids", "get", "device_count", "is_shared", "flush_metrics"):
        call = getattr(pmem_metrics, name)
        assert call.__self__ == Registry.default()
        assert call.__func__ is getattr(Registry, name)
