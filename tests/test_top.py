"""The live view (python -m pmem_metrics top): its model with a fake clock, one-shot runs, a pty.

Rates are checked exactly against injected times, or, where a real clock
runs, against the interval the output itself reports: never against a
timing threshold.  The live view runs under a pseudo-terminal; every wait
on it is bounded, and the child is killed whatever happens.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pmem_metrics import FIELDS, Registry, open_segment
from pmem_metrics.cli._monitor import Monitor, Rates, Row, is_zero
from pmem_metrics.cli._table import COLUMNS, View, as_json, describe, table
from pmem_metrics.cli.top import open_all, print_once
from pmem_metrics.follow import Followed

PATIENCE = 30.0
"""Seconds any one wait below may take before the test fails (a bound, not a timing check)."""

TOP = [sys.executable, "-m", "pmem_metrics", "top"]


def make_segment(path: Path, **cfg_fails: int) -> Registry:
    """A new segment at *path*, each keyword a device with that many cfg_fails."""
    seg = open_segment(path)
    for drive_id, n in cfg_fails.items():
        seg.alloc(drive_id).cfg_fails.add(n)
    return seg


def run_top(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOP, *args], cwd=cwd, capture_output=True, text=True, timeout=PATIENCE)


class Clock:
    """A clock the test sets."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """A :class:`~pmem_metrics.cli._monitor.Source` whose counts the test sets (``None``: fails)."""

    def __init__(self, path: str, counts: dict[str, dict[str, int]] | None) -> None:
        self.path = path
        self.counts = counts
        self.error: str | None = None
        self.fresh = True

    def read(self) -> dict[str, dict[str, int]] | None:
        self.error = None if self.counts is not None else "no segment"
        return None if self.counts is None else {k: dict(v) for k, v in self.counts.items()}


def by_key(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    return {(r.segment, r.drive_id, r.field): r for r in rows}


# --- the model, with exact times ------------------------------------------------------------


def test_rate_is_the_delta_over_the_interval_and_average_since_first_seen() -> None:
    rates = Rates()
    rows = rates.update("s", {"d": {"cfg_fails": 10}}, now=10.0)
    assert rows == [Row("s", "d", "cfg_fails", 10, None, None)]  # no second read yet
    rows = rates.update("s", {"d": {"cfg_fails": 15}}, now=12.5)
    assert rows == [Row("s", "d", "cfg_fails", 15, 5 / 2.5, 5 / 2.5)]
    rows = rates.update("s", {"d": {"cfg_fails": 18}}, now=14.0)
    assert rows == [Row("s", "d", "cfg_fails", 18, 3 / 1.5, 8 / 4.0)]
    rows = rates.update("s", {"d": {"cfg_fails": 18}}, now=14.0)  # no time passed: unknown
    assert rows == [Row("s", "d", "cfg_fails", 18, None, 8 / 4.0)]


def test_a_device_that_appears_later_starts_its_own_baseline_and_one_that_vanishes_drops() -> None:
    rates = Rates()
    rates.update("s", {"a": {"f": 1}}, now=0.0)
    rows = rates.update("s", {"a": {"f": 3}, "b": {"f": 7}}, now=1.0)
    assert [(r.drive_id, r.rate, r.average) for r in rows] == [("a", 2.0, 2.0), ("b", None, None)]
    rows = rates.update("s", {"a": {"f": 5}, "b": {"f": 11}}, now=3.0)
    assert [(r.drive_id, r.rate, r.average) for r in rows] == [("a", 1.0, 4 / 3), ("b", 2.0, 2.0)]
    rows = rates.update("s", {"b": {"f": 11}}, now=4.0)
    assert [r.drive_id for r in rows] == ["b"]
    rows = rates.update("s", {"a": {"f": 9}, "b": {"f": 11}}, now=5.0)  # back: a new baseline
    assert [(r.drive_id, r.rate, r.average) for r in rows] == [("a", None, None), ("b", 0.0, 1.0)]


def test_segments_have_their_own_baselines_and_forget_starts_one_anew() -> None:
    rates = Rates()
    rates.update("s1", {"d": {"f": 1}}, now=0.0)
    rates.update("s2", {"d": {"f": 100}}, now=0.0)
    assert rates.update("s1", {"d": {"f": 3}}, now=1.0)[0].rate == 2.0
    assert rates.update("s2", {"d": {"f": 110}}, now=1.0)[0].rate == 10.0
    rates.forget("s2")
    assert rates.update("s2", {"d": {"f": 5}}, now=2.0)[0].rate is None
    assert rates.update("s1", {"d": {"f": 4}}, now=2.0)[0].average == 1.5


def test_a_counter_that_wraps_still_has_its_rate() -> None:
    rates = Rates()
    rates.update("s", {"d": {"f": 2**64 - 2}}, now=0.0)
    assert rates.update("s", {"d": {"f": 3}}, now=1.0)[0].rate == 5.0


def test_the_monitor_reads_every_source_by_its_clock_and_follows_them() -> None:
    clock = Clock(50.0)
    one = FakeSource("one", {"d": {"f": 4}})
    two = FakeSource("two", {"d": {"f": 0}})
    monitor = Monitor([one, two], clock)
    monitor.poll()
    assert monitor.interval is None
    one.counts, two.counts = {"d": {"f": 10}}, {"d": {"f": 8}, "new": {"f": 1}}
    clock.now = 52.0
    rows = by_key(monitor.poll())
    assert monitor.interval == 2.0
    assert rows["one", "d", "f"] == Row("one", "d", "f", 10, 3.0, 3.0)
    assert rows["two", "d", "f"] == Row("two", "d", "f", 8, 4.0, 4.0)
    assert rows["two", "new", "f"].rate is None
    # Unreadable: its rows drop out and its error is kept; back: new baselines.
    one.counts = None
    clock.now = 53.0
    assert {r.segment for r in monitor.poll()} == {"two"}
    assert monitor.errors() == {"one": "no segment", "two": None}
    one.counts = {"d": {"f": 12}}
    clock.now = 54.0
    assert by_key(monitor.poll())["one", "d", "f"].rate is None
    assert monitor.errors() == {"one": None, "two": None}
    # Reopened (replaced): new baselines, though the counts read fine.
    two.fresh = True
    clock.now = 55.0
    assert by_key(monitor.poll())["two", "d", "f"].average is None


def rows_of(*specs: tuple[str, int, float | None]) -> list[Row]:
    return [Row("s", drive_id, "cfg_fails", n, rate, rate) for drive_id, n, rate in specs]


def test_zero_rows_are_hidden_unless_shown() -> None:
    rows = rows_of(("a", 0, None), ("b", 0, 0.0), ("c", 1, 0.0), ("d", 0, 2.0))
    assert [is_zero(r) for r in rows] == [True, True, False, False]
    view = View(COLUMNS[1:])
    assert view.select(rows) == ([rows[2], rows[3]], 2)
    assert not view.press("z")
    assert view.select(rows) == (rows, 0)


def test_sort_by_every_column_numbers_high_first_and_reversed() -> None:
    rows = rows_of(("b", 5, 1.0), ("a", 9, None), ("c", 1, 3.0), ("d", 5, 0.5))
    view = View(COLUMNS[1:], zeros=True)
    assert view.sort == "drive_id"
    assert [r.drive_id for r in view.select(rows)[0]] == ["a", "b", "c", "d"]
    view.press("r")
    assert [r.drive_id for r in view.select(rows)[0]] == ["d", "c", "b", "a"]
    view.press("r")
    view.press("s")
    assert view.sort == "field"  # every row ties: their order stays
    assert [r.drive_id for r in view.select(rows)[0]] == ["b", "a", "c", "d"]
    view.press("s")
    assert view.sort == "total"  # high first; a tie keeps its order
    assert [r.drive_id for r in view.select(rows)[0]] == ["a", "b", "d", "c"]
    view.press("r")
    assert [r.drive_id for r in view.select(rows)[0]] == ["c", "b", "d", "a"]
    view.press("r")
    view.press("s")
    assert view.sort == "rate"  # an unknown rate sorts lowest
    assert [r.drive_id for r in view.select(rows)[0]] == ["c", "b", "d", "a"]
    view.press("s")
    assert view.sort == "average"
    view.press("s")
    assert view.sort == "drive_id"  # round again
    several = View(COLUMNS)
    assert several.sort == "segment"
    several.press("s")
    assert several.sort == "drive_id"


def test_the_filter_is_typed_after_slash_applied_by_enter_cleared_when_empty() -> None:
    rows = rows_of(("vm1-a", 1, 0.0), ("vm2-a", 1, 0.0), ("vm1-b", 1, 0.0))
    view = View(COLUMNS[1:], text="vm2")
    assert [r.drive_id for r in view.select(rows)[0]] == ["vm2-a"]
    view.press("/")
    for key in "vm1-q":  # q and s are text while typing, not commands
        assert not view.press(key)
    view.press("\b")
    assert view.editing == "vm1-"
    assert "filter ids: vm1-_" in view.keys()
    assert [r.drive_id for r in view.select(rows)[0]] == ["vm2-a"]  # not applied yet
    view.press("\n")
    assert view.editing is None
    assert [r.drive_id for r in view.select(rows)[0]] == ["vm1-a", "vm1-b"]
    view.press("/")
    view.press("x")
    view.press("\x1b")  # Escape: the filter stays as it was
    assert view.text == "vm1-"
    view.press("/")
    view.press("\r")  # empty: cleared
    assert view.text == ""
    assert len(view.select(rows)[0]) == 3
    assert view.press("q")


def test_the_key_line_shows_the_state() -> None:
    view = View(COLUMNS[1:])
    assert view.keys() == (
        "q quit  s sort: ID (A to Z)  r reverse  z zeros: hidden  / filter ids: -"
    )
    for key in "ssrz":
        view.press(key)
    assert "s sort: COUNT (low first)" in view.keys()
    assert "z zeros: shown" in view.keys()


def test_the_table_is_aligned_with_numbers_right() -> None:
    rows = [Row("s", "drv0", "cfg_fails", 12345, 2.5, None), Row("s", "d", "f", 7, 0.0, 1 / 3)]
    assert table(rows, COLUMNS[1:]) == [
        "ID    FIELD      COUNT  RATE/S  AVG/S",
        "drv0  cfg_fails  12345    2.50      -",
        "d     f              7    0.00   0.33",
    ]
    assert table([], COLUMNS) == ["SEGMENT  ID  FIELD  COUNT  RATE/S  AVG/S"]


def test_the_json_object_holds_every_segment_and_the_rows() -> None:
    rows = [Row("a", "d", "cfg_fails", 3, 1.5, None)]
    assert as_json(rows, {"a": None, "b": "no segment"}, 2.0) == {
        "interval": 2.0,
        "segments": {
            "a": {
                "error": None,
                "devices": {"d": {"cfg_fails": {"count": 3, "rate": 1.5, "average": None}}},
            },
            "b": {"error": "no segment", "devices": {}},
        },
    }


# --- segments, read in this process ---------------------------------------------------------


def test_a_removed_segment_is_named_and_a_new_one_at_its_path_starts_new_baselines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "seg"
    make_segment(path, d=5)
    clock = Clock(0.0)
    monitor = Monitor(open_all([str(path)]), clock)
    monitor.poll()
    os.unlink(path)
    clock.now = 1.0  # its final counts, read from the file still open, once
    assert by_key(monitor.poll())[str(path), "d", "cfg_fails"].total == 5
    clock.now = 1.5
    assert monitor.poll() == []
    assert monitor.errors() == {str(path): "no segment"}
    make_segment(path, d=2)
    clock.now = 2.0
    assert by_key(monitor.poll())[str(path), "d", "cfg_fails"] == Row(
        str(path), "d", "cfg_fails", 2, None, None
    )
    assert monitor.errors() == {str(path): None}


def test_an_unreadable_segment_is_named_with_its_problem(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    make_segment(path, d=5)
    [segment] = open_all([str(path)])
    os.unlink(path)
    path.write_bytes(b"not a segment at all" * 100)
    assert segment.read() == {"d": {**dict.fromkeys(FIELDS, 0), "cfg_fails": 5}}  # its last
    assert segment.read() is None
    assert segment.error is not None and "not a pmem_metrics segment" in segment.error


def test_print_once_reports_the_rate_over_its_own_interval_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = make_segment(tmp_path / "seg", d=10)
    clock = Clock(7.0)
    monitor = Monitor(open_all([str(tmp_path / "seg")]), clock)
    waited = []

    def wait(deadline: float) -> bool:
        waited.append(deadline)
        seg.alloc("d").cfg_fails.add(6)  # what the interval adds
        clock.now = 9.0  # what the clock says after it, a little late
        return False

    assert print_once(monitor, View(COLUMNS[1:]), 1.5, True, wait) == 0
    assert waited == [8.5]
    obj = json.loads(capsys.readouterr().out)
    assert obj == {
        "interval": 2.0,
        "segments": {
            str(tmp_path / "seg"): {
                "error": None,
                "devices": {"d": {"cfg_fails": {"count": 16, "rate": 3.0, "average": 3.0}}},
                "room": {"capacity": 4096, "devices": 1, "retired": 0, "alloc_failures": 0},
            }
        },
    }


def test_print_once_prints_nothing_when_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_segment(tmp_path / "seg", d=10)
    monitor = Monitor(open_all([str(tmp_path / "seg")]))
    assert print_once(monitor, View(COLUMNS[1:]), 1.0, False, lambda deadline: True) is None
    assert capsys.readouterr().out == ""


def test_one_segment_under_two_names_is_read_once(tmp_path: Path) -> None:
    make_segment(tmp_path / "seg", d=1)
    os.link(tmp_path / "seg", tmp_path / "alias")
    segments = open_all([str(tmp_path / "seg"), str(tmp_path / "alias"), str(tmp_path / "seg")])
    assert [s.path for s in segments] == [str(tmp_path / "seg")]
    assert isinstance(segments[0], Followed) and segments[0].registry is not None


# --- one-shot runs ----------------------------------------------------------------------------


def test_once_prints_exact_counts_and_hides_zero_rows(tmp_path: Path) -> None:
    seg = make_segment(tmp_path / "seg", drv0=5, idle=0)
    seg.alloc("drv1").queue_event_count.add(4321)
    r = run_top(tmp_path, "--shm", "seg", "--once", "--interval", "0.01")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "FIELD", "COUNT", "RATE/S", "AVG/S"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["drv0", "cfg_fails", "5"],
        ["drv1", "queue_event_count", "4321"],
    ]
    r = run_top(tmp_path, "--shm", "seg", "--once", "--interval", "0.01", "--all", "--filter", "id")
    assert [line.split()[:3] for line in r.stdout.splitlines()[1:]] == [
        ["idle", f, "0"] for f in FIELDS
    ]


def test_json_counts_are_exact_and_rates_agree_with_its_interval(tmp_path: Path) -> None:
    seg = make_segment(tmp_path / "seg", quiet=3, busy=1000)
    busy = seg.alloc("busy").cfg_fails
    stop = threading.Event()
    added = [0]

    def bump() -> None:
        while not stop.is_set():
            busy.inc()
            added[0] += 1
            time.sleep(0.0005)

    t = threading.Thread(target=bump)
    t.start()
    try:
        r = run_top(tmp_path, "--shm", "seg", "--json", "--interval", "0.2")
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    interval = obj["interval"]
    devices = obj["segments"]["seg"]["devices"]
    assert obj["segments"]["seg"]["error"] is None
    assert devices["quiet"] == {"cfg_fails": {"count": 3, "rate": 0.0, "average": 0.0}}
    b = devices["busy"]["cfg_fails"]
    assert 1000 <= b["count"] <= 1000 + added[0]
    assert b["average"] == b["rate"]  # both since the first of the two reads
    delta = b["rate"] * interval  # what the interval added: whole, and within the count
    assert delta == pytest.approx(round(delta), abs=1e-6)
    assert 0 <= round(delta) <= b["count"] - 1000


def test_top_needs_only_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    make_segment(path, d=9)
    path.chmod(0o440)
    r = run_top(tmp_path, "--shm", str(path), "--json", "--interval", "0.01")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["segments"][str(path)]["devices"]["d"]["cfg_fails"]["count"] == 9


def test_top_never_flushes(tmp_path: Path) -> None:
    seg = make_segment(tmp_path / "seg", d=9)
    seg.alloc("e").queue_event_count.add(4)
    for mode in ("--json", "--once"):
        r = run_top(tmp_path, "--shm", "seg", mode, "--interval", "0.01")
        assert r.returncode == 0, r.stderr
    flushed = seg.flush_metrics()
    assert flushed["pmem_d"]["cfg_fails"] == 9
    assert flushed["pmem_e"]["queue_event_count"] == 4


def test_several_segments_are_labelled(tmp_path: Path) -> None:
    make_segment(tmp_path / "one", d=1)
    make_segment(tmp_path / "two", d=2)
    r = run_top(tmp_path, "--shm", "one", "--shm", "two", "--once", "--interval", "0.01")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEGMENT", "ID", "FIELD", "COUNT", "RATE/S", "AVG/S"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["one", "d", "cfg_fails", "1"],
        ["two", "d", "cfg_fails", "2"],
    ]
    r = run_top(tmp_path, "--shm", "one", "--shm", "two", "--json", "--interval", "0.01")
    segments = json.loads(r.stdout)["segments"]
    assert {p: s["devices"]["d"]["cfg_fails"]["count"] for p, s in segments.items()} == {
        "one": 1,
        "two": 2,
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--shm", "one", "--shm", "missing", "--once"], "no segment at 'missing' (--shm)"),
        (["--shm", "", "--json"], "not a segment path: '' (--shm)"),
        (["--shm", "junk", "--json"], "'junk'"),
        (["--shm", "one"], "needs a terminal; --once or --json"),
    ],
)
def test_errors_are_one_line_naming_the_path(tmp_path: Path, args: list[str], says: str) -> None:
    make_segment(tmp_path / "one", d=1)
    (tmp_path / "junk").write_bytes(b"x" * 4096)
    r = run_top(tmp_path, *args)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("python -m pmem_metrics")
    assert says in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_an_interval_below_the_floor_is_refused_naming_interval(tmp_path: Path) -> None:
    make_segment(tmp_path / "one", d=1)
    r = run_top(tmp_path, "--shm", "one", "--once", "--interval", "0.001")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "python -m pmem_metrics top: error: argument --interval: must be 0.01 s or more, got 0.001"
    )


# --- the live view, under a pseudo-terminal ---------------------------------------------------


class Terminal:
    """``top ARGS`` on a pseudo-terminal of *rows* x *cols*, its controlling terminal."""

    def __init__(
        self, cwd: Path, *args: str, rows: int = 24, cols: int = 80, term: str = "xterm",
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        master, slave = os.openpty()
        # The size is set before the child exists, so curses starts with it.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": term, **(env or {})}
        argv = [*TOP, *args]
        pid = os.fork()
        if pid == 0:  # only system calls from here to exec: the parent may have threads
            try:
                os.close(master)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                os.chdir(cwd)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        os.close(slave)
        self.pid, self.fd = pid, master
        self.output = b""
        self.status: int | None = None
        self.deadline = time.monotonic() + PATIENCE

    def _read(self, timeout: float) -> bool:
        """Read what is there within *timeout*; ``False`` at the end (the child closed it)."""
        if not select.select([self.fd], [], [], max(0.0, timeout))[0]:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""  # Linux: EIO once the child's side is closed
        self.output += data
        return bool(data)

    def expect(self, text: bytes) -> None:
        """Read until *text* has come (fail at the deadline, or if the child ends first)."""
        while text not in self.output:
            left = self.deadline - time.monotonic()
            assert left > 0, f"never saw {text!r} in {self.output[-2000:]!r}"
            if not self._read(min(left, 0.5)):
                pytest.fail(f"ended before {text!r}: {self.wait()}, {self.output[-2000:]!r}")

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def resize(self, rows: int, cols: int) -> None:
        """Change the window's size: the kernel sends the child SIGWINCH."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self) -> int:
        """Read to the end, then the child's exit status (fail at the deadline)."""
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < self.deadline, f"still running: {self.output[-2000:]!r}"
            self._read(0.05)
        while self._read(0.5):  # what the child wrote last (endwin's restore)
            assert time.monotonic() < self.deadline
        return self.status

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -signal.SIGKILL
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[list[Terminal]]:
    """Terminals to start; each child is killed at the end if it still runs."""
    started: list[Terminal] = []
    yield started
    for t in started:
        t.close()


def start(started: list[Terminal], cwd: Path, *args: str, **how: Any) -> Terminal:
    t = Terminal(cwd, *args, **how)
    started.append(t)
    return t


def test_live_view_shows_rows_takes_keys_and_quits(
    tmp_path: Path, terminal: list[Terminal]
) -> None:
    seg = make_segment(tmp_path / "seg", drv0=4321, other=0)
    t = start(terminal, tmp_path, "--shm", "seg", "--interval", "0.1")
    t.expect(b"drv0")
    t.expect(b"4321")
    seg.alloc("late").event_fails.add(8765)  # a device that appears while it runs
    t.expect(b"late")
    t.expect(b"8765")
    # A frame sends only what changed on the screen: expect text that is new there.
    t.send(b"z")
    t.expect(b"other")  # its zero rows, shown now
    t.send(b"s")
    t.expect(b"FIELD (A to Z)")
    t.send(b"r/oth")
    t.expect(b"Enter applies")
    t.send(b"\r")
    t.expect(b"filter ids: oth")
    t.send(b"q")
    assert t.wait() == 0
    assert b"Traceback" not in t.output


def test_live_view_survives_tiny_terminals_and_resizes(
    tmp_path: Path, terminal: list[Terminal]
) -> None:
    make_segment(tmp_path / "seg", **{f"drv{i}": 4321 for i in range(6)})
    # LINES and COLUMNS of another size exported (as pytest-xdist does): the window's wins.
    t = start(
        terminal, tmp_path, "--shm", "seg", "--interval", "0.05", rows=2, cols=4,
        env={"LINES": "24", "COLUMNS": "80"},
    )  # fmt: skip
    t.expect(b"pme")  # what fits of the title: the last column is left alone
    for rows, cols in ((1, 1), (3, 20), (1, 80), (40, 200), (6, 132)):
        t.resize(rows, cols)
    # 6 rows, some below the window.  How many is not read from the bytes: curses may
    # redraw only the digit that changed, so "4 below" need never appear in one piece.
    t.expect(b" below the window")
    t.expect(b"drv0")
    t.send(b"zsr/x\x7f\r")
    t.send(b"q")
    assert t.wait() == 0
    assert b"Traceback" not in t.output


@pytest.mark.parametrize(("how", "status"), [("SIGTERM", 0), ("SIGINT", 130), ("ctrl-c", 130)])
def test_live_view_ends_cleanly_on_a_signal(
    tmp_path: Path, terminal: list[Terminal], how: str, status: int
) -> None:
    make_segment(tmp_path / "seg", drv0=4321)
    t = start(terminal, tmp_path, "--shm", "seg", "--interval", "0.1")
    t.expect(b"drv0")
    if how == "ctrl-c":
        t.send(b"\x03")
    else:
        os.kill(t.pid, getattr(signal, how))
    assert t.wait() == status
    assert b"Traceback" not in t.output
    assert b"\x1b[?1049l" in t.output  # the terminal restored (xterm's rmcup)


def test_live_view_names_a_removed_segment_and_follows_a_new_one(
    tmp_path: Path, terminal: list[Terminal]
) -> None:
    make_segment(tmp_path / "seg", drv0=4321)
    t = start(terminal, tmp_path, "--shm", "seg", "--interval", "0.05")
    t.expect(b"4321")
    os.unlink(tmp_path / "seg")
    t.expect(b"no segment")  # in the segment's line, which said how full it was
    make_segment(tmp_path / "seg", fresh=8765)
    t.expect(b"8765")
    t.send(b"q")
    assert t.wait() == 0


def test_live_view_refuses_an_unknown_terminal_in_one_line(
    tmp_path: Path, terminal: list[Terminal]
) -> None:
    make_segment(tmp_path / "seg", drv0=1)
    t = start(terminal, tmp_path, "--shm", "seg", term="no-such-terminal-kind")
    assert t.wait() == 1
    text = t.output.decode().strip()
    assert text.startswith("python -m pmem_metrics top: cannot use this terminal")
    assert len(text.splitlines()) == 1


def test_json_and_the_live_view_show_each_segments_room(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg", capacity=8)
    seg.alloc("a").cfg_fails.add(1)
    seg.alloc("b")
    seg.retire("b")
    r = run_top(tmp_path, "--shm", "seg", "--json", "--interval", "0.05")
    assert r.returncode == 0, r.stderr
    room = json.loads(r.stdout)["segments"]["seg"]["room"]
    assert room == {"capacity": 8, "devices": 1, "retired": 1, "alloc_failures": 0}
    line = describe(seg.stats())
    assert line == "1 live of 8 slots, 1 retired, 0 allocations refused"


def test_a_pattern_that_names_a_wildcard_gives_a_column_of_its_values(tmp_path: Path) -> None:
    for vm, n in (("vm-a", 3), ("vm-b", 5)):
        (tmp_path / vm).mkdir()
        make_segment(tmp_path / vm / "seg", d=n)
    make_segment(tmp_path / "given", d=7)
    pattern = str(tmp_path / "{vm}" / "seg")
    r = run_top(tmp_path, "--shm", "given", "--shm-glob", pattern, "--once", "--interval", "0.01")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["VM", "SEGMENT", "ID", "FIELD", "COUNT", "RATE/S", "AVG/S"]
    rows = [line.split()[:-2] for line in lines[1:]]  # but the rates
    a, b = str(tmp_path / "vm-a" / "seg"), str(tmp_path / "vm-b" / "seg")
    assert rows == [  # a --shm has no such label: its cell is blank
        ["given", "d", "cfg_fails", "7"],
        ["vm-a", a, "d", "cfg_fails", "3"],
        ["vm-b", b, "d", "cfg_fails", "5"],
    ]
    assert lines[1].index("given") == lines[2].index(a)  # aligned: the VM column is there
    r = run_top(tmp_path, "--shm-glob", pattern, "--json", "--interval", "0.01")
    assert r.returncode == 0, r.stderr
    segments = json.loads(r.stdout)["segments"]
    assert {
        p: (s["labels"], s["devices"]["d"]["cfg_fails"]["count"]) for p, s in segments.items()
    } == {
        a: ({"vm": "vm-a"}, 3),
        b: ({"vm": "vm-b"}, 5),
    }
    view = View(("{vm}", "segment", "drive_id"), sort="{vm}", reverse=True)
    rows_ = [Row(a, "d", "f", 1, None, None, (("vm", "vm-a"),)),
             Row(b, "d", "f", 1, None, None, (("vm", "vm-b"),))]  # fmt: skip
    assert [r.segment for r in view.select(rows_)[0]] == [b, a]  # sorted by it, Z to A
    assert view.keys().startswith("q quit  s sort: VM (Z to A)")
