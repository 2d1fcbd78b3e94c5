"""Fixtures (the helpers that test modules import are in helpers.py and pipes.py).

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

import cffi
import pytest

from .helpers import NATIVE_C, c_flags

_ids = itertools.count()


@pytest.fixture(scope="session")
def native(tmp_path_factory: pytest.TempPathFactory):
    """NATIVE_C compiled as a shared object linking libpmemmetrics.so, loaded with CFFI."""
    d = tmp_path_factory.mktemp("native")
    (d / "native.c").write_text(NATIVE_C)
    so = d / "libnative.so"
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread",
         str(d / "native.c"), *c_flags(), "-o", str(so)],
        check=True,
    )  # fmt: skip
    ffi = cffi.FFI()
    ffi.cdef(
        """
        int bump(const char *id, int threads, int per_thread);
        uintptr_t alloc_from_c(const char *id);
        size_t devices_seen_from_c(void);
        """
    )
    return ffi.dlopen(str(so))


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
