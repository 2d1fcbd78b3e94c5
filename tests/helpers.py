"""Helpers the test modules import (fixtures live in conftest.py).

Import them relatively (``from .helpers import REPO``): tests/ is a package,
imported in pytest's ``append`` mode (see pyproject.toml), so the installed
``pmem_metrics`` comes before the checkout's source folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pmem_metrics
from pmem_metrics import FIELDS

REPO = Path(__file__).resolve().parent.parent
"""The checkout (tests use its csrc/ to build C code)."""

IN_CI = os.environ.get("PMEM_METRICS_CI") == "1"
"""Whether this is CI (``.ci/run``), which installs every tool the tests use."""


def tool(name: str, package: str) -> str:
    """The path of the program *name*, from Debian's *package*.

    Missing, the test is skipped -- except in CI, where it fails: a test
    that skips there for want of its tool never ran (``.ci/setup`` installs
    *package*).
    """
    import pytest  # only the tests that need a tool need pytest here

    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (apt-get install {package})"
        if IN_CI:
            pytest.fail(f"{why}: .ci/setup must install it", pytrace=False)
        pytest.skip(why)
    return path


NATIVE_C = r"""
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <pmem_metrics.h>

struct job { struct pmem_metrics *m; int n; };

static void *run(void *arg)
{
    struct job *j = arg;
    for (int i = 0; i < j->n; i++) {
        pmem_metrics_inc(&j->m->activate_fails);
        pmem_metrics_add(&j->m->queue_event_count, 2);
    }
    return NULL;
}

/* Bump `id` from `threads` native threads; 0, or -errno. */
int bump(const char *id, int threads, int per_thread)
{
    pthread_t t[64];
    struct job j = { pmem_metrics_alloc(id), per_thread };
    if (!j.m)
        return -errno;
    if (threads > 64)
        return -EINVAL;
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, run, &j);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return 0;
}

uintptr_t alloc_from_c(const char *id) { return (uintptr_t)pmem_metrics_alloc(id); }
size_t devices_seen_from_c(void) { return pmem_metrics_device_count(); }
"""
"""C code linking libpmemmetrics.so, built and loaded by the ``native`` fixture."""


def c_flags() -> list[str]:
    """What ``python -m pmem_metrics --cflags --libs`` prints, for the installed package."""
    out = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "--cflags", "--libs"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # not the checkout, whose source folder would shadow it
    ).stdout
    return shlex.split(out)


def fault_library(build: Path) -> Path:
    """The Makefile's fault-injection build of libpmemmetrics, made under *build*: its directory.

    Put first on ``LD_LIBRARY_PATH``, the package's extension loads it instead
    of the shipped library. Unoptimised and in parallel: it is built for one test.
    """
    target = build / "fault" / "libpmemmetrics.so"
    make = ["make", "-s", "-j2", "-C", str(REPO / "csrc"), f"B={build}", "CFLAGS=-O0 -g"]
    subprocess.run([*make, str(target)], check=True)
    return target.parent


def run_threads(
    workers: list[threading.Thread], loopers: list[threading.Thread], stop: threading.Event
) -> None:
    """Run *workers* to completion while *loopers* run until *stop* is set.

    The GIL is handed over every 10 µs instead of every 5 ms, so Python
    threads interleave far more often than they usually would.
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in loopers + workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        for t in loopers:
            t.join()
    finally:
        sys.setswitchinterval(old)


def assert_aggregate_is_sum(obj: dict) -> None:
    """The check Firecracker's integration tests make on every flushed object."""
    devices = [v for k, v in obj.items() if k.startswith("pmem_")]
    assert list(obj)[-1] == "pmem"
    for f in FIELDS:
        assert obj["pmem"][f] == sum(d[f] for d in devices) % 2**64, (f, obj)


def retire_mine(prefix: str) -> None:
    """Retire every device of the default registry whose id starts with *prefix*, and flush.

    For a test that leaves thousands of devices in the pytest process: the
    later tests' flushes and collections then go over their own devices only.
    """
    for drive_id in pmem_metrics.ids():
        if drive_id.startswith(prefix):
            pmem_metrics.retire(drive_id)
    pmem_metrics.flush_metrics()  # the final one of each: reported, let go
    assert not [i for i in pmem_metrics.ids() if i.startswith(prefix)]
