"""The field list is defined once, in C: a new counter is one line there and none in Python."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import pmem_metrics as p
from pmem_metrics import FIELD_DOCS, FIELDS
from pmem_metrics.exposition import render
from pmem_metrics.prometheus import register

# The fields the v1.16 build (conftest's v116_build) adds to this build's.
NEW = ("rate_limiter_event_count", "rate_limiter_throttled_events")


def v116_segment(build: Path, seg: Path, statements: str) -> Path:
    """Create the segment *seg* by the v1.16 *build*, with *statements* run on it as ``s``."""
    subprocess.run(
        [sys.executable, "-c", (
            "import sys, pmem_metrics as p; s = p.open_segment(sys.argv[1], capacity=8);"
            + statements
        ), str(seg)],
        cwd=build, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return seg


def test_field_docs_come_from_c() -> None:
    assert list(FIELD_DOCS) == list(FIELDS)
    assert FIELD_DOCS["activate_fails"] == "Number of times when activate failed on a pmem device."
    assert all(doc.endswith(".") for doc in FIELD_DOCS.values())


def test_a_new_field_is_one_line_in_c_and_none_in_python(v116_build: Path) -> None:
    tmp_path = v116_build
    out = subprocess.run(
        [sys.executable, "-c", (
            "import json, pmem_metrics as p;"
            "m = p.PmemMetricsPerDevice.alloc('drv0'); m.rate_limiter_throttled_events.add(7);"
            "print(json.dumps(p.FIELDS)); print(p.flush_metrics_json())"
        )],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert tuple(json.loads(out[0])) == (*FIELDS, *NEW)
    obj = json.loads(out[1])
    assert list(obj["pmem_drv0"]) == [*FIELDS, *NEW]
    assert obj["pmem_drv0"]["rate_limiter_event_count"] == 0
    assert obj["pmem_drv0"]["rate_limiter_throttled_events"] == 7
    assert obj["pmem"]["rate_limiter_throttled_events"] == 7


def test_a_segment_of_another_build_is_read_with_its_own_fields(
    v116_build: Path, tmp_path: Path
) -> None:
    """A six-field build's segment, read by this (four-field) build: all six, everywhere."""
    seg = v116_segment(
        v116_build,
        tmp_path / "seg",
        "m = s.alloc('drv0'); m.rate_limiter_throttled_events.add(7); m.cfg_fails.add(2);"
        "s.alloc('drv1').rate_limiter_throttled_events.add(1)",
    )
    with pytest.raises(p.InvalidSegmentError) as e:  # a writer: what would it count into?
        p.open_segment(seg, create=False)
    assert e.value.errno == errno.EPROTO
    theirs = p.open_segment(seg, readonly=True)
    assert list(theirs.field_docs) == [*FIELDS, *NEW]
    assert theirs.field_docs[NEW[1]] == "Number of rate limiter throttling events."
    zeros = dict.fromkeys([*FIELDS, *NEW], 0)
    assert theirs.read() == {
        "drv0": {**zeros, "cfg_fails": 2, NEW[1]: 7},
        "drv1": {**zeros, NEW[1]: 1},
    }
    # Beside a segment of this build: each series under its own segment's fields.
    ours = p.open_segment(tmp_path / "ours", capacity=8)
    ours.alloc("drv0").cfg_fails.add(3)
    page = render({"theirs": theirs, "ours": ours}).decode()
    assert f'pmem_{NEW[1]}_total{{drive_id="drv0",segment="theirs"}} 7.0' in page
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="ours"} 3.0' in page
    assert 'segment="ours"' not in page.split(f"# HELP pmem_{NEW[1]}")[1].split("# HELP")[0]
    assert f"# HELP pmem_{NEW[1]}_total Number of rate limiter throttling events.\n" in page
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
    assert counted == {("drv0", "cfg_fails", 2), ("drv0", NEW[1], 7), ("drv1", NEW[1], 1)}


def test_the_opentelemetry_bridge_reports_another_builds_fields(
    v116_build: Path, tmp_path: Path
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pmem_metrics.otel import instrument

    seg = v116_segment(
        v116_build, tmp_path / "seg", "s.alloc('drv0').rate_limiter_throttled_events.add(5)"
    )
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
    assert points[(f"pmem.{NEW[1]}", "drv0")] == 5
    assert points[("pmem.cfg_fails", "drv0")] == 0
