"""README.md's Python examples run as written, each in a fresh interpreter in an empty folder.

A newcomer pastes them into a file and runs it: each section's first
```python block is that file here, run with this interpreter (the installed
package, not the checkout's folder) in a temporary working directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pmem_metrics import FIELDS

from .helpers import REPO


def example(heading: str) -> str:
    """The first ```python block under *heading*, up to the next heading of any level."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    found = re.search(r"^```python\n(.*?)^```$", "\n".join(lines[start:end]) + "\n", re.S | re.M)
    assert found, f"README.md: no ```python block under {heading!r}"
    return found.group(1)


def run(code: str, cwd: Path) -> str:
    """Run *code* as a script in *cwd*; its stdout, after checking it exited 0."""
    (cwd / "example.py").write_text(code)
    r = subprocess.run(
        [sys.executable, "example.py"], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_using_it_from_python(tmp_path: Path) -> None:
    out = run(example("## Using it from Python"), tmp_path).splitlines()
    count, diff, flushed, flushed_json = out
    assert (count, diff) == ("5", "5")
    assert "'pmem_drv0': {'activate_fails': 1," in flushed
    assert json.loads(flushed_json)["pmem_drv0"] == dict.fromkeys(FIELDS, 0)
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["pmem_drv0"]["activate_fails"] == 1  # the increment after the two flushes
    assert record["pmem"] == record["pmem_drv0"]


def test_reading_the_counts_without_taking_them(tmp_path: Path) -> None:
    out = run(example("### Reading the counts without taking them"), tmp_path).splitlines()
    counts = {**dict.fromkeys(FIELDS, 0), "cfg_fails": 3}
    read, pending, found, one, flushed = out
    assert read == str({"drv0": counts}) and pending == read
    assert found == "['drv0'] True None"
    assert one == f"{counts} {list(FIELDS)}"
    assert flushed == "3"


def test_writing_lines_periodically(tmp_path: Path) -> None:
    out = run(example("### Writing lines periodically"), tmp_path)
    text = (tmp_path / "vm-1.metrics").read_text()
    assert out == text
    records = [json.loads(line) for line in text.splitlines()]
    assert records  # the final line at least; how many beats fell in between is the machine's
    assert all(r["id"] == "vm-1" and r["properties"] == {"region": "eu"} for r in records)
    assert sum(r["pmem_drv0"]["queue_event_count"] for r in records) == 5


def test_prometheus(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    code = example("### Prometheus")
    (port,) = re.findall(r"start_http_server\((\d+)", code)
    with socket.socket() as s:  # the example serves on a fixed port: skip if it is taken
        # As its server binds (SO_REUSEADDR): the last run's closed connections do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            pytest.skip(f"port {port} is in use on this machine")
    out = run(code, tmp_path).splitlines()
    assert 'pmem_activate_fails_total{drive_id="drv0"} 1.0' in out
    for field in FIELDS:
        assert f"# TYPE pmem_{field}_total counter" in out
        assert any(line.startswith(f'pmem_{field}_total{{drive_id="drv0"}} ') for line in out)


def test_the_fast_prometheus_endpoint(tmp_path: Path) -> None:
    out = run(example("#### The fast endpoint (no prometheus_client needed)"), tmp_path)
    assert out.splitlines() == [
        "['# HELP pmem_activate_fails Number of times when activate failed on a pmem device.', "
        "'# TYPE pmem_activate_fails counter', "
        "'pmem_activate_fails_total{drive_id=\"drv0\"} 1.0'] True"
    ]


def test_opentelemetry(tmp_path: Path) -> None:
    out = run(example("### OpenTelemetry"), tmp_path).splitlines()
    assert out == [
        f"pmem.{f} {{event}} {{'pmem.drive_id': 'drv0'}} {int(f == 'activate_fails')}"
        for f in FIELDS
    ]


def test_devices_that_come_and_go(tmp_path: Path) -> None:
    out = run(example("## Devices that come and go (hot-unplug)"), tmp_path).splitlines()
    assert out == ["2", "False", "0"]


def test_watching_the_counts_with_top(tmp_path: Path) -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("### Watching the counts: `top`")
    text = "\n".join(lines[start:])
    script, shown = re.findall(r"^```(?:sh)?\n(.*?)^```$", text, re.S | re.M)[:2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(
        ["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == shown  # as the README shows it
