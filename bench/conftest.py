"""pytest-benchmark suite: ``pip install '.[bench]' && pytest bench/``.

(Plain ``pytest`` runs tests/ only.)  Every figure is a ratio to a baseline
measured in the same run; the summary at the end prints each target with
PASS or MISS.

The registry is per process and only grows, so the flush benchmarks run
first, smallest registry first, and each checks the device count it claims.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Benchmark modules in the order they must run (see above).
ORDER = ("test_bench_flush", "test_bench_inc", "test_bench_alloc")

# Medians (seconds per benchmark call) by test name, filled as benchmarks finish.
RESULTS: dict[str, float] = {}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """No workers for ``-n auto`` (pyproject's default): pytest-benchmark
    disables itself under xdist, and a benchmark times one process."""
    return 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def key(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).stem
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=key)  # stable: each module keeps its own order


@pytest.fixture
def measure(benchmark: Any, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``benchmark`` that also records its median under the test's name."""

    def record() -> None:
        if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
            RESULTS[request.node.name] = benchmark.stats.stats.median

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = benchmark(fn, *args, **kwargs)
        record()
        return result

    def pedantic(fn: Callable[..., Any], **kwargs: Any) -> Any:
        result = benchmark.pedantic(fn, **kwargs)
        record()
        return result

    run.pedantic = pedantic  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="session")
def floor_lib(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bare floor: a trivial CFFI API-mode function doing one relaxed atomic add."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("void floor_inc(uint64_t *p);")
    ffi.set_source(
        "_pmem_bench_floor",
        """
        #include <stdatomic.h>
        #include <stdint.h>
        static void floor_inc(uint64_t *p)
        {
            atomic_fetch_add_explicit((_Atomic uint64_t *)p, 1, memory_order_relaxed);
        }
        """,
    )
    out = tmp_path_factory.mktemp("floor")
    ffi.compile(tmpdir=str(out))
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("_pmem_bench_floor")
    finally:
        sys.path.remove(str(out))


# (label, slower test, faster test, limit): "slower / faster <= limit"
TARGETS = [
    ("Python inc <= 1.6x the bare CFFI floor", "test_inc_pmem_metrics", "test_inc_floor", 1.6),
    ("Python inc >= 3.5x faster than prometheus_client child inc",
     "test_inc_prometheus_client", "test_inc_pmem_metrics", -3.5),
    ("flush_metrics_json() <= 1.5x json.dumps, 19 devices",
     "test_flush_json[19]", "test_json_dumps_prebuilt[19]", 1.5),
    ("flush_metrics_json() <= 1.5x json.dumps, 1,000 devices",
     "test_flush_json[1000]", "test_json_dumps_prebuilt[1000]", 1.5),
    ("flush_metrics_json() <= 1.5x json.dumps, 10,000 devices",
     "test_flush_json[10000]", "test_json_dumps_prebuilt[10000]", 1.5),
    ("flush_metrics_json() >= 20x faster than generate_latest(), 19 devices",
     "test_prometheus_generate_latest[19]", "test_flush_json[19]", -20.0),
]  # fmt: skip

# Comparisons without a target, shown as ratios.
RATIOS = [
    (
        "generate_latest() / flush_metrics_json(), 1,000 devices",
        "test_prometheus_generate_latest[1000]",
        "test_flush_json[1000]",
    ),
    (
        "generate_latest() / flush_metrics_json(), 10,000 devices",
        "test_prometheus_generate_latest[10000]",
        "test_flush_json[10000]",
    ),
    ("OpenTelemetry SDK add / Python inc", "test_inc_opentelemetry", "test_inc_pmem_metrics"),
    ("pure-Python lock-and-int / Python inc", "test_inc_lock_and_int", "test_inc_pmem_metrics"),
    ("Python inc / bare CFFI call of our own C inc", "test_inc_pmem_metrics", "test_inc_bare_lib"),
    ("alloc of an existing id / Python inc", "test_alloc_existing", "test_inc_pmem_metrics"),
]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("pmem_metrics targets (medians of this run, as ratios):")
    for label, slow, fast, limit in TARGETS:
        if slow not in RESULTS or fast not in RESULTS:
            write(f"  ----  {label}: not measured in this run")
            continue
        ratio = RESULTS[slow] / RESULTS[fast]
        if limit > 0:
            write(f"  {'PASS' if ratio <= limit else 'MISS'}  {label}: {ratio:.2f}x")
        else:
            write(f"  {'PASS' if ratio >= -limit else 'MISS'}  {label}: {ratio:.1f}x faster")
    for label, a, b in RATIOS:
        if a in RESULTS and b in RESULTS:
            write(f"        {label}: {RESULTS[a] / RESULTS[b]:.2f}x")
    if "test_alloc_new_10000" in RESULTS and "test_alloc_existing" in RESULTS:
        new = RESULTS["test_alloc_new_10000"] / 10_000
        existing = RESULTS["test_alloc_existing"] / 1000
        write(f"        alloc of a new id / alloc of an existing id: {new / existing:.2f}x")
