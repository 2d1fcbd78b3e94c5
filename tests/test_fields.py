"""The field list is defined once, in C: a fifth counter is one line there and none in Python."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import pmem_metrics as p
from pmem_metrics import FIELD_DOCS, FIELDS
from pmem_metrics.exposition import render
from pmem_metrics.prometheus import register

from .helpers import REPO

FIFTH = '\tX(flush_fails, "Number of times a test-only fifth counter was bumped.") \\\n'


def test_field_docs_come_from_c() -> None:
    assert list(FIELD_DOCS) == list(FIELDS)
    assert FIELD_DOCS["activate_fails"] == "Number of times when activate failed on a pmem device."
    assert all(doc.endswith(".") for doc in FIELD_DOCS.values())


@pytest.fixture(scope="module")
def five_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with the one line added, built by its Makefile, then CFFI."""
    tmp_path = tmp_path_factory.mktemp("five")
    shutil.copytree(REPO / "csrc", tmp_path / "csrc", ignore=shutil.ignore_patterns("build"))
    shutil.copy(REPO / "VERSION", tmp_path / "VERSION")  # the Makefile's soname comes from it
    shutil.copytree(
        REPO / "pmem_metrics",
        tmp_path / "pmem_metrics",
        ignore=shutil.ignore_patterns("lib", "include", "_ffi.*", "__pycache__"),
    )
    header = tmp_path / "csrc" / "pmem_metrics.h"
    lines = header.read_text().splitlines(keepends=True)
    end = lines.index("\t/* end of PMEM_METRICS_FIELDS */\n")
    header.write_text("".join([*lines[:end], FIFTH, *lines[end:]]))  # the one line

    pkg = tmp_path / "pmem_metrics"
    subprocess.run(
        ["make", "-s", "-C", str(tmp_path / "csrc"), f"B={pkg / 'lib'}", "shared"], check=True
    )
    env = {**os.environ, "LIBRARY_PATH": str(pkg / "lib")}
    subprocess.run(
        [sys.executable, "_ffi_build.py"], cwd=pkg, env=env, check=True, capture_output=True
    )
    assert list(pkg.glob("_ffi*" + sysconfig.get_config_var("SHLIB_SUFFIX")))
    return tmp_path


def test_a_fifth_field_is_one_line_in_c_and_none_in_python(five_fields: Path) -> None:
    tmp_path = five_fields
    out = subprocess.run(
        [sys.executable, "-c", (
            "import json, pmem_metrics as p;"
            "m = p.PmemMetricsPerDevice.alloc('drv0'); m.flush_fails.add(7);"
            "print(json.dumps(p.FIELDS)); print(p.flush_metrics_json())"
        )],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert tuple(json.loads(out[0])) == (*FIELDS, "flush_fails")
    obj = json.loads(out[1])
    assert list(obj["pmem_drv0"]) == [*FIELDS, "flush_fails"]
    assert obj["pmem_drv0"]["flush_fails"] == obj["pmem"]["flush_fails"] == 7


def test_a_segment_of_another_build_is_read_with_its_own_fields(
    five_fields: Path, tmp_path: Path
) -> None:
    """A five-field build's segment, read by this (four-field) build: all five, everywhere."""
    seg = tmp_path / "seg"
    subprocess.run(
        [sys.executable, "-c", (
            "import sys, pmem_metrics as p; s = p.open_segment(sys.argv[1], capacity=8);"
            "m = s.alloc('drv0'); m.flush_fails.add(7); m.cfg_fails.add(2);"
            "s.alloc('drv1').flush_fails.add(1)"
        ), str(seg)],
        cwd=five_fields, check=True, capture_output=True, text=True,
    )  # fmt: skip
    with pytest.raises(p.InvalidSegmentError) as e:  # a writer: what would it count into?
        p.open_segment(seg, create=False)
    assert e.value.errno == errno.EPROTO
    theirs = p.open_segment(seg, readonly=True)
    assert list(theirs.field_docs) == [*FIELDS, "flush_fails"]
    assert theirs.field_docs["flush_fails"].startswith("Number of times a test-only fifth")
    assert theirs.read() == {
        "drv0": {**dict.fromkeys(FIELDS, 0), "cfg_fails": 2, "flush_fails": 7},
        "drv1": {**dict.fromkeys(FIELDS, 0), "flush_fails": 1},
    }
    # Beside a segment of this build: each series under its own segment's fields.
    ours = p.open_segment(tmp_path / "ours", capacity=8)
    ours.alloc("drv0").cfg_fails.add(3)
    page = render({"theirs": theirs, "ours": ours}).decode()
    assert 'pmem_flush_fails_total{drive_id="drv0",segment="theirs"} 7.0' in page
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="ours"} 3.0' in page
    assert 'segment="ours"' not in page.split("# HELP pmem_flush_fails")[1].split("# HELP")[0]
    assert re.search(r"# HELP pmem_flush_fails_total Number of times a test-only fifth", page)
    prom = CollectorRegistry()
    register(prom, {"theirs": theirs, "ours": ours})
    assert generate_latest(prom).decode() == page  # the fast page and the client's, alike
    # top reads it too (read-only, its own fields as rows).
    top = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "top", "--shm", str(seg), "--json", "--all",
         "--interval", "0.01"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    devices = json.loads(top)["segments"][str(seg)]["devices"]
    counted = {(d, f, v["count"]) for d, fs in devices.items() for f, v in fs.items() if v["count"]}
    assert counted == {
        ("drv0", "cfg_fails", 2), ("drv0", "flush_fails", 7), ("drv1", "flush_fails", 1)
    }  # fmt: skip


def test_the_opentelemetry_bridge_reports_another_builds_fields(
    five_fields: Path, tmp_path: Path
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pmem_metrics.otel import instrument

    seg = tmp_path / "seg"
    subprocess.run(
        [sys.executable, "-c", (
            "import sys, pmem_metrics as p;"
            "p.open_segment(sys.argv[1], capacity=8).alloc('drv0').flush_fails.add(5)"
        ), str(seg)],
        cwd=five_fields, check=True, capture_output=True, text=True,
    )  # fmt: skip
    reader = InMemoryMetricReader()
    handle = instrument(
        MeterProvider(metric_readers=[reader]),
        segments={"vm": p.open_segment(seg, readonly=True)},
    )
    try:
        data = reader.get_metrics_data()
    finally:
        handle.uninstrument()
    points = {
        (m.name, pt.attributes["pmem.drive_id"]): pt.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for pt in m.data.data_points
    }
    assert points[("pmem.flush_fails", "drv0")] == 5
    assert points[("pmem.cfg_fails", "drv0")] == 0
