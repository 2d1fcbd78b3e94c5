"""Shared helpers.

The registry is one per process and devices are never freed, so tests that
share the pytest process use ids of their own (``uid``), and tests that need
an empty registry run their code in a fresh interpreter (``run_python``).
"""

from __future__ import annotations

import itertools
import os
import select
import shlex
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import cffi
import pytest

from pmem_metrics import FIELDS

_ids = itertools.count()

REPO = Path(__file__).resolve().parent.parent
"""The checkout (tests use its csrc/ to build C code)."""

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


class FifoReader:
    """Reads a named pipe in a background thread, as a metrics consumer would.

    A line can be larger than the pipe's buffer, so the reader must drain it
    while the writer writes.  Open it before the writer, so the writer finds
    a reader.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            chunk = os.read(self.fd, 1 << 16) if ready else b""
            if chunk:
                with self._lock:
                    self.data += chunk
            elif ready:
                time.sleep(0.005)  # no writer (EOF) right now

    def lines(self, n: int, timeout: float = 30) -> list[str]:
        """The first *n* complete lines, waiting for them up to *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.data.count(b"\n") >= n:
                    return self.data.decode().splitlines(keepends=True)[:n]
            time.sleep(0.005)
        raise AssertionError(f"fewer than {n} lines within {timeout} s: {bytes(self.data)[:200]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
