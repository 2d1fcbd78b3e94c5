"""Segments found by patterns, labelled by what their named wildcards matched."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pmem_metrics import FIELDS, Registry, open_segment
from pmem_metrics.exposition import Exposition
from pmem_metrics.fleet import Pattern
from pmem_metrics.follow import Followed
from pmem_metrics.prometheus import register


def vm(root: Path, name: str, **cfg_fails: int) -> Registry:
    """VM *name*'s segment in its jail under *root*, with those devices' cfg_fails."""
    (root / name / "run").mkdir(parents=True, exist_ok=True)
    seg = open_segment(root / name / "run" / "pmem.seg", capacity=8)
    for drive_id, n in cfg_fails.items():
        seg.alloc(drive_id).cfg_fails.add(n)
    return seg


def counts(text: str) -> dict[tuple[str, str], float]:
    """cfg_fails by (vm label, drive id)."""
    return {
        (s.labels["vm"], s.labels["drive_id"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pmem_cfg_fails_total"
    }


def test_a_pattern_finds_every_vm_and_labels_it(tmp_path: Path) -> None:
    pattern = f"{tmp_path}/{{vm}}/run/pmem.seg"
    vm(tmp_path, "a", drv0=1)
    vm(tmp_path, "b", drv0=2, drv1=3)
    page = Exposition(patterns=[pattern])
    assert counts(page.render().decode()) == {("a", "drv0"): 1, ("b", "drv0"): 2, ("b", "drv1"): 3}
    text = page.render().decode()
    seg_a = f"{tmp_path}/a/run/pmem.seg"
    assert f'pmem_segment_up{{segment="{seg_a}",vm="a"}} 1.0' in text
    prom = CollectorRegistry()
    register(prom, patterns=[pattern])
    assert generate_latest(prom).decode() == text  # the client's page and ours, alike


def test_a_vm_that_exits_is_reported_once_more_then_let_go(tmp_path: Path) -> None:
    pattern = f"{tmp_path}/{{vm}}/run/pmem.seg"
    a = vm(tmp_path, "a", drv0=1)
    page = Exposition(patterns=[pattern])
    page._sources.fleet.rescan = 0  # type: ignore[union-attr]  # look for VMs at every scrape
    assert counts(page.render().decode()) == {("a", "drv0"): 1}
    vm(tmp_path, "b", drv0=5)  # a new VM: seen at the next scrape
    a.alloc("drv0").cfg_fails.add(10)  # a's last counts, then it exits
    os.unlink(tmp_path / "a" / "run" / "pmem.seg")
    assert counts(page.render().decode()) == {("a", "drv0"): 11, ("b", "drv0"): 5}
    assert counts(page.render().decode()) == {("b", "drv0"): 5}  # a is gone: no series, no up
    assert "a/run" not in page.render().decode()


def test_a_matching_file_that_is_no_segment_is_reported_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vm(tmp_path, "a", drv0=1)
    (tmp_path / "junk" / "run").mkdir(parents=True)
    (tmp_path / "junk" / "run" / "pmem.seg").write_bytes(b"not a segment" * 100)
    page = Exposition(patterns=[f"{tmp_path}/{{vm}}/run/pmem.seg"])
    page._sources.fleet.rescan = 0  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="pmem_metrics"):
        for _ in range(3):
            text = page.render().decode()
            assert counts(text) == {("a", "drv0"): 1} and "junk" not in text
    said = [r.getMessage() for r in caplog.records if "junk" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"pmem_metrics: skipping {tmp_path}/junk/")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/srv/{vm/pmem.seg", "brace"),
        ("/srv/{1vm}/pmem.seg", "not a label name"),
        ("/srv/{segment}/pmem.seg", "every series has"),
        ("/srv/{vm}/{vm}.seg", "named twice"),
        ("/srv/{__x}/pmem.seg", "every series has"),
        ("", "not a segment pattern"),
    ],
)
def test_a_bad_pattern_is_refused_naming_it(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        Pattern(text)
    assert text in str(e.value)


def test_a_pattern_matches_within_a_path_component(tmp_path: Path) -> None:
    vm(tmp_path, "a", drv0=1)
    (tmp_path / "x" / "y" / "run").mkdir(parents=True)
    open_segment(tmp_path / "x" / "y" / "run" / "pmem.seg", capacity=8)
    found = Pattern(f"{tmp_path}/{{vm}}/run/pmem.seg").find()
    assert found == {f"{tmp_path}/a/run/pmem.seg": {"vm": "a"}}
    found = Pattern(f"{tmp_path}/{{vm}}/*/run/pmem.seg").find()
    assert found == {f"{tmp_path}/x/y/run/pmem.seg": {"vm": "x"}}


def test_the_exporter_follows_a_host_of_vms_by_a_pattern(tmp_path: Path) -> None:
    """export --shm-glob: VMs that start after it, labelled; one that exits, read out once."""
    from .test_export import Exporter, settled_fds

    pattern = f"{tmp_path}/{{vm}}/run/pmem.seg"
    exporter = Exporter(tmp_path, "--shm-glob", pattern, "--prometheus-port", "0")
    try:
        url = exporter.url()
        assert counts(http(url)) == {}  # no VM yet: an empty page, not an error
        a = vm(tmp_path, "a", drv0=1)
        b = vm(tmp_path, "b", drv0=2)
        eventually(lambda: counts(http(url)) == {("a", "drv0"): 1, ("b", "drv0"): 2})
        fds = settled_fds(exporter.proc.pid)
        a.alloc("drv0").cfg_fails.add(5)  # a's last counts, then it exits
        os.unlink(tmp_path / "a" / "run" / "pmem.seg")
        a.close()
        assert counts(http(url)) == {("a", "drv0"): 6, ("b", "drv0"): 2}  # once,
        assert counts(http(url)) == {("b", "drv0"): 2}  # then gone
        assert settled_fds(exporter.proc.pid) < fds  # its descriptors with it
        b.close()
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err


def test_a_bad_pattern_is_one_line_naming_it(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm-glob", "/srv/{1vm}/pmem.seg",
         "--prometheus-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    assert "/srv/{1vm}/pmem.seg" in out.stderr and "--shm-glob" in out.stderr


def http(url: str) -> str:
    return urllib.request.urlopen(url, timeout=60).read().decode()


def eventually(check: Callable[[], bool]) -> None:
    """Poll *check* until it holds, 60 s at most (a hang guard)."""
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, "never"
        time.sleep(0.02)


def test_top_shows_every_vm_a_pattern_finds(tmp_path: Path) -> None:
    vm(tmp_path, "a", drv0=1)
    vm(tmp_path, "b", drv0=2)
    out = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "top", "--shm-glob",
         f"{tmp_path}/{{vm}}/run/pmem.seg", "--json", "--all", "--interval", "0.01"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    segments = json.loads(out)["segments"]
    assert {
        path: {d: f["cfg_fails"]["count"] for d, f in s["devices"].items()}
        for path, s in segments.items()
    } == {f"{tmp_path}/a/run/pmem.seg": {"drv0": 1}, f"{tmp_path}/b/run/pmem.seg": {"drv0": 2}}


@pytest.mark.parametrize("watched", [True, False], ids=["pattern", "given-path"])
def test_a_final_report_that_fails_is_tried_again_never_let_go_unreported(
    tmp_path: Path, watched: bool
) -> None:
    # A VM exits while the agent's destination is down: its last counts are in the file the
    # agent still has open, and stay there, the file open, until a report of them goes out.
    path = tmp_path / "vm.seg"
    seg = open_segment(path, capacity=4)
    seg.alloc("drv0").cfg_fails.add(7)
    member = Followed(str(path), readonly=True, watched=watched)
    assert member.open() is not None
    os.unlink(path)
    if watched:
        member.end()  # what the fleet does when an event names the path
    failures = iter([TimeoutError("the pipe's reader paused"), TimeoutError("still"), None])

    def report(registry: Registry) -> dict[str, dict[str, int]]:
        counts = registry.read()
        failure = next(failures)
        if failure is not None:
            raise failure
        return counts

    for _ in range(2):
        with pytest.raises(TimeoutError):
            member.use(report)
        assert member.registry is not None  # kept open: its counts not reported yet
    assert member.use(report) == {"drv0": {**dict.fromkeys(FIELDS, 0), "cfg_fails": 7}}
    assert member.registry is None  # reported: let go
    assert member.use(report) is None and member.error == "no segment"
