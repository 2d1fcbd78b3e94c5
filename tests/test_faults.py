"""Faults: fork() under load, out of memory (injected).

The destination failures of MetricsWriter (full device, broken pipe and
SIGPIPE, partial writes, raising file objects) are in test_writer.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pmem_metrics import PmemMetricsPerDevice, flush_metrics

from .helpers import fault_library, retire_mine


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_fork_while_other_threads_allocate_flush_and_bump(native, uid: str) -> None:
    """The child allocs, increments and flushes without deadlock, from the parent's counts."""
    stop = threading.Event()

    def flusher() -> None:  # holds the C flush lock while it renders, most of the time
        while not stop.is_set():
            flush_metrics()

    def allocator() -> None:
        for i in range(10**9):
            if stop.is_set():
                return
            PmemMetricsPerDevice.alloc(f"{uid}a{i % 2000}").cfg_fails.inc()

    def bumper() -> None:  # native threads, the GIL released
        while not stop.is_set():
            native.bump(f"{uid}native".encode(), 2, 20000)

    threads = [threading.Thread(target=f) for f in (flusher, flusher, allocator, bumper)]
    for t in threads:
        t.start()
    parent = PmemMetricsPerDevice.alloc(uid + "parent")
    failures = 0
    try:
        for _ in range(25):
            parent.event_fails.inc()
            count = parent.event_fails.count()
            pid = os.fork()
            if pid == 0:  # the child: no pytest here, only an exit status
                signal.alarm(5)  # a deadlock kills the child, which fails the test
                ok = parent.event_fails.count() == count
                child = PmemMetricsPerDevice.alloc(uid + "child")
                child.queue_event_count.add(3)
                ok = ok and flush_metrics()[f"pmem_{uid}child"]["queue_event_count"] == 3
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failures += 1
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == 0
    assert parent.event_fails.count() == 25
    assert "pmem_" + uid + "child" not in flush_metrics()  # children touch only themselves
    retire_mine(uid)  # its up to 2,000 devices


def test_out_of_memory_raises_memory_error_and_changes_nothing(tmp_path: Path) -> None:
    """Against the Makefile's fault-injection build, put first on the library path."""
    lib = (fault_library(tmp_path) / "libpmemmetrics.so").resolve()  # the file the loader maps
    code = f"""
        import io, cffi
        from pmem_metrics import (MetricsWriter, OutOfMemoryError, PmemMetricsPerDevice,
                                  device_count, flush_metrics)
        ffi = cffi.FFI()
        ffi.cdef("void pmem_metrics_fault_fail_alloc(unsigned n);")
        fault = ffi.dlopen({str(lib)!r})
        maps = open("/proc/self/maps").read().splitlines()
        mapped = {{line.split()[-1] for line in maps if "libpmemmetrics" in line}}
        assert mapped == {{{str(lib)!r}}}, mapped  # the extension uses the fault build

        m = PmemMetricsPerDevice.alloc("drv0")
        m.activate_fails.add(2)
        fault.pmem_metrics_fault_fail_alloc(1)
        try:
            PmemMetricsPerDevice.alloc("drv1")
        except OutOfMemoryError as e:
            assert isinstance(e, MemoryError)
            print("alloc:", e)
        assert device_count() == 1

        fault.pmem_metrics_fault_fail_alloc(1)
        try:
            flush_metrics()
        except MemoryError:
            print("flush: MemoryError")
        buf = io.StringIO()
        w = MetricsWriter()
        w.init(buf)
        fault.pmem_metrics_fault_fail_alloc(1)
        try:
            w.write()
        except MemoryError:
            print("write: MemoryError", repr(buf.getvalue()))
        assert m.activate_fails.fetch_diff() == 2
        print(flush_metrics())
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env={**os.environ, "LD_LIBRARY_PATH": str(lib.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "alloc: cannot allocate metrics for drive id 'drv1' (Cannot allocate memory)",
        "flush: MemoryError",
        "write: MemoryError ''",
        str({"pmem_drv0": {"activate_fails": 2, "cfg_fails": 0, "event_fails": 0,
                           "queue_event_count": 0},
             "pmem": {"activate_fails": 2, "cfg_fails": 0, "event_fails": 0,
                      "queue_event_count": 0}}),
    ]  # fmt: skip
