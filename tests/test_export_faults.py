"""The exporter as an agent that runs for months: a passing fault never ends it, a stop always does.

A flush lock held past the bound, a segment that is corrupt for a while, a
line destination whose reader pauses: each fails lines (said once on stderr,
and once when lines go out again), never the exporter, and the counts of the
failed lines come in the next one.  A scrape of a segment that cannot be read
is said once, not once a scrape.  SIGTERM ends it with status 0 even while its
final line cannot go out; a second signal ends it at once.  Every wait is a
bounded poll: the faults last for a count of scrapes, never for a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pmem_metrics import open_segment

from .pipes import FifoReader
from .segment_reader import OFF_HIGH
from .test_export import PATIENCE, Exporter, eventually, make_segment, reported, scrape

FLUSH_LOCK_BYTE = 1
"""The flush lock's byte in the lock file (docs/segment-format.md, "Locks")."""

SCRAPES = 20
"""Scrapes the tests make while a fault lasts: the exporter keeps serving, and fails lines."""

FAILED = "export: a metrics line failed"
RECOVERED = "export: metrics lines go out again"
SEGMENT_UP = "can be read again"


@contextmanager
def flush_lock_held(seg: Path) -> Iterator[None]:
    """The segment's flush lock, held here as a process stopped inside a flush would hold it."""
    fd = os.open(f"{seg}.lock", os.O_RDWR)
    try:
        flock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, FLUSH_LOCK_BYTE, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock)
        yield
    finally:
        os.close(fd)  # the kernel drops the lock with its last descriptor


@contextmanager
def corrupt(seg: Path) -> Iterator[None]:
    """The segment's ``high`` past its capacity for a while: every read and flush is EBADMSG."""
    fd = os.open(seg, os.O_RDWR)
    try:
        good = os.pread(fd, 8, OFF_HIGH)
        os.pwrite(fd, struct.pack("=Q", 1 << 40), OFF_HIGH)
        yield
    finally:
        os.pwrite(fd, good, OFF_HIGH)
        os.close(fd)


def said(exporter: Exporter, text: str) -> int:
    return sum(text in line for line in exporter.stderr)


def test_a_flush_lock_held_past_the_bound_fails_lines_not_the_exporter(tmp_path: Path) -> None:
    seg, lines = tmp_path / "seg", tmp_path / "lines.json"
    registry = make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--interval", "0.01", "--metrics-path",
                        str(lines), "--prometheus-port", "0",
                        env={"PMEM_METRICS_SEGMENT_WAIT_MS": "50"})  # fmt: skip
    try:
        url = exporter.url()
        eventually(lambda: reported(lines) == 3, "the first counts in a line")
        with flush_lock_held(seg):
            registry.alloc("drv0").cfg_fails.add(4)
            exporter.until(FAILED)
            for _ in range(SCRAPES):  # Prometheus stays up meanwhile
                assert scrape(url) == ({(str(seg), "drv0"): 7.0}, {str(seg): 1.0})
        exporter.until(RECOVERED)
        eventually(lambda: reported(lines) == 3 + 4, "the held counts in the next line")
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
    assert rc == 0, exporter.stderr
    assert said(exporter, FAILED) == 1 and said(exporter, RECOVERED) == 1, exporter.stderr
    (failed,) = (line for line in exporter.stderr if FAILED in line)
    assert "another process held its lock past the bound" in failed
    assert reported(lines) == 3 + 4  # each count once
    assert "Traceback" not in "".join(exporter.stderr)


def test_a_segment_corrupt_for_a_while_is_said_once_by_lines_and_by_scrapes(
    tmp_path: Path,
) -> None:
    seg, lines = tmp_path / "seg", tmp_path / "lines.json"
    registry = make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--interval", "0.01", "--metrics-path",
                        str(lines), "--prometheus-port", "0")  # fmt: skip
    try:
        url = exporter.url()
        eventually(lambda: reported(lines) == 3, "the first counts in a line")
        registry.alloc("drv0").cfg_fails.add(4)
        with corrupt(seg):
            exporter.until(FAILED)
            for _ in range(SCRAPES):
                assert scrape(url) == ({}, {str(seg): 0.0})
        assert scrape(url) == ({(str(seg), "drv0"): 7.0}, {str(seg): 1.0})
        for text in (RECOVERED, SEGMENT_UP):  # in either order
            if not said(exporter, text):
                exporter.until(text)
        eventually(lambda: reported(lines) == 3 + 4, "the counts of the failed lines")
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
    assert rc == 0, exporter.stderr
    assert said(exporter, FAILED) == 1 and said(exporter, RECOVERED) == 1, exporter.stderr
    down = f"pmem_metrics: cannot read segment {str(seg)!r}: "
    assert said(exporter, down) == 1 and said(exporter, SEGMENT_UP) == 1, exporter.stderr
    assert "a truncated or corrupt segment" in "".join(exporter.stderr)
    assert reported(lines) == 3 + 4
    assert "Traceback" not in "".join(exporter.stderr)


# ---- a named pipe: a reader that pauses, and one that never reads ------------------------


def fill(fifo: Path) -> int:
    """A writer of *fifo* that filled it with empty lines (which readers skip); its descriptor."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(fd, b"\n" * 4096)
    except BlockingIOError:
        return fd


def whole_lines(text: str) -> int:
    """The cfg_fails of the lines in *text* that parse (a cut line's fragment does not)."""
    total = 0
    for line in text.splitlines():
        try:
            total += json.loads(line)["pmem"]["cfg_fails"]
        except ValueError:
            pass
    return total


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_pipe_whose_reader_pauses_fails_lines_not_the_exporter(
    tmp_path: Path, fifo: Path
) -> None:
    registry = make_segment(tmp_path / "seg", drv0=3)
    reader = FifoReader(fifo)  # before the exporter: it must find a reader
    exporter = Exporter(tmp_path, "--shm", str(tmp_path / "seg"), "--interval", "0.01",
                        "--metrics-path", str(fifo), "--write-timeout", "0.05",
                        "--prometheus-port", "0")  # fmt: skip
    filler = -1
    try:
        url = exporter.url()
        eventually(lambda: whole_lines(reader.text()) == 3, "the first counts through the pipe")
        reader.pause()
        filler = fill(fifo)  # the pipe is full
        registry.alloc("drv0").cfg_fails.add(4)
        exporter.until(FAILED)
        for _ in range(SCRAPES):
            assert scrape(url)[1] == {str(tmp_path / "seg"): 1.0}
        reader.resume()
        eventually(lambda: whole_lines(reader.text()) == 3 + 4, "the failed lines' counts")
        exporter.until(RECOVERED)
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
        if filler >= 0:
            os.close(filler)
        reader.read_to_end()  # every writer is gone
        reader.close()
    assert rc == 0, exporter.stderr
    assert said(exporter, FAILED) == 1 and said(exporter, RECOVERED) == 1, exporter.stderr
    assert "did not take the line in time" in "".join(exporter.stderr)
    assert whole_lines(reader.text()) == 3 + 4  # each count once, the final line included
    assert "Traceback" not in "".join(exporter.stderr)


def start_stuck(tmp_path: Path, fifo: Path, write_timeout: str) -> tuple[Exporter, int, int]:
    """An exporter whose lines go to *fifo*, full and never read; its reader and filler."""
    make_segment(tmp_path / "seg", drv0=3)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    filler = fill(fifo)
    exporter = Exporter(tmp_path, "--shm", str(tmp_path / "seg"), "--interval", "3600",
                        "--metrics-path", str(fifo), "--write-timeout", write_timeout,
                        "--prometheus-port", "0")  # fmt: skip
    exporter.url()  # up, its signal handlers in place; its first line an hour away
    return exporter, reader, filler


KEPT = "its counts stay in the segment"


def test_sigterm_exits_0_when_the_final_line_cannot_go_out(tmp_path: Path, fifo: Path) -> None:
    exporter, reader, filler = start_stuck(tmp_path, fifo, "0.2")
    try:
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
        os.close(filler)
        os.close(reader)
    assert rc == 0, exporter.stderr
    final = [line for line in exporter.stderr if "final line" in line]
    assert len(final) == 1 and KEPT in final[0], exporter.stderr
    assert "did not take the line in time" in final[0]
    assert "Traceback" not in "".join(exporter.stderr)
    kept = open_segment(tmp_path / "seg").flush_metrics()
    assert kept["pmem_drv0"]["cfg_fails"] == 3  # as said


@pytest.mark.parametrize(("second", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_second_signal_abandons_a_final_line_that_hangs(
    tmp_path: Path, fifo: Path, second: int, status: int
) -> None:
    exporter, reader, filler = start_stuck(tmp_path, fifo, "3600")  # it would wait an hour
    try:
        exporter.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + PATIENCE
        while True:  # again until it is gone: two signals close together may count as one
            exporter.proc.send_signal(second)
            try:
                rc = exporter.proc.wait(0.2)
                break
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, "a second signal did not end it"
    finally:
        exporter.stop()
        os.close(filler)
        os.close(reader)
    assert rc == status, exporter.stderr
    second = [line for line in exporter.stderr if "a second signal" in line]
    assert len(second) == 1 and KEPT in second[0], exporter.stderr
    assert "without a final line" in second[0]
    assert "Traceback" not in "".join(exporter.stderr)
    assert open_segment(tmp_path / "seg").flush_metrics()["pmem_drv0"]["cfg_fails"] == 3


def test_a_broken_pipe_on_stdout_still_ends_it_in_one_line(tmp_path: Path) -> None:
    """Nobody can read stdout again: that is no passing fault."""
    make_segment(tmp_path / "seg", drv0=3)
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(tmp_path / "seg"),
             "--interval", "0.01"],
            cwd=tmp_path, stdout=w, stderr=subprocess.PIPE, text=True, timeout=PATIENCE,
        )  # fmt: skip
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Broken pipe" in proc.stderr, proc.stderr
