"""C callers: the shipped header and library, and one registry shared with Python.

A C shared object is compiled here with the flags ``python -m pmem_metrics
--cflags --libs`` prints, loaded into this process with CFFI, and bumps
counters from native threads; Python must see exactly those counts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import cffi
import pytest

import pmem_metrics
from pmem_metrics import FIELDS, PmemMetricsPerDevice, device_count, flush_metrics
from pmem_metrics._binding import ffi as binding_ffi
from pmem_metrics.cli import main

REPO = Path(__file__).resolve().parent.parent

HELPER_C = r"""
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


def flags() -> list[str]:
    """What ``python -m pmem_metrics --cflags --libs`` prints, for the installed package."""
    out = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "--cflags", "--libs"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # not the checkout, whose source folder would shadow it
    ).stdout
    return shlex.split(out)


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory):
    """The helper compiled as a shared object linking libpmemmetrics.so, loaded with CFFI."""
    d = tmp_path_factory.mktemp("helper")
    (d / "helper.c").write_text(HELPER_C)
    so = d / "libhelper.so"
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread",
         str(d / "helper.c"), *flags(), "-o", str(so)],
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


def address(m: PmemMetricsPerDevice) -> int:
    return int(binding_ffi.cast("uintptr_t", m._m))


def test_the_package_ships_header_and_library() -> None:
    inc, lib = Path(pmem_metrics.get_include()), Path(pmem_metrics.get_library_dir())
    assert (inc / "pmem_metrics.h").is_file()
    assert (lib / "libpmemmetrics.so").is_file()
    package = Path(pmem_metrics.__file__).parent
    assert inc.parent == package and lib.parent == package
    assert "PMEM_METRICS_FIELDS" in (inc / "pmem_metrics.h").read_text()


def test_cflags_and_libs(capsys: pytest.CaptureFixture[str]) -> None:
    inc, lib = pmem_metrics.get_include(), pmem_metrics.get_library_dir()
    assert flags() == [f"-I{inc}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lpmemmetrics"]
    assert main(["--cflags"]) == 0
    assert capsys.readouterr().out == f"-I{inc}\n"
    assert main(["--libs"]) == 0
    assert capsys.readouterr().out == f"-L{lib} -Wl,-rpath,{lib} -lpmemmetrics\n"
    with pytest.raises(SystemExit):
        main([])


def test_native_threads_counts_show_exactly_in_python_flush(helper, uid: str) -> None:
    flush_metrics()
    assert helper.bump((uid + "c").encode(), 8, 20000) == 0
    flushed = flush_metrics()[f"pmem_{uid}c"]
    assert flushed == {**dict.fromkeys(FIELDS, 0), "activate_fails": 160000,
                       "queue_event_count": 320000}  # fmt: skip
    m = PmemMetricsPerDevice.alloc(uid + "c")
    assert m.activate_fails.count() == 160000
    assert m.activate_fails.fetch_diff() == 0


def test_a_device_allocated_from_c_then_python_is_one_device(helper, uid: str) -> None:
    n = device_count()
    from_c = helper.alloc_from_c((uid + "shared").encode())
    m = PmemMetricsPerDevice.alloc(uid + "shared")
    assert from_c == address(m) != 0
    assert device_count() == helper.devices_seen_from_c() == n + 1
    # ...and the other way round.
    first = PmemMetricsPerDevice.alloc(uid + "py-first")
    assert helper.alloc_from_c((uid + "py-first").encode()) == address(first)
    assert helper.bump((uid + "py-first").encode(), 2, 10) == 0
    assert first.activate_fails.count() == 20


def test_bad_id_from_c_is_einval(helper) -> None:
    import errno

    assert helper.bump(b"", 1, 1) == -errno.EINVAL
    assert helper.alloc_from_c(b"bad\x01id") == 0


def test_standalone_c_program_against_the_installed_package(tmp_path: Path) -> None:
    exe = tmp_path / "devices"
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(REPO / "csrc/examples/devices.c"),
         *flags(), "-pthread", "-o", str(exe)],
        check=True,
    )  # fmt: skip
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, cwd=tmp_path)
    rows = {}
    for line in out.stdout.splitlines():
        name, *pairs = line.split()
        rows[name] = {k: int(v) for k, v in (p.split("=") for p in pairs)}
    assert list(rows) == ["drv0", "drv1", "drv2", "drv3", "(aggregate)"]
    for f in FIELDS:
        assert rows["(aggregate)"][f] == sum(rows[f"drv{i}"][f] for i in range(4))
    assert rows["(aggregate)"]["queue_event_count"] == 400000
    assert rows["drv0"]["activate_fails"] == 1
    assert re.fullmatch(r"[\w=() \n]+", out.stdout)
    assert os.access(exe, os.X_OK)
