"""Segments found as they appear (inotify), let go when gone, without a stat per read.

Each test sets the fleet's rescan to an hour where it proves that events,
not a rescan, did the work.  Nothing here waits or measures time: a segment
made is asserted to be a member at the very next ``members()`` call.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from pmem_metrics import _inotify, open_segment
from pmem_metrics._binding import lib
from pmem_metrics._inotify import Event, Inotify
from pmem_metrics.exposition import Exposition
from pmem_metrics.fleet import RESCAN, RESCAN_WATCHED, Fleet
from pmem_metrics.follow import Followed

from .test_fleet import counts, vm

HOUR = 3600.0
pytestmark = pytest.mark.skipif(not _inotify.AVAILABLE, reason="no inotify here")


def paths(members: object) -> list[str]:
    assert isinstance(members, (list, tuple))
    return [m.path for m in members]


def cfg_fails(member: Followed) -> int | None:
    read = member.read()
    return None if read is None else read["drv0"]["cfg_fails"]


def test_a_segment_made_under_a_running_fleet_is_a_member_at_the_next_call(tmp_path: Path) -> None:
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"], rescan=HOUR)
    assert fleet.members() == () and fleet.watcher is not None and fleet.watcher.complete
    vm(tmp_path, "a", drv0=1)
    [a] = fleet.members()
    assert a.path == f"{tmp_path}/a/run/pmem.seg" and a.labels == {"vm": "a"}
    assert cfg_fails(a) == 1


def test_fifty_segments_made_one_by_one_are_each_a_member_at_the_next_call(tmp_path: Path) -> None:
    """Discovery bounded by work, not time: each VM's segment is in the very next call."""
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"], rescan=HOUR)
    fleet.members()
    made = []
    for i in range(50):
        made.append(vm(tmp_path, f"vm{i:02d}", drv0=i))
        want = [f"{tmp_path}/vm{k:02d}/run/pmem.seg" for k in range(i + 1)]
        assert paths(fleet.members()) == want
    assert [cfg_fails(m) for m in fleet.members()] == list(range(50))
    for seg in made:
        seg.close()


def test_a_vm_directory_made_after_the_fleet_started_is_watched_level_by_level(
    tmp_path: Path,
) -> None:
    fleet = Fleet([f"{tmp_path}/jail/{{vm}}/root/run/pmem.seg"], rescan=HOUR)
    assert fleet.members() == () and fleet.watcher is not None
    assert not fleet.watcher.complete and fleet.rescan == HOUR  # no jail/ yet: rescans find it
    (tmp_path / "jail").mkdir()
    fleet.scan()  # what the rescan does: jail/ is watched from now on
    assert fleet.watcher.complete
    for level in ("a", "a/root", "a/root/run"):  # one level at a time, a call between
        (tmp_path / "jail" / level).mkdir()
        assert fleet.members() == ()
    open_segment(tmp_path / "jail/a/root/run/pmem.seg", capacity=4).alloc("drv0").cfg_fails.add(3)
    [a] = fleet.members()
    assert a.labels == {"vm": "a"} and cfg_fails(a) == 3
    # All at once, before the next call: what was made before the watch is found too.
    (tmp_path / "jail/b/root/run").mkdir(parents=True)
    open_segment(tmp_path / "jail/b/root/run/pmem.seg", capacity=4).alloc("drv0")
    assert [m.labels["vm"] for m in fleet.members()] == ["a", "b"]
    # A VM directory renamed: the old path ends (read once more), the new one is a member;
    # b-x, a sibling whose path sorts between b and b's own, is left alone.
    (tmp_path / "jail/b-x/root/run").mkdir(parents=True)
    open_segment(tmp_path / "jail/b-x/root/run/pmem.seg", capacity=4).alloc("drv0")
    assert [m.labels["vm"] for m in fleet.members()] == ["a", "b-x", "b"]  # in path order
    os.rename(tmp_path / "jail/b", tmp_path / "jail/c")
    old = fleet.members()[2]
    assert old.labels["vm"] == "b" and old.ending and cfg_fails(old) == 0
    assert old.registry is None
    assert [m.labels["vm"] for m in fleet.members()] == ["a", "b-x", "c"]


def test_a_removed_segment_is_read_from_its_descriptor_then_once_more_then_let_go(
    tmp_path: Path,
) -> None:
    """No read stats the path: until the event is seen, the file open is read as it is."""
    a = vm(tmp_path, "a", drv0=1)
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"], rescan=HOUR)
    [member] = fleet.members()
    os.unlink(tmp_path / "a/run/pmem.seg")
    a.alloc("drv0").cfg_fails.add(10)  # the VM's last counts
    for _ in range(3):  # no lstat at a read: a per-read check would have found it gone
        assert cfg_fails(member) == 11 and member.registry is not None and not member.ending
    assert fleet.members() == (member,) and member.ending  # the event: in once more,
    assert cfg_fails(member) == 11 and member.registry is None  # its final read,
    assert fleet.members() == ()  # then let go
    assert cfg_fails(member) is None and member.registry is None  # never opened again
    a.close()


def test_a_removed_segments_final_counts_are_scraped_exactly_once(tmp_path: Path) -> None:
    a = vm(tmp_path, "a", drv0=1)
    vm(tmp_path, "b", drv0=5)
    page = Exposition(patterns=[f"{tmp_path}/{{vm}}/run/pmem.seg"])
    assert page._sources.fleet is not None
    page._sources.fleet.rescan = HOUR
    assert counts(page.render().decode()) == {("a", "drv0"): 1, ("b", "drv0"): 5}
    member = page._sources.fleet.members()[0]
    os.unlink(tmp_path / "a/run/pmem.seg")
    a.alloc("drv0").cfg_fails.add(10)
    assert cfg_fails(member) == 11 and member.registry is not None  # not checked at a read
    assert counts(page.render().decode()) == {("a", "drv0"): 11, ("b", "drv0"): 5}
    for _ in range(3):
        assert counts(page.render().decode()) == {("b", "drv0"): 5}
    a.close()


def test_a_replaced_segment_is_read_out_once_and_the_new_one_is_a_new_member(
    tmp_path: Path,
) -> None:
    a = vm(tmp_path, "a", drv0=1)
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"], rescan=HOUR)
    [old] = fleet.members()
    new = open_segment(tmp_path / "new.seg", capacity=4)
    new.alloc("drv0").cfg_fails.add(100)
    os.rename(tmp_path / "new.seg", tmp_path / "a/run/pmem.seg")  # the next VM's, over it
    a.alloc("drv0").cfg_fails.add(10)
    assert fleet.members() == (old,) and old.ending  # the old one first, for its final read
    assert cfg_fails(old) == 11 and cfg_fails(old) is None  # once
    [fresh] = fleet.members()
    assert fresh is not old and fresh.path == old.path and cfg_fails(fresh) == 100
    assert fresh.identity == new.identity() != old.identity
    a.close()
    new.close()


def test_a_lost_event_is_found_by_the_rescan_and_an_overflow_rescans_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"], rescan=HOUR)
    fleet.members()
    assert fleet.watcher is not None
    inotify: Inotify = fleet.watcher._inotify
    vm(tmp_path, "a", drv0=1)
    inotify.read()  # its events lost
    assert fleet.members() == ()  # nothing said so
    fleet.scan()  # the rescan, as a guard
    assert paths(fleet.members()) == [f"{tmp_path}/a/run/pmem.seg"]
    vm(tmp_path, "b", drv0=1)
    inotify.read()
    overflow = ([Event(-1, lib.IN_Q_OVERFLOW, "")], True)
    monkeypatch.setattr(inotify, "read", lambda: overflow)  # the kernel's queue overflowed
    assert paths(fleet.members()) == [f"{tmp_path}/{v}/run/pmem.seg" for v in "ab"]


def test_more_events_than_one_read_takes_are_a_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_inotify, "CHUNK", 4096)
    monkeypatch.setattr(_inotify, "MAX_READ", 4096)
    (tmp_path / "shm").mkdir()
    fleet = Fleet([f"{tmp_path}/shm/*.seg"], rescan=HOUR)
    fleet.members()
    assert fleet.watcher is not None
    for i in range(100):  # 100 events of 16 + 80 bytes at least: more than 4096
        (tmp_path / "shm" / f"other-file-{i:04d}-{'x' * 60}").touch()
    open_segment(tmp_path / "shm/a.seg", capacity=4)
    events, lost = fleet.watcher._inotify.read()
    assert lost and sum(len(e.name) + 16 for e in events) <= 4096
    assert paths(fleet.members()) == [f"{tmp_path}/shm/a.seg"]  # the rest: a rescan


def test_past_the_watch_limit_the_rescan_finds_segments_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pmem_metrics.fleet

    vm(tmp_path, "a", drv0=1)
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"])
    assert len(fleet.members()) == 1 and fleet.rescan == RESCAN_WATCHED
    assert fleet.watcher is not None
    inotify = fleet.watcher._inotify
    add = inotify.add

    def full(path: str, mask: int) -> int:
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device", path)

    monkeypatch.setattr(inotify, "add", full)
    with caplog.at_level(logging.WARNING, logger="pmem_metrics"):
        for name in ("b", "c"):
            vm(tmp_path, name, drv0=1)
            fleet.members()
        assert fleet.rescan == RESCAN  # every second, from now on
        monkeypatch.setattr(pmem_metrics.fleet, "RESCAN", 0.0)  # (not to wait for it here)
        assert [m.labels["vm"] for m in fleet.members()] == ["a", "b", "c"]
        fleet.members()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "max_user_watches" in said[0], said
    monkeypatch.setattr(inotify, "add", add)  # room again: the next rescan watches them all
    fleet.members()
    assert fleet.watcher.complete and fleet.rescan == RESCAN_WATCHED
    vm(tmp_path, "d", drv0=1)
    assert len(fleet.members()) == 4


def test_without_inotify_the_rescan_finds_segments_every_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pmem_metrics.fleet

    def unavailable(patterns: object) -> None:
        raise OSError(errno.ENOSYS, "inotify_init1: Function not implemented")

    monkeypatch.setattr(pmem_metrics.fleet, "Watcher", unavailable)  # as on another platform
    fleet = Fleet([f"{tmp_path}/{{vm}}/run/pmem.seg"])
    assert fleet.watcher is None and fleet.rescan == RESCAN
    assert fleet.members() == ()
    vm(tmp_path, "a", drv0=1)
    monkeypatch.setattr(pmem_metrics.fleet, "RESCAN", 0.0)  # (not to wait for it here)
    [a] = fleet.members()
    os.unlink(a.path)
    assert fleet.members() == (a,) and a.ending  # the rescan's lstat saw it go
    assert cfg_fails(a) == 1 and fleet.members() == ()


def test_lock_files_and_segments_being_made_are_no_segments_and_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pattern like /dev/shm/* (or .*) matches what a segment is made with, too."""
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / ".c.99.0.tmp").write_bytes(b"half made")  # left by a creator killed midway
    with caplog.at_level(logging.WARNING, logger="pmem_metrics"):
        fleet = Fleet([f"{shm}/*", f"{shm}/.*"], rescan=HOUR)
        fleet.members()
        open_segment(shm / "a", capacity=4)
        open_segment(shm / ".b", capacity=4)
        assert paths(fleet.members()) == [f"{shm}/.b", f"{shm}/a"]
        fleet.scan()
        assert paths(fleet.members()) == [f"{shm}/.b", f"{shm}/a"]
        (shm / "junk").write_bytes(b"not a segment" * 100)
        (shm / "stray.lock").write_bytes(b"")  # "stray" would match: a lock, skipped silently
        for _ in range(3):
            assert paths(fleet.members()) == [f"{shm}/.b", f"{shm}/a"]
        fleet.scan()
        locks = Fleet([f"{shm}/*.lock"], rescan=HOUR)  # "a" matches no more, but is there
        assert locks.members() == ()
        open_segment(shm / "d", capacity=4)
        assert locks.members() == ()
    said = sorted(r.getMessage() for r in caplog.records)
    assert len(said) == 2, said
    assert said[0].startswith(f"pmem_metrics: skipping {shm}/junk: ")
    # "stray" neither matches *.lock nor is there: to that pattern, a file like any other.
    assert said[1].startswith(f"pmem_metrics: skipping {shm}/stray.lock: ")


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    vm(tmp_path / "elsewhere", "x", drv0=1)
    (tmp_path / "jail").mkdir()
    fleet = Fleet([f"{tmp_path}/jail/{{vm}}/run/pmem.seg"], rescan=HOUR)
    fleet.members()
    os.symlink(tmp_path / "elsewhere/x", tmp_path / "jail/x")  # a VM pointing at another's
    assert fleet.members() == ()
    fleet.scan()
    assert fleet.members() == ()
