"""The main job: python -m pmem_metrics demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmem_metrics import FIELDS

from .helpers import assert_aggregate_is_sum


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "demo", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_demo(
    tmp_path: Path, *args: str, nohup: bool = False
) -> tuple[subprocess.Popen[str], Path]:
    """The demo in the background, its stdout going to a file (returned with it).

    *nohup*: started by ``nohup`` (SIGHUP ignored, as inherited).
    """
    out = tmp_path / "stdout.json"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [*(["nohup"] if nohup else []), sys.executable, "-m", "pmem_metrics", "demo", *args],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
        )
    return proc, out


def wait_for_a_line(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> None:
    """Wait until the demo has written its first whole line."""
    deadline = time.monotonic() + timeout
    while b"\n" not in out.read_bytes():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no metrics line"
        time.sleep(0.01)


def check_lines(text: str, devices: int, stderr: str) -> list[dict]:
    # (Readers skip empty lines: the first line to a pipe starts with a newline.)
    lines = [line for line in text.splitlines() if line]
    objs = [json.loads(line) for line in lines]
    for obj in objs:
        assert next(iter(obj)) == "utc_timestamp_ms"
        body = {k: v for k, v in obj.items() if k != "utc_timestamp_ms"}
        assert sum(k.startswith("pmem_") for k in body) == devices
        assert_aggregate_is_sum(body)
    # Exactness: every increment the demo made was reported once, across all lines.
    made = int(re.search(r"(\d+) increments", stderr).group(1))
    assert sum(obj["pmem"][f] for obj in objs for f in FIELDS) == made
    assert made > 0 or devices == 0
    return objs


def test_demo_to_stdout(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--devices", "3", "--duration", "1", "--interval", "0.3")
    assert proc.returncode == 0, proc.stderr
    objs = check_lines(proc.stdout, 3, proc.stderr)
    # At 0.3, 0.6 and 0.9 s, and the final one (a beat a stalled machine missed is skipped).
    assert 2 <= len(objs) <= 4
    assert len(objs) == int(re.search(r"(\d+) metrics lines?", proc.stderr).group(1))
    stamps = [obj["utc_timestamp_ms"] for obj in objs]
    assert stamps == sorted(stamps)
    assert [k for k in objs[0] if k.startswith("pmem_")] == ["pmem_drv0", "pmem_drv1", "pmem_drv2"]


def test_demo_defaults_to_four_devices(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--duration", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert len(check_lines(proc.stdout, 4, proc.stderr)) == 1


def test_demo_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    proc = run_demo(
        tmp_path,
        "--devices",
        "2",
        "--duration",
        "0.5",
        "--interval",
        "0.2",
        "--metrics-path",
        str(path),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    check_lines(path.read_text(), 2, proc.stderr)


def test_demo_to_a_named_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = run_demo(
            tmp_path,
            "--devices",
            "2",
            "--duration",
            "0.5",
            "--interval",
            "0.2",
            "--metrics-path",
            str(fifo),
        )
        text = os.read(reader, 1 << 16).decode()
    finally:
        os.close(reader)
    assert proc.returncode == 0, proc.stderr
    check_lines(text, 2, proc.stderr)


def test_demo_named_pipe_without_reader_fails_cleanly(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    proc = run_demo(tmp_path, "--duration", "0.2", "--metrics-path", str(fifo))
    assert proc.returncode == 1
    assert "no reader" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    bad = (["--devices", "-1"], ["--interval", "0"], ["--duration", "x"])
    for args in (*bad, ["--prometheus-port", "70000"]):
        proc = run_demo(tmp_path, *args)
        assert proc.returncode == 2
        assert "error" in proc.stderr


def test_demo_with_20000_devices_on_a_few_threads(tmp_path: Path) -> None:
    proc, out = start_demo(tmp_path, "--devices", "20000", "--duration", "1", "--interval", "0.2")
    try:
        wait_for_a_line(proc, out)
        if os.path.isdir(f"/proc/{proc.pid}/task"):
            # The main thread and a small pool, not one per device.
            assert len(os.listdir(f"/proc/{proc.pid}/task")) <= 8
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    # Four beats and the final line, less any beat a slow line made it skip (a loaded machine).
    lines = len(check_lines(out.read_text(), 20000, err))
    assert 2 <= lines <= 5
    assert lines == int(re.search(r"(\d+) metrics lines?", err).group(1))


def test_demo_summary_states_the_measured_duration(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--devices", "2", "--duration", "0.2")
    assert proc.returncode == 0, proc.stderr
    measured = float(re.search(r"increments in (\d+\.\d\d) s", proc.stderr).group(1))
    assert measured >= 0.2


def interrupt_demo(tmp_path: Path, times: int) -> tuple[subprocess.Popen[str], str, str, int]:
    """Start a long demo, send it *times* SIGINTs after its first line; (proc, lines, err, ms)."""
    proc, out = start_demo(tmp_path, "--devices", "3", "--duration", "60", "--interval", "0.1")
    try:
        wait_for_a_line(proc, out)
        sent_ms = time.time_ns() // 1_000_000
        for _ in range(times):
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    return proc, out.read_text(), err, sent_ms


def test_demo_ctrl_c_writes_a_final_line_and_exits_130(tmp_path: Path) -> None:
    proc, text, err, sent_ms = interrupt_demo(tmp_path, 1)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    objs = check_lines(text, 3, err)  # the final line holds the last increments
    assert len(objs) == int(re.search(r"(\d+) metrics lines?", err).group(1))
    assert objs[-1]["utc_timestamp_ms"] >= sent_ms


def test_demo_second_ctrl_c_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc, _, err, _ = interrupt_demo(tmp_path, 2)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_demo_with_stdout_closed_fails_in_one_line(tmp_path: Path) -> None:
    demo = [sys.executable, "-m", "pmem_metrics", "demo", "--duration", "0.2"]
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *demo],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "stdout" in proc.stderr


@pytest.mark.parametrize("args", [["demo", "--duration", "0.2"], ["--cflags", "--libs"]])
def test_stdout_pipe_without_reader_fails_in_one_line(tmp_path: Path, args: list[str]) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pmem_metrics", *args],
            cwd=tmp_path,
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1, proc.stderr  # no "Exception ignored ..."
    assert "Broken pipe" in proc.stderr


def test_demo_with_worker_processes_sharing_a_segment(tmp_path: Path) -> None:
    """Three processes bump the devices; this one's lines report every increment once."""
    proc = run_demo(
        tmp_path, "--processes", "3", "--devices", "5", "--duration", "1", "--interval", "0.3"
    )
    assert proc.returncode == 0, proc.stderr
    assert "on 3 worker processes" in proc.stderr
    objs = check_lines(proc.stdout, 5, proc.stderr)  # exact: the lines sum to what they made
    assert 2 <= len(objs) <= 4
