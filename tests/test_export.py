"""The exporter (python -m pmem_metrics export): read-only scrapes, following a path, --wait.

The exporter runs in a process of its own; the segments it reads are made
here (a segment is a file: which process made it does not matter).  Waits
are bounded polls, never timing assertions.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pmem_metrics import Registry, open_segment
from pmem_metrics.cli._args import prog
from pmem_metrics.cli.export import export

PATIENCE = 60.0
"""Seconds any one wait below may take before the test fails (a bound, not a timing check)."""


def make_segment(path: Path, mode: int = 0o600, **cfg_fails: int) -> Registry:
    """A new segment at *path*, each keyword a device with that many cfg_fails."""
    seg = open_segment(path, mode=mode)
    for drive_id, n in cfg_fails.items():
        seg.alloc(drive_id).cfg_fails.add(n)
    return seg


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll *check* until it holds; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


class Exporter:
    """``python -m pmem_metrics export ARGS`` in the background, its stderr read line by line."""

    def __init__(
        self,
        cwd: Path,
        *args: str,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or [sys.executable, "-m", "pmem_metrics"]), "export", *args],
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put("")  # EOF: the exporter is gone

    def expect(self, start: str) -> str:
        """The next stderr line, which must start with *start* (a dead exporter fails at once)."""
        line = self._lines.get(timeout=PATIENCE)
        self.stderr.append(line)
        if not line.startswith(start):
            self.proc.kill()  # dead or astray: what else it said goes in the failure
            pytest.fail(f"expected {start!r}, got {line!r}; then: {self.stop()}")
        return line

    def until(self, text: str) -> str:
        """The next stderr line that holds *text*, the lines before it kept in :attr:`stderr`."""
        while True:
            line = self._lines.get(timeout=PATIENCE)
            self.stderr.append(line)
            if text in line:
                return line
            if not line:  # the exporter is gone
                pytest.fail(f"never said {text!r}: {''.join(self.stderr)}")

    def url(self) -> str:
        return self.expect("export: Prometheus metrics at ").split(" at ")[1].strip()

    def stop(self) -> tuple[int, str]:
        """Ctrl-C it; its exit status and the rest of its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(PATIENCE)
        finally:
            self.proc.kill()
        self._reader.join(PATIENCE)
        rest = []
        while not self._lines.empty():
            rest.append(self._lines.get())  # "" marks the end
        self.stderr += filter(None, rest)
        return rc, "".join(rest)


def scrape(url: str) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """cfg_fails by (segment, drive_id), and pmem_segment_up by segment."""
    text = urllib.request.urlopen(url, timeout=PATIENCE).read().decode()
    counts, up = {}, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pmem_cfg_fails_total":
                counts[s.labels["segment"], s.labels["drive_id"]] = s.value
            elif s.name == "pmem_segment_up":
                up[s.labels["segment"]] = s.value
    return counts, up


def reported(lines: Path) -> int:
    """The cfg_fails the whole lines in *lines* reported, all together."""
    if not lines.exists():
        return 0
    whole = lines.read_text().splitlines(keepends=True)
    return sum(json.loads(line)["pmem"]["cfg_fails"] for line in whole if line.endswith("\n"))


# ---- read-only: read permission is all Prometheus needs ---------------------------------

GROUP = 4711
"""A group the scraping user is in and root's segment belongs to (no name needed)."""

NOBODY = 65534


def becoming(uid: int, groups: list[int]) -> str:
    """``python -c`` code that runs the CLI as *uid* (its group the same), in *groups* too."""
    return f"""
import os, sys
# Everything the exporter will import, while the interpreter's own files (which
# may be where the other user cannot read, under /root) are still readable;
# then become that user, before the exporter opens anything.
# (3.13's argparse imports locale lazily, through gettext.)
import encodings.idna, gettext, locale, pmem_metrics.cli, pmem_metrics.exposition
os.setgroups({groups!r})
os.setgid({uid})
os.setuid({uid})
sys.argv[0] = "python -m pmem_metrics"
sys.exit(pmem_metrics.cli.main(sys.argv[1:]))
"""


AS_NOBODY = becoming(NOBODY, [GROUP])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory root owns and GROUP may enter (pytest's own is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="pmem-export-"))
    try:
        os.chown(d, 0, GROUP)
        d.chmod(0o750)
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the exporter as another user: needs root")
def test_a_prometheus_only_exporter_reads_a_segment_it_may_only_read(shared_dir: Path) -> None:
    seg_path = shared_dir / "seg"
    seg = make_segment(seg_path, mode=0o640, drv0=3)
    os.chown(seg_path, 0, GROUP)
    seg_path.chmod(0o640)  # root's, its group may read it, nobody else anything
    as_nobody = [sys.executable, "-c", AS_NOBODY]
    exporter = Exporter(shared_dir, "--shm", str(seg_path), "--prometheus-port", "0",
                        prefix=as_nobody)  # fmt: skip
    try:
        counts, up = scrape(exporter.url())
    finally:
        rc, err = exporter.stop()
    assert counts == {(str(seg_path), "drv0"): 3.0}
    assert up == {str(seg_path): 1.0}
    assert rc == 130, err
    # Lines flush, which writes: the same user is refused that, in one line naming the path.
    lines = subprocess.run(
        [*as_nobody, "export", "--shm", str(seg_path), "--duration", "0"],
        cwd=shared_dir, capture_output=True, text=True, timeout=PATIENCE,
    )  # fmt: skip
    assert lines.returncode == 1 and lines.stdout == ""
    assert lines.stderr.count("\n") == 1 and "Permission denied" in lines.stderr, lines.stderr
    assert str(seg_path) in lines.stderr
    assert seg.flush_metrics()["pmem_drv0"]["cfg_fails"] == 3  # nobody flushed it meanwhile


# ---- a segment removed or replaced under a running exporter ------------------------------


def test_a_scrape_follows_the_path_to_the_segment_that_replaced_one(tmp_path: Path) -> None:
    seg, other = tmp_path / "seg", tmp_path / "other"
    vm = make_segment(seg, drv0=3)
    make_segment(other, drv0=9)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--shm", str(other), "--prometheus-port", "0")
    try:
        url = exporter.url()
        assert scrape(url) == (
            {(str(seg), "drv0"): 3.0, (str(other), "drv0"): 9.0},
            {str(seg): 1.0, str(other): 1.0},
        )
        vm.alloc("drv0").cfg_fails.add(4)  # its last counts,
        seg.unlink()  # then its process ended, say: the next scrape has them, once
        assert scrape(url) == (
            {(str(seg), "drv0"): 7.0, (str(other), "drv0"): 9.0},
            {str(seg): 1.0, str(other): 1.0},
        )
        assert scrape(url) == ({(str(other), "drv0"): 9.0}, {str(seg): 0.0, str(other): 1.0})
        make_segment(seg, drv1=5)  # and a new one started, with other devices
        new = (
            {(str(seg), "drv1"): 5.0, (str(other), "drv0"): 9.0},
            {str(seg): 1.0, str(other): 1.0},
        )
        assert scrape(url) == new
        assert scrape(url) == new
        make_segment(tmp_path / "next", drv2=11)
        os.replace(tmp_path / "next", seg)  # replaced without a gap: the old one's last read
        assert scrape(url) == new
        assert scrape(url) == (
            {(str(seg), "drv2"): 11.0, (str(other), "drv0"): 9.0},
            {str(seg): 1.0, str(other): 1.0},
        )
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err


def settled_fds(pid: int) -> int:
    """Process *pid*'s descriptors, the fewest of 20 looks 10 ms apart: a scrape's socket that
    its server thread is still closing is not counted."""
    fewest = len(os.listdir(f"/proc/{pid}/fd"))
    for _ in range(19):
        time.sleep(0.01)
        fewest = min(fewest, len(os.listdir(f"/proc/{pid}/fd")))
    return fewest


@pytest.mark.heavy
def test_an_exporter_follows_300_vm_restarts_with_every_last_count_and_no_leak(
    tmp_path: Path,
) -> None:
    """A VM's segment replaced 300 times under a running exporter: each VM's last counts
    are scraped once, from the file it had open, and its descriptors stay as they were."""
    seg = tmp_path / "seg"
    vm = make_segment(seg, d=1)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--prometheus-port", "0")
    try:
        url = exporter.url()
        assert scrape(url) == ({(str(seg), "d"): 1.0}, {str(seg): 1.0})
        fds = settled_fds(exporter.proc.pid)
        for i in range(2, 302):
            vm.alloc("d").cfg_fails.add(1000)  # counted since the last scrape, then it exits
            old, seg_tmp = vm, tmp_path / "next"
            vm = make_segment(seg_tmp, d=i)
            os.replace(seg_tmp, seg)  # the next VM's segment, at the same path
            os.replace(seg_tmp.with_name("next.lock"), seg.with_name("seg.lock"))
            old.close()  # this process lets go of the old one too
            assert scrape(url) == ({(str(seg), "d"): i - 1 + 1000.0}, {str(seg): 1.0})  # its last
            assert scrape(url) == ({(str(seg), "d"): float(i)}, {str(seg): 1.0})
        assert settled_fds(exporter.proc.pid) == fds
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err


def test_lines_follow_the_path_to_the_segment_that_replaced_one(tmp_path: Path) -> None:
    seg, lines = tmp_path / "seg", tmp_path / "lines.json"
    vm = make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--interval", "0.05",
                        "--metrics-path", str(lines))  # fmt: skip
    try:
        eventually(lambda: reported(lines) == 3, "the first segment's counts in a line")
        vm.alloc("drv0").cfg_fails.add(6)  # its last counts, then its process ends:
        seg.unlink()  # a final line reports them, from the file still open
        exporter.expect(f"export: the segment at {str(seg)!r} was removed; waiting for a new one")
        assert reported(lines) == 3 + 6
        new = make_segment(seg, drv1=5)
        exporter.expect(f"export: the segment at {str(seg)!r} was replaced")
        eventually(lambda: reported(lines) == 9 + 5, "the new segment's counts in a line")
        new.alloc("drv1").cfg_fails.add(2)  # lines go on, from the new segment
        eventually(lambda: reported(lines) == 9 + 5 + 2, "later counts of the new segment")
        make_segment(tmp_path / "next", drv2=4)
        new.alloc("drv1").cfg_fails.add(1)  # counted just before it is replaced
        os.replace(tmp_path / "next", seg)  # replaced without a gap
        exporter.expect(f"export: the segment at {str(seg)!r} was replaced")
        eventually(lambda: reported(lines) == 9 + 5 + 2 + 1 + 4, "the third segment's counts")
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err
    assert reported(lines) == 9 + 5 + 2 + 1 + 4  # each count once, the final lines included
    assert all(line.startswith("export: ") for line in exporter.stderr), exporter.stderr


# ---- --wait, and never creating a segment ------------------------------------------------


@pytest.mark.parametrize("mode", ["lines", "prometheus"])
def test_wait_waits_for_a_segment_made_after_the_exporter_started(
    tmp_path: Path, mode: str
) -> None:
    seg, lines = tmp_path / "seg", tmp_path / "lines.json"
    args = ["--interval", "0.05", "--metrics-path", str(lines)]
    if mode == "prometheus":
        args = ["--prometheus-port", "0"]
    exporter = Exporter(tmp_path, "--wait", "--shm", str(seg), *args)
    try:
        exporter.expect(f"export: waiting for a segment at {str(seg)!r}")
        assert not seg.exists()  # waiting created nothing
        make_segment(seg, drv0=3)
        if mode == "prometheus":
            assert scrape(exporter.url()) == ({(str(seg), "drv0"): 3.0}, {str(seg): 1.0})
        else:
            eventually(lambda: reported(lines) == 3, "the segment's counts in a line")
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err


def test_wait_ends_at_ctrl_c_or_duration_and_creates_nothing(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    exporter = Exporter(tmp_path, "--wait", "--shm", str(seg), "--prometheus-port", "0")
    exporter.expect(f"export: waiting for a segment at {str(seg)!r}")
    rc, err = exporter.stop()
    assert rc == 130 and err == f"export: interrupted while waiting for {str(seg)!r}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--wait", "--shm", str(seg),
         "--duration", "0.2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"export: waiting for a segment at {str(seg)!r}",
        f"python -m pmem_metrics export: still no segment at {str(seg)!r} at the end of --duration",
    ]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("prometheus", [None, (0, "127.0.0.1")])
def test_a_segment_gone_between_a_check_and_the_open_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prometheus: tuple[int, str] | None
) -> None:
    """However it looks: here every path looks taken, as if it was removed right after."""
    monkeypatch.setattr(os.path, "lexists", lambda path: True)
    monkeypatch.setattr(os.path, "exists", lambda path: True)
    seg = tmp_path / "seg"
    with pytest.raises(SystemExit) as e:
        export([str(seg)], str(tmp_path / "lines.json"), 1.0, 0.0, prometheus)
    assert str(e.value).startswith(f"{prog()} export: no segment at {str(seg)!r}")
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
