"""Shared helpers.

The registry is one per process and devices are never freed, so tests that
share the pytest process use ids of their own (``uid``), and tests that need
an empty registry run their code in a fresh interpreter (``run_python``).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pmem_metrics import FIELDS

_ids = itertools.count()


@pytest.fixture
def uid() -> str:
    """A prefix no other test uses, for drive ids."""
    return f"t{next(_ids)}-"


@pytest.fixture
def run_python(tmp_path: Path):
    """Run a snippet in a fresh interpreter (an empty registry); return its stdout."""

    def run(code: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=tmp_path,  # never the source tree: import the installed package
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return run


def assert_aggregate_is_sum(obj: dict) -> None:
    """The check Firecracker's integration tests make on every flushed object."""
    devices = [v for k, v in obj.items() if k.startswith("pmem_")]
    assert list(obj)[-1] == "pmem"
    for f in FIELDS:
        assert obj["pmem"][f] == sum(d[f] for d in devices) % 2**64, (f, obj)
