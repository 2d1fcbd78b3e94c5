"""Closing a segment's registry: its files and memory go with its last open."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import pytest

import pmem_metrics as p
from pmem_metrics import Registry, SegmentError, open_segment


def open_fds() -> int:
    """This process's open descriptors."""
    return len(os.listdir("/proc/self/fd"))


def test_the_last_close_lets_the_segment_go(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    before = open_fds()
    a = open_segment(seg, capacity=8)
    b = open_segment(seg, readonly=True)  # the same file: the same registry, a second open
    assert a == b and open_fds() == before + 2  # the data file and the lock file
    m = a.alloc("drv0")
    m.cfg_fails.add(3)
    counts = b.read()
    b.close()
    assert b.closed and not a.closed
    with pytest.raises(ValueError, match="closed"):
        b.read()
    with pytest.raises(SegmentError) as e:  # the handle holds a device of it
        a.close()
    assert e.value.errno == errno.EBUSY and e.value.filename == str(seg)
    assert a.read() == counts  # refused, and changed nothing
    del m
    gc.collect()
    a.close()
    a.close()  # twice: nothing
    assert open_fds() == before
    assert counts == {"drv0": {**dict.fromkeys(p.FIELDS, 0), "cfg_fails": 3}}


def test_the_default_registry_is_not_closed() -> None:
    with pytest.raises(ValueError, match="not opened here"):
        Registry.default().close()


def test_a_thousand_restarts_leave_nothing_open(tmp_path: Path) -> None:
    """A VM's segment made, read, removed, 1,000 times: descriptors back where they were."""
    seg = tmp_path / "vm.seg"
    before = open_fds()
    for i in range(1000):
        with open_segment(seg, capacity=4) as vm:
            vm.alloc("drv0").cfg_fails.add(i)  # the handle goes at once: nothing of it held
            with open_segment(seg, readonly=True) as agent:
                assert agent.read()["drv0"]["cfg_fails"] == i
        seg.unlink()
        seg.with_name(seg.name + ".lock").unlink()
    assert open_fds() == before
