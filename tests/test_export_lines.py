"""The exporter's metrics lines of several segments: a line a segment a beat, each labelled.

Segments are made and counted in child processes (a segment is a file: which
process made it does not matter), so the process that writes the lines holds
nothing of them but what it opened.  Waits are bounded polls, never timing
assertions; the test that a gone VM gets exactly one final line drives the
exporter's own objects beat by beat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pmem_metrics import FIELDS, MetricsWriter
from pmem_metrics.cli._lines import Lines
from pmem_metrics.cli._segment_lines import AllLines
from pmem_metrics.fleet import Fleet

from .test_export import PATIENCE, Exporter, eventually, scrape
from .test_export_faults import corrupt

VMS = {"a": 3, "b": 5, "c": 7}
"""Each VM's name, and the cfg_fails its device ``d`` counts at first."""


def count(path: Path, n: int, create: bool = False) -> None:
    """Add *n* to ``cfg_fails`` of device ``d`` in the segment at *path*, from a child process."""
    code = (
        "import sys, pmem_metrics as p\n"
        "s = p.open_segment(sys.argv[1], capacity=16, create=sys.argv[3] == '1')\n"
        "s.alloc('d').cfg_fails.add(int(sys.argv[2]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(path), str(n), "1" if create else "0"],
        check=True, timeout=PATIENCE,
    )  # fmt: skip


def make_vms(root: Path) -> dict[str, Path]:
    """A segment per VM at ``root/<vm>/pmem.seg``, each counted by its own process."""
    paths = {}
    for vm, n in VMS.items():
        (root / vm).mkdir()
        paths[vm] = root / vm / "pmem.seg"
        count(paths[vm], n, create=True)
    return paths


def parsed(lines: Path) -> list[dict]:
    """The whole lines in *lines*, parsed."""
    if not lines.exists():
        return []
    text = lines.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in text if line.endswith("\n")]


def totals(lines: Path) -> dict[str, int]:
    """The cfg_fails the lines reported, by their labels' ``segment``."""
    out: dict[str, int] = {}
    for line in parsed(lines):
        segment = line["labels"]["segment"]
        out[segment] = out.get(segment, 0) + line["pmem"]["cfg_fails"]
    return out


def firecracker_body(cfg_fails: int) -> str:
    """A line's flush object after its head, for device ``d`` with this many cfg_fails."""
    fields = ",".join(f'"{f}":{cfg_fails if f == "cfg_fails" else 0}' for f in FIELDS)
    return f'"pmem_d":{{{fields}}},"pmem":{{{fields}}}}}\n'


def test_lines_of_a_pattern_carry_each_vms_label_and_exact_counts_and_a_gone_vm_stops(
    tmp_path: Path,
) -> None:
    paths = make_vms(tmp_path)
    lines = tmp_path / "lines.json"
    exporter = Exporter(tmp_path, "--shm-glob", str(tmp_path / "{vm}" / "pmem.seg"),
                        "--interval", "0.05", "--metrics-path", str(lines))  # fmt: skip
    try:
        want = {str(p): VMS[vm] for vm, p in paths.items()}
        eventually(lambda: totals(lines) == want, "every VM's counts in its lines")
        count(paths["b"], 6)  # b's last counts, then it exits: its file goes
        paths["b"].unlink()
        paths["b"].with_name("pmem.seg.lock").unlink()
        want[str(paths["b"])] += 6
        eventually(lambda: totals(lines) == want, "b's last counts in a line")
        seen = len(parsed(lines))
        eventually(lambda: len(parsed(lines)) >= seen + 3 * 3, "three beats more")
        gone = [k for k, line in enumerate(parsed(lines)) if line["labels"]["vm"] == "b"][-1]
        eventually(lambda: len(parsed(lines)) > gone + 20, "more beats after b's last line")
        fds = [os.readlink(f"/proc/{exporter.proc.pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{exporter.proc.pid}/fd")]  # fmt: skip
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err
    assert not any(str(paths["b"]) in fd for fd in fds), fds  # let go: no descriptor of it
    after = [line["labels"]["vm"] for line in parsed(lines)[gone + 1 :]]
    assert "b" not in after and {"a", "c"} <= set(after)
    assert totals(lines) == want  # each count once, the final lines at the stop included
    for raw in lines.read_text().splitlines(keepends=True):
        line = json.loads(raw)
        vm, segment = line["labels"]["vm"], line["labels"]["segment"]
        assert segment == str(paths[vm]) and list(line) == [
            "utc_timestamp_ms", "labels", "pmem_d", "pmem",
        ]  # fmt: skip
        labels = json.dumps({"segment": segment, "vm": vm}, separators=(",", ":"))
        head = f'{{"utc_timestamp_ms":{line["utc_timestamp_ms"]},"labels":{labels},'
        assert raw == head + firecracker_body(line["pmem"]["cfg_fails"])  # Firecracker's, but
    assert all(line.startswith("export: ") for line in exporter.stderr), exporter.stderr


class Beats:
    """The exporter's own objects writing lines of the VMs under *tmp_path*, a beat at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "lines.json"
        writer = MetricsWriter()
        writer.init(str(self.path))
        self.fleet = Fleet([str(tmp_path / "{vm}" / "pmem.seg")], readonly=False, rescan=0)
        self.lines = Lines("export", AllLines({}, self.fleet, writer, print), None, stdout=False)

    def beat(self) -> dict[str, int]:
        """One beat: each line's VM and its ``cfg_fails`` diff."""
        before = len(parsed(self.path))
        self.lines.write()
        return {
            line["labels"]["vm"]: line["pmem"]["cfg_fails"] for line in parsed(self.path)[before:]
        }


def test_a_vm_removed_between_beats_gets_exactly_one_final_line_then_is_let_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exporter's own objects, driven a beat at a time: nothing but the file changes."""
    paths = make_vms(tmp_path)
    beats = Beats(tmp_path)
    beat = beats.beat

    def holds(path: Path) -> bool:
        return any(str(path) in os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir(
            "/proc/self/fd") if os.path.islink(f"/proc/self/fd/{fd}"))  # fmt: skip

    assert beat() == VMS
    assert beat() == {"a": 0, "b": 0, "c": 0}
    count(paths["b"], 6)  # its last counts, then it exits
    count(paths["c"], 2)
    paths["b"].unlink()
    paths["b"].with_name("pmem.seg.lock").unlink()
    assert holds(paths["b"])
    assert beat() == {"a": 0, "b": 6, "c": 2}  # b's final line, read from the file still open
    assert not holds(paths["b"])  # then let go
    for _ in range(3):
        assert beat() == {"a": 0, "c": 0}
    assert [m.path for m in beats.fleet.members()] == [str(paths["a"]), str(paths["c"])]
    assert beats.lines.written == 3 + 3 + 3 + 3 * 2
    assert capsys.readouterr().out == ""  # a VM that exits is no news


def test_several_shm_give_a_line_each_and_one_shm_gives_firecrackers_line(tmp_path: Path) -> None:
    paths = make_vms(tmp_path)
    lines, one = tmp_path / "lines.json", tmp_path / "one.json"
    args = [a for vm in ("a", "b") for a in ("--shm", str(paths[vm]))]
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", *args, "--duration", "0",
         "--metrics-path", str(lines)],
        cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = [(line["labels"], line["pmem"]["cfg_fails"]) for line in parsed(lines)]
    assert got == [({"segment": str(paths["a"])}, 3), ({"segment": str(paths["b"])}, 5)]
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(paths["c"]),
         "--duration", "0", "--metrics-path", str(one)],
        cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (raw,) = one.read_text().splitlines(keepends=True)
    stamp = json.loads(raw)["utc_timestamp_ms"]
    assert raw == f'{{"utc_timestamp_ms":{stamp},' + firecracker_body(7)  # no labels: as before


def test_lines_and_prometheus_of_one_pattern_both_read_every_vm_whoever_opens_first(
    tmp_path: Path,
) -> None:
    """A scrape opens a new VM's segment before the lines do (a beat is an hour away here):
    the lines, which must open it for writing, still get it, and so does the scrape."""
    paths = make_vms(tmp_path)
    lines = tmp_path / "lines.json"
    exporter = Exporter(tmp_path, "--shm-glob", str(tmp_path / "{vm}" / "pmem.seg"),
                        "--prometheus-port", "0", "--interval", "3600",
                        "--metrics-path", str(lines))  # fmt: skip
    try:
        counts, up = scrape(exporter.url())
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err
    assert counts == {(str(p), "d"): float(VMS[vm]) for vm, p in paths.items()}
    assert up == dict.fromkeys(map(str, paths.values()), 1.0)
    assert totals(lines) == {str(p): VMS[vm] for vm, p in paths.items()}, exporter.stderr


def test_a_segment_whose_lines_fail_is_said_once_and_the_others_lines_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One VM's segment corrupt for three beats: its lines fail (said once, its counts kept),
    the other VMs' go out at every beat, and its next line carries what it counted meanwhile."""
    paths = make_vms(tmp_path)
    beats = Beats(tmp_path)
    beat = beats.beat

    assert beat() == VMS
    count(paths["b"], 4)
    with corrupt(paths["b"]):
        for _ in range(3):
            assert beat() == {"a": 0, "c": 0}
    assert beat() == {"a": 0, "b": 4, "c": 0}
    err = capsys.readouterr().err.splitlines()
    b = repr(str(paths["b"]))
    assert len(err) == 2, err  # once when b's lines start failing, once when they go again
    assert err[0].startswith("export: a metrics line failed (") and "corrupt" in err[0]
    assert err[0].endswith(f"its counts stay in the segment {b} for its next flush, whoever "
                           "makes it; the next beat tries again")  # fmt: skip
    assert err[1] == f"export: metrics lines go out again from {b}"
