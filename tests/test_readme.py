"""The examples of README.md and docs/ run as written, each in a fresh interpreter and folder.

A newcomer pastes them into a file and runs it: each section's first
```python block is that file here, run with this interpreter (the installed
package, not the checkout's folder) in a temporary working directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pmem_metrics import FIELDS

from .helpers import REPO, tool

DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")))
"""Where a newcomer finds examples: the README and every page of docs/."""

RUN = {
    ("README.md", "## Using it from Python"): "test_using_it_from_python",
    ("docs/python.md", "## Reading the counts without taking them"): "test_reading_the_counts",
    ("docs/python.md", "## Writing lines periodically"): "test_writing_lines_periodically",
    ("docs/python.md", "## Prometheus"): "test_prometheus",
    ("docs/python.md", "### The fast endpoint (no prometheus_client needed)"): "test_the_fast_…",
    ("docs/python.md", "## OpenTelemetry"): "test_opentelemetry",
    ("docs/python.md", "## Devices that come and go (hot-unplug)"): "test_devices_that_come…",
    ("docs/operating.md", "## Watching the counts: `top`"): "test_watching_the_counts_with_top",
    ("docs/shared-segments.md", "## A segment"): "test_a_segment_shared_by_processes",
}
"""Each section with a ```python (or a runnable ```sh) block, and the test here that runs it."""

ELSEWHERE = {
    ("README.md", "## Quick start"): ".ci/run runs both commands, as written",
    ("README.md", "## Using it from C"): ".ci/readme_c.py builds and runs them, as written",
    ("docs/development.md", "## Development"): "CI's own steps (.ci/run)",
    ("docs/development.md", "### Release wheels"): ".ci/wheel",
}
"""Sections whose ```sh blocks CI runs by other means."""


def sections_with_code() -> set[tuple[str, str]]:
    """(page, heading) of every section of the docs holding a ```python or ```sh block."""
    found = set()
    for page in DOCS:
        heading, fenced = "", False
        for line in (REPO / page).read_text().splitlines():
            if line.startswith("```"):
                if not fenced and line.strip() in ("```python", "```sh"):
                    found.add((page, heading))
                fenced = not fenced
            elif not fenced and line.startswith("#"):
                heading = line
    return found


def test_every_example_in_the_docs_is_run() -> None:
    assert sections_with_code() == set(RUN) | set(ELSEWHERE)


def example(heading: str, page: str = "README.md") -> str:
    """The first ```python block under *heading* of *page*, up to the next heading."""
    lines = (REPO / page).read_text().splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    found = re.search(r"^```python\n(.*?)^```$", "\n".join(lines[start:end]) + "\n", re.S | re.M)
    assert found, f"{page}: no ```python block under {heading!r}"
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
    code = example("## Reading the counts without taking them", "docs/python.md")
    out = run(code, tmp_path).splitlines()
    counts = {**dict.fromkeys(FIELDS, 0), "cfg_fails": 3}
    read, pending, found, one, flushed = out
    assert read == str({"drv0": counts}) and pending == read
    assert found == "['drv0'] True None"
    assert one == f"{counts} {list(FIELDS)}"
    assert flushed == "3"


def test_writing_lines_periodically(tmp_path: Path) -> None:
    out = run(example("## Writing lines periodically", "docs/python.md"), tmp_path)
    text = (tmp_path / "vm-1.metrics").read_text()
    assert out == text
    records = [json.loads(line) for line in text.splitlines()]
    assert records  # the final line at least; how many beats fell in between is the machine's
    assert all(r["id"] == "vm-1" and r["properties"] == {"region": "eu"} for r in records)
    assert sum(r["pmem_drv0"]["queue_event_count"] for r in records) == 5


def test_prometheus(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    code = example("## Prometheus", "docs/python.md")
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
    code = example("### The fast endpoint (no prometheus_client needed)", "docs/python.md")
    out = run(code, tmp_path)
    assert out.splitlines() == [
        "['# HELP pmem_activate_fails Number of times when activate failed on a pmem device.', "
        "'# TYPE pmem_activate_fails counter', "
        "'pmem_activate_fails_total{drive_id=\"drv0\"} 1.0'] True"
    ]


def test_opentelemetry(tmp_path: Path) -> None:
    out = run(example("## OpenTelemetry", "docs/python.md"), tmp_path).splitlines()
    assert out == [
        f"pmem.{f} {{event}} {{'pmem.drive_id': 'drv0'}} {int(f == 'activate_fails')}"
        for f in FIELDS
    ]


def test_devices_that_come_and_go(tmp_path: Path) -> None:
    code = example("## Devices that come and go (hot-unplug)", "docs/python.md")
    out = run(code, tmp_path).splitlines()
    assert out == ["2", "False", "0"]


def test_watching_the_counts_with_top(tmp_path: Path) -> None:
    lines = (REPO / "docs" / "operating.md").read_text().splitlines()
    start = lines.index("## Watching the counts: `top`")
    text = "\n".join(lines[start:])
    script, shown = re.findall(r"^```(?:sh)?\n(.*?)^```$", text, re.S | re.M)[:2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(2):  # run twice, as a reader may: the same table, not twice the counts
        r = subprocess.run(
            ["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env=env,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout == shown  # as the page shows it


def test_a_segment_shared_by_processes(tmp_path: Path) -> None:
    code = example("## A segment", "docs/shared-segments.md")
    path = re.search(r'attach\("([^"]+)"\)', code)
    assert path, code
    seg = str(tmp_path / "vm-1.pmem")  # the test's own folder, not the machine's /dev/shm
    run(code.replace(path.group(1), seg) + "m.cfg_fails.add(2)\n", tmp_path)
    # Another process attached to it sees the same counters.
    other = f"import pmem_metrics as p\np.attach({seg!r})\nprint(p.read()['drv0']['cfg_fails'])\n"
    assert run(other, tmp_path).split() == ["2"]


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    systemd_analyze = tool("systemd-analyze", "systemd")
    lines = (REPO / "docs" / "operating.md").read_text().splitlines()
    start = lines.index("## A systemd unit")
    unit = re.search(r"^```ini\n(.*?)^```$", "\n".join(lines[start:]) + "\n", re.S | re.M)
    assert unit, "docs/operating.md: no ```ini block under its systemd unit"
    text = unit.group(1)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    # The unit as written, its program where this machine has it (the path is the reader's).
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exec_start
    script = shutil.which("pmem-metrics") or str(Path(sys.executable).with_name("pmem-metrics"))
    (tmp_path / "pmem-metrics.service").write_text(text.replace(exec_start.group(1), script))
    r = subprocess.run(
        [systemd_analyze, "verify", str(tmp_path / "pmem-metrics.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # User= names a user this machine may not have: that is the reader's to create.
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and "pmem-agent" not in line and "pmem-metrics.service" in line
    ]
    assert not problems, r.stdout + r.stderr
