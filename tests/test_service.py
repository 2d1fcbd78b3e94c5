"""Running as a service: SIGTERM and SIGHUP on the commands and in a library, the beat, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import pmem_metrics
from pmem_metrics.cli import _service

from .test_cli import check_lines, run_demo, start_demo, wait_for_a_line
from .test_export import PATIENCE, Exporter, eventually, make_segment, reported


def lines_in(*paths: Path) -> str:
    return "".join(p.read_text() for p in paths if p.exists())


def has_a_line(path: Path) -> bool:
    return path.exists() and "\n" in path.read_text().lstrip("\n")


# ---- demo -----------------------------------------------------------------------------------


def test_demo_sigterm_writes_a_final_line_and_exits_0(tmp_path: Path) -> None:
    proc, out = start_demo(tmp_path, "--devices", "3", "--duration", "60", "--interval", "0.1")
    try:
        wait_for_a_line(proc, out)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    assert "terminated" in err and "Traceback" not in err
    objs = check_lines(out.read_text(), 3, err)  # exact: the final line holds the last counts
    assert len(objs) == int(re.search(r"(\d+) metrics lines?", err).group(1))


@pytest.mark.parametrize("nohup", [False, True], ids=["started", "under-nohup"])
def test_demo_sighup_reopens_the_metrics_path(tmp_path: Path, nohup: bool) -> None:
    # Under nohup, SIGHUP ignored as inherited: a daemon's handlers do not depend on it.
    path, rotated = tmp_path / "metrics.json", tmp_path / "metrics.json.1"
    proc, _ = start_demo(
        tmp_path, "--devices", "2", "--duration", "60", "--interval", "0.05",
        "--metrics-path", str(path), nohup=nohup,
    )  # fmt: skip
    try:
        eventually(lambda: has_a_line(path), "a first line")
        os.rename(path, rotated)  # what logrotate does, then it sends SIGHUP
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: has_a_line(path), "a line in the new file")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    # Every increment once, across the rotated file and the new one.
    check_lines(lines_in(rotated, path), 2, err)


# ---- export ---------------------------------------------------------------------------------


def test_export_sigterm_writes_the_counts_since_the_last_line_and_exits_0(tmp_path: Path) -> None:
    seg, lines = tmp_path / "seg", tmp_path / "lines.json"
    registry = make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--interval", "3600", "--metrics-path",
                        str(lines), "--prometheus-port", "0")  # fmt: skip
    try:
        exporter.url()  # up and running; its first line is an hour away
        registry.alloc("drv0").cfg_fails.add(4)
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
    assert rc == 0, exporter.stderr
    assert reported(lines) == 3 + 4  # in the final line
    assert registry.read(pending=True)["drv0"]["cfg_fails"] == 0  # taken, and kept nowhere else


def test_export_sighup_reopens_the_metrics_path(tmp_path: Path) -> None:
    seg, lines, rotated = tmp_path / "seg", tmp_path / "lines.json", tmp_path / "lines.json.1"
    registry = make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--interval", "0.05",
                        "--metrics-path", str(lines))  # fmt: skip
    try:
        eventually(lambda: reported(lines) == 3, "the first counts in a line")
        os.rename(lines, rotated)
        exporter.proc.send_signal(signal.SIGHUP)
        eventually(lambda: lines.exists(), "the path opened again")
        registry.alloc("drv0").cfg_fails.add(5)
        eventually(lambda: reported(lines) == 5, "later counts in the new file")
        exporter.proc.send_signal(signal.SIGTERM)
        rc = exporter.proc.wait(PATIENCE)
    finally:
        exporter.stop()
    assert rc == 0, exporter.stderr
    assert reported(rotated) == 3 and reported(lines) == 5


# ---- a library user: METRICS.handle_signals() ----------------------------------------------

SERVICE = """
import sys, time
import pmem_metrics as p
m = p.PmemMetricsPerDevice.alloc("drv0")
p.METRICS.init(sys.argv[1])
p.METRICS.handle_signals()
p.METRICS.start_periodic(0.05)
print("ready", flush=True)
try:
    while True:
        m.cfg_fails.inc()
        time.sleep(0.001)
finally:
    print(m.cfg_fails.count(), file=sys.stderr, flush=True)
"""


def test_a_library_user_gets_sigterm_and_sighup_from_one_call(tmp_path: Path) -> None:
    path, rotated = tmp_path / "metrics.json", tmp_path / "metrics.json.1"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVICE), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        eventually(lambda: has_a_line(path), "a first line")
        os.rename(path, rotated)
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: has_a_line(path), "a line in the new file")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    counted = int(err.split()[-1])
    objs = [json.loads(line) for line in lines_in(rotated, path).splitlines() if line]
    assert sum(o["pmem"]["cfg_fails"] for o in objs) == counted  # the final line at exit too


def test_reopen_without_a_path_changes_nothing_and_before_init_is_refused() -> None:
    import io

    w = pmem_metrics.MetricsWriter()
    with pytest.raises(pmem_metrics.WriterStateError):
        w.reopen()
    w.init(io.StringIO())
    assert w.reopen() is False


def test_reopen_that_fails_keeps_the_old_destination(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    w = pmem_metrics.MetricsWriter()
    w.init(d / "m.json")
    os.rename(d, tmp_path / "gone")  # the path's directory is no more
    with pytest.raises(pmem_metrics.MetricsDestinationError, match=r"m\.json"):
        w.reopen()
    assert w.write()  # still to the file it had
    assert "pmem" in json.loads((tmp_path / "gone" / "m.json").read_text())


# ---- the beat -------------------------------------------------------------------------------


def test_missed_beats_are_skipped_not_written_in_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(_service, "time", SimpleNamespace(monotonic=lambda: clock.now))

    class Asleep:
        def sleep_until(self, deadline: float) -> bool:
            clock.now = max(clock.now, deadline)
            return False

    started: list[float] = []

    def write() -> bool:
        started.append(clock.now)
        if len(started) == 1:
            clock.now += 3.5  # the first line takes 3.5 intervals: beats 2, 3 and 4 are missed
        return True

    lines = _service.write_lines(Asleep(), 0.0, 1.0, 10.0, write)  # type: ignore[arg-type]
    assert started == [1.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert lines == 6


def test_an_interval_below_the_floor_is_refused_naming_the_option(tmp_path: Path) -> None:
    for command in (["demo"], ["export", "--shm", str(tmp_path / "seg")]):
        proc = subprocess.run(
            [sys.executable, "-m", "pmem_metrics", *command, "--interval", "0.001"],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        assert proc.returncode == 2
        error = proc.stderr.splitlines()[-1]
        assert f"python -m pmem_metrics {command[0]}: error: argument --interval" in error
        assert "0.01" in error


# ---- errors, usage, version -----------------------------------------------------------------


def test_an_address_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_demo(tmp_path, "--duration", "5", "--prometheus-port", str(port))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "--prometheus-port" in proc.stderr
    assert proc.stdout == ""  # it stopped before a line


def test_an_unknown_host_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--duration", "5", "--prometheus-port", "0",
                    "--prometheus-addr", "no-such-host.invalid")  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "no-such-host.invalid:0" in proc.stderr and "--prometheus-addr" in proc.stderr


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_address_is_written_in_brackets(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--duration", "0.1", "--prometheus-port", "0",
                    "--prometheus-addr", "::1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"http://\[::1\]:\d+/metrics", proc.stderr), proc.stderr


def test_a_commands_bad_option_gets_that_commands_usage(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m pmem_metrics demo ")
    assert proc.stderr.splitlines()[-1].endswith("unrecognized arguments: --frobnicate")


def test_version_and_the_console_script_each_named_as_called() -> None:
    script = Path(sys.executable).with_name("pmem-metrics")
    for argv, name in (
        ([sys.executable, "-m", "pmem_metrics"], "python -m pmem_metrics"),
        ([str(script)], "pmem-metrics"),
    ):
        proc = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{name} {pmem_metrics.__version__}\n"
        proc = subprocess.run([*argv, "export"], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert proc.stderr.startswith(f"{name} export: give the segments to read"), proc.stderr


def test_every_command_has_a_description_and_readable_placeholders() -> None:
    for command in ("demo", "export"):
        proc = subprocess.run(
            [sys.executable, "-m", "pmem_metrics", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0
        usage, _, rest = proc.stdout.partition("\n\n")
        assert rest.split("\n\n")[0].strip(), "no description"
        assert not re.search(r"[A-Z]+_[A-Z_]+", usage), usage  # not argparse's METRICS_PATH


def test_signals_restores_the_handlers_it_replaced() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with _service.Signals(on_hup=lambda: None) as signals:
        assert signal.getsignal(signal.SIGTERM) == signals._handle
    assert {s: signal.getsignal(s) for s in before} == before
