"""C callers: the shipped header and library, and one registry shared with Python.

The ``native`` fixture (conftest.py) is a C shared object compiled with the
flags ``python -m pmem_metrics --cflags --libs`` prints, loaded into this
process with CFFI; it bumps counters from native threads, and Python must see
exactly those counts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import cffi
import pytest

import pmem_metrics
from pmem_metrics import FIELDS, PmemMetricsPerDevice, device_count, flush_metrics
from pmem_metrics._binding import ffi as binding_ffi
from pmem_metrics.cli import main

from .helpers import REPO, c_flags


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
    assert c_flags() == [f"-I{inc}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lpmemmetrics"]
    assert main(["--cflags"]) == 0
    assert capsys.readouterr().out == f"-I{inc}\n"
    assert main(["--libs"]) == 0
    assert capsys.readouterr().out == f"-L{lib} -Wl,-rpath,{lib} -lpmemmetrics\n"
    with pytest.raises(SystemExit):
        main([])


def test_native_threads_counts_show_exactly_in_python_flush(native, uid: str) -> None:
    flush_metrics()
    assert native.bump((uid + "c").encode(), 8, 20000) == 0
    flushed = flush_metrics()[f"pmem_{uid}c"]
    assert flushed == {**dict.fromkeys(FIELDS, 0), "activate_fails": 160000,
                       "queue_event_count": 320000}  # fmt: skip
    m = PmemMetricsPerDevice.alloc(uid + "c")
    assert m.activate_fails.count() == 160000
    assert m.activate_fails.fetch_diff() == 0


def test_a_device_allocated_from_c_then_python_is_one_device(native, uid: str) -> None:
    n = device_count()
    from_c = native.alloc_from_c((uid + "shared").encode())
    m = PmemMetricsPerDevice.alloc(uid + "shared")
    assert from_c == address(m) != 0
    assert device_count() == native.devices_seen_from_c() == n + 1
    # ...and the other way round.
    first = PmemMetricsPerDevice.alloc(uid + "py-first")
    assert native.alloc_from_c((uid + "py-first").encode()) == address(first)
    assert native.bump((uid + "py-first").encode(), 2, 10) == 0
    assert first.activate_fails.count() == 20


def test_the_exported_counter_functions_tolerate_null() -> None:
    ffi = cffi.FFI()
    ffi.cdef(
        """
        void pmem_metrics_inc(void *c);
        void pmem_metrics_add(void *c, uint64_t n);
        uint64_t pmem_metrics_count(const void *c);
        uint64_t pmem_metrics_fetch_diff(const void *c);
        """
    )
    so = ffi.dlopen(str(Path(pmem_metrics.get_library_dir()) / "libpmemmetrics.so"))
    so.pmem_metrics_inc(ffi.NULL)
    so.pmem_metrics_add(ffi.NULL, 5)
    assert so.pmem_metrics_count(ffi.NULL) == 0
    assert so.pmem_metrics_fetch_diff(ffi.NULL) == 0


def test_bad_id_from_c_is_einval(native) -> None:
    import errno

    assert native.bump(b"", 1, 1) == -errno.EINVAL
    assert native.alloc_from_c(b"bad\x01id") == 0


def test_standalone_c_program_against_the_installed_package(tmp_path: Path) -> None:
    exe = tmp_path / "devices"
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(REPO / "csrc/examples/devices.c"),
         *c_flags(), "-pthread", "-o", str(exe)],
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


def test_a_cpp_translation_unit_stops_with_a_clear_error(tmp_path: Path) -> None:
    """C++'s atomics are not C11's _Atomic: the header refuses C++ with a reason, not a mess."""
    cxx = next(c for c in ("c++", "g++", "clang++", "clang") if shutil.which(c))
    (tmp_path / "app.cc").write_text("#include <pmem_metrics.h>\nint main() { return 0; }\n")
    proc = subprocess.run(
        [cxx, "-x", "c++", "-fsyntax-only", f"-I{pmem_metrics.get_include()}", "app.cc"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "C11 only" in errors[0], proc.stderr  # the #error, nothing else


def test_the_library_exports_its_header_and_the_binding_declares_all_of_it() -> None:
    """-fvisibility=hidden: the exported symbols are the header's, and the cdef read from the
    header declares each of them (a hand-kept copy could miss one)."""
    from pmem_metrics._binding import lib as binding_lib

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm on this machine")  # binutils comes with the C compiler
    library = Path(pmem_metrics.get_library_dir()) / "libpmemmetrics.so"
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}
    assert names, out
    assert {n for n in names if not n.startswith("pmem_metrics_")} == set()
    missing = {n for n in names if not hasattr(binding_lib, n)}
    assert missing == set()
