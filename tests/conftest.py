"""Fixtures (the helpers that test modules import are in helpers.py and pipes.py).

The registry is one per process and devices are never freed, so tests that
share the pytest process use ids of their own (``uid``), and tests that need
an empty registry run their code in a fresh interpreter (``run_python``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cffi
import pytest

from .helpers import NATIVE_C, REPO, c_flags

_ids = itertools.count()

WORKERS_MAX = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default: pyproject.toml): a worker per core, 4 at most.

    Each worker builds the session's fixtures (a C library, a CFFI module)
    anew and holds its own interpreter: more workers than that cost more
    than they save on a suite of this size.
    """
    return max(1, min(WORKERS_MAX, len(os.sched_getaffinity(0))))


# Firecracker v1.16's two rate-limiter counters, as the README's Compatibility note adds them.
V116_FIELDS = (
    '\tX(rate_limiter_event_count, "Number of events associated with the rate limiter.") \\\n'
    '\tX(rate_limiter_throttled_events, "Number of rate limiter throttling events.") \\\n'
)


@pytest.fixture(scope="session")
def v116_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with Firecracker v1.16's two fields added, built.

    The two lines go into the header's field list, as the README says, and
    nothing else changes: the Makefile builds the library, then CFFI the
    module. Running Python with this folder as the working directory imports
    that build. Unoptimised and in parallel: the tests are about fields.
    """
    root = tmp_path_factory.mktemp("v116")
    shutil.copytree(REPO / "csrc", root / "csrc", ignore=shutil.ignore_patterns("build"))
    shutil.copy(REPO / "VERSION", root / "VERSION")  # the Makefile's soname comes from it
    shutil.copytree(
        REPO / "pmem_metrics",
        root / "pmem_metrics",
        ignore=shutil.ignore_patterns("lib", "include", "_ffi.*", "__pycache__"),
    )
    header = root / "csrc" / "pmem_metrics.h"
    lines = header.read_text().splitlines(keepends=True)
    end = lines.index("\t/* end of PMEM_METRICS_FIELDS */\n")
    header.write_text("".join([*lines[:end], V116_FIELDS, *lines[end:]]))
    pkg = root / "pmem_metrics"
    quick = "CFLAGS=-O0"
    subprocess.run(
        ["make", "-s", "-j2", "-C", str(root / "csrc"), f"B={pkg / 'lib'}", quick, "shared"],
        check=True,
    )
    env = {**os.environ, "LIBRARY_PATH": str(pkg / "lib"), "CFLAGS": "-O0"}
    subprocess.run(
        [sys.executable, "_ffi_build.py"], cwd=pkg, env=env, check=True, capture_output=True
    )
    return root


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
