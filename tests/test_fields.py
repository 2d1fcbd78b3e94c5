"""The field list is defined once, in C: a fifth counter is one line there and none in Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from pmem_metrics import FIELD_DOCS, FIELDS

from .helpers import REPO

FIFTH = '\tX(flush_fails, "Number of times a test-only fifth counter was bumped.") \\\n'


def test_field_docs_come_from_c() -> None:
    assert list(FIELD_DOCS) == list(FIELDS)
    assert FIELD_DOCS["activate_fails"] == "Number of times when activate failed on a pmem device."
    assert all(doc.endswith(".") for doc in FIELD_DOCS.values())


def test_a_fifth_field_is_one_line_in_c_and_none_in_python(tmp_path: Path) -> None:
    """A copy of the checkout with the one line added, built by its Makefile, then CFFI."""
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
