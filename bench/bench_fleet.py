"""One agent following a host of microVMs, against prometheus_client's multiprocess mode.

Run: ``pip install '.[bench]' && python bench/bench_fleet.py [--sizes 10,100,1000,10000]
[--creations 50] [--flat] [--profile] [--quick]``.

For each size N, in fresh processes (the segments made by one, each figure
timed by another, so memory and caches do not carry over between sizes): N
segments of 4 devices (``drv0`` to ``drv3``, every field counted) on
/dev/shm, one per VM as Firecracker's jailer lays them out, found by the
pattern ``DIR/{vm}/pmem.seg`` (``--flat``: ``DIR/{vm}.seg``), and as many
prometheus_client multiprocess files: ``counter_K.db``, written with its
``MmapedDict`` as N processes' ``Counter``\\ s would, 4 devices x 4 fields
each, labelled ``drive_id`` and ``vm`` (so both pages have the same 16 N
series):

- a Prometheus scrape: ``Exposition(patterns=...).render()`` (the agent's
  page; targets at 10,000: <= 100 ms), ``generate_latest()`` over
  ``PmemCollector(patterns=...)``, and ``generate_latest()`` over
  ``MultiProcessCollector`` (targets: >= 15x ours at 1,000, >= 60x at
  10,000); ours and prometheus_client's each in a process of its own, the
  two asked in turn for one scrape at a time (so a slow spell of this noisy
  machine falls on both), the best of several after a first scrape (which
  opens every segment: shown too).  Our scrapes include the pattern's rescan
  whenever one is due (at most one a second), as the agent's do;
  ``--profile`` adds the top of a cProfile of one ``render()``, and the time
  of the pattern's glob (``Pattern.find()``, a rescan's first step);
- an OpenTelemetry collection of ``otel.instrument(patterns=...)`` into an
  ``InMemoryMetricReader``, the best of several after a first (target at
  10,000: <= 1 s);
- the agent, ``python -m pmem_metrics export --shm-glob PATTERN
  --prometheus-port 0``: start-up, from starting its process to the first
  page that shows every segment up (targets: <= 2 s at 1,000 and 10,000);
  its memory, ``VmHWM`` after a few more scrapes (target at 10,000: <= 64
  MiB); and discovery: a new VM's segment made (``--creations`` times, a
  random pause of up to a second before each, so a periodic rescan is met
  at every phase), the page fetched again and again until it shows the new
  VM's devices, the time from starting to make it (p50, p99; target at
  1,000: p99 <= 100 ms).  The new segments stay: N grows by ``--creations``.

The scrape ratio is from one run; every other figure is absolute (a time,
a size), so take them from a quiet machine.  ``--quick`` is a smoke run
(size 10, three creations, two repeats); every scratch file is removed at
the end, whatever happens.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from _timing import best

Calls = dict[str, Callable[[], object]]

DEVICES = 4  # per segment
SIZES = "10,100,1000,10000"
CAPACITY = 16  # device slots per segment: files of a few pages
HERE = os.path.dirname(os.path.abspath(__file__))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def pattern(scratch: str, flat: bool) -> str:
    """The pattern the agent is given for the segments in *scratch*."""
    return os.path.join(scratch, "segs", "{vm}.seg" if flat else "{vm}/pmem.seg")


def make_segment(scratch: str, flat: bool, vm: str, k: int) -> None:
    """The segment of VM *vm*: 4 devices, every field counted (from *k*, so values differ)."""
    import pmem_metrics as p

    path = pattern(scratch, flat).replace("{vm}", vm)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = p.open_segment(path, capacity=CAPACITY)
    for d in range(DEVICES):
        m = r.alloc(f"drv{d}")
        for f, name in enumerate(p.FIELDS):
            getattr(m, name).add(1 + k + d + f)
        del m  # a held device would keep the segment open
    r.close()


def vm_name(k: int) -> str:
    return f"vm{k:05d}"


def make(n: int, scratch: str, flat: bool) -> dict[str, float]:
    """N segments, and N prometheus_client multiprocess files with the same series."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from pmem_metrics import FIELDS
    from pmem_metrics._binding import FIELD_DOCS

    start = time.perf_counter()
    for k in range(n):
        make_segment(scratch, flat, vm_name(k), k)
    ours = time.perf_counter() - start
    prom = os.path.join(scratch, "prom")
    os.mkdir(prom)
    start = time.perf_counter()
    for k in range(n):
        # What process K's Counter("pmem_FIELD", DOC, ["drive_id", "vm"]) children
        # write in multiprocess mode: counter_PID.db, a key per child.
        db = MmapedDict(os.path.join(prom, f"counter_{k}.db"))
        for f, name in enumerate(FIELDS):
            for d in range(DEVICES):
                key = mmap_key(
                    f"pmem_{name}",
                    f"pmem_{name}_total",
                    ["drive_id", "vm"],
                    [f"drv{d}", vm_name(k)],
                    FIELD_DOCS[name],
                )
                db.write_value(key, float(1 + k + d + f), 0.0)
        db.close()
    return {"make_ours": ours, "make_prom": time.perf_counter() - start}


def _raise_open_files() -> None:
    """The soft open-file limit up to the hard one, as the agent does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_UP = re.compile(rb"^pmem_segment_up\{[^}]*\} 1\.0$", re.M)


def segments_up(page: bytes) -> int:
    """How many segments *page* shows as read."""
    return len(_UP.findall(page))


def ours(n: int, scratch: str, flat: bool, profile: bool) -> tuple[dict[str, Any], Calls]:
    """A scrape of the pattern: our page, and PmemCollector through prometheus_client."""
    from prometheus_client import CollectorRegistry, generate_latest

    from pmem_metrics.exposition import Exposition
    from pmem_metrics.fleet import Pattern
    from pmem_metrics.prometheus import PmemCollector

    _raise_open_files()
    patterns = [pattern(scratch, flat)]
    exposition = Exposition(patterns=patterns)
    out: dict[str, Any] = {}
    out["render_first"], page = _timed(exposition.render)
    assert segments_up(page) == n, (segments_up(page), n)
    if profile:
        import cProfile
        import io
        import pstats

        exposition.render()  # the profile's render is not the one after the first
        prof = cProfile.Profile()
        prof.runcall(exposition.render)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).strip_dirs().sort_stats("tottime").print_stats(10)
        out["profile"] = text.getvalue()
        found = Pattern(patterns[0])
        out["find"] = best(found.find, repeat=3)  # what a rescan costs before any open
    registry = CollectorRegistry()
    registry.register(PmemCollector(patterns=patterns))
    out["collector_first"], theirs = _timed(lambda: generate_latest(registry))
    assert theirs == page, "PmemCollector's page differs from Exposition's"
    return out, {"render": exposition.render, "collector": lambda: generate_latest(registry)}


def prom(n: int, scratch: str) -> tuple[dict[str, Any], Calls]:
    """prometheus_client's multiprocess mode: MultiProcessCollector + generate_latest."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.path.join(scratch, "prom"))
    first, page = _timed(lambda: generate_latest(registry))
    samples = page.count(b'\npmem_activate_fails_total{drive_id="drv0",')
    assert samples == n, (samples, n)
    return {"prom_first": first}, {"prom": lambda: generate_latest(registry)}


def serve(made: tuple[dict[str, Any], Calls]) -> str:
    """Print what setting up measured, then time a call of each name stdin asks for."""
    first, calls = made
    print(json.dumps(first), flush=True)
    for line in sys.stdin:
        print(json.dumps(best(calls[line.strip()], repeat=1)), flush=True)
    return "done"


def otel(n: int, scratch: str, flat: bool, repeat: int) -> dict[str, float]:
    """One OpenTelemetry collection of the bridge over the pattern."""
    from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pmem_metrics import FIELDS
    from pmem_metrics import otel as bridge

    _raise_open_files()
    reader = InMemoryMetricReader(cardinality_limits={ObservableCounter: 1 << 20})
    provider = MeterProvider(metric_readers=[reader])
    handle = bridge.instrument(provider, patterns=[pattern(scratch, flat)])
    try:
        # The SDK gives a collection 10 s by default: the first (every segment
        # opened) may take longer at 10,000.
        collect: Callable[[], object] = lambda: reader.collect(timeout_millis=600_000)  # noqa: E731
        first, _ = _timed(collect)
        data = reader.get_metrics_data()
        points = sum(
            len(m.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )
        assert points == n * DEVICES * len(FIELDS), (points, n)
        return {"otel_first": first, "otel": best(collect, repeat=repeat)}
    finally:
        handle.uninstrument()
        provider.shutdown()


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What a Prometheus 2 server asks for (it asks for gzip too)."""


def _get(url: str) -> bytes:
    """The page, asked for as a Prometheus server asks (OpenMetrics, gzip), decompressed."""
    request = urllib.request.Request(
        url, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body


def _status(pid: int) -> dict[str, int]:
    """The agent's VmHWM and VmRSS, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def agent(n: int, scratch: str, flat: bool, creations: int) -> dict[str, Any]:
    """The exporter over the pattern: start-up, memory, and discovery of new segments."""
    log_path = os.path.join(scratch, "agent.log")
    command = [sys.executable, "-m", "pmem_metrics", "export", "--shm-glob"]
    command += [pattern(scratch, flat), "--prometheus-port", "0"]
    deadline = time.monotonic() + 120
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        # cwd: this folder, so that -m finds the installed package, not a checkout's source.
        proc = subprocess.Popen(command, stderr=log, stdout=subprocess.DEVNULL, cwd=HERE)
    try:

        def log_text() -> str:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                return f.read()

        url = None
        while url is None:
            found = re.search(r"(http://\S+/metrics)", log_text())
            if found:
                url = found.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start: {log_text()}")
            else:
                time.sleep(0.001)
        while segments_up(_get(url)) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent never showed {n} segments: {log_text()}")
        out: dict[str, Any] = {"startup": time.perf_counter() - start}
        for _ in range(3):
            _get(url)
        out.update(_status(proc.pid))
        latencies = []
        rng = random.Random(23)
        for i in range(creations):
            time.sleep(rng.uniform(0, 1))
            vm = f"new{i:03d}"
            marker = f'{{drive_id="drv0",segment="{pattern(scratch, flat).replace("{vm}", vm)}"'
            start = time.perf_counter()
            make_segment(scratch, flat, vm, n + i)
            while marker.encode() not in _get(url):
                if proc.poll() is not None or time.monotonic() > deadline + 60 * (i + 1):
                    raise RuntimeError(f"the agent never showed {vm}: {log_text()}")
            latencies.append(time.perf_counter() - start)
        out["latencies"] = latencies
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank *q* quantile of *values* (p99 of 50 values: the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def worker(kind: str, n: int, scratch: str, opts: dict[str, Any]) -> object:
    """One measurement, in this (fresh) process."""
    if kind == "make":
        return make(n, scratch, opts["flat"])
    if kind == "ours":
        return serve(ours(n, scratch, opts["flat"], opts["profile"]))
    if kind == "prom":
        return serve(prom(n, scratch))
    if kind == "otel":
        return otel(n, scratch, opts["flat"], opts["repeat"])
    if kind == "agent":
        return agent(n, scratch, opts["flat"], opts["creations"])
    raise ValueError(kind)


def _command(kind: str, n: int, scratch: str, opts: dict[str, Any]) -> list[str]:
    here = os.path.abspath(__file__)
    return [sys.executable, here, "--worker", kind, str(n), scratch, json.dumps(opts)]


def run(kind: str, n: int, scratch: str, opts: dict[str, Any]) -> dict[str, Any]:
    """*kind* for N segments in a fresh process: what it measured."""
    proc = subprocess.Popen(
        _command(kind, n, scratch, opts),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.terminate()  # not killed: the agent worker's own cleanup ends the agent
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} at {n:,} segments failed:\n{err}")
    result: dict[str, Any] = json.loads(out)
    return result


def scrapes(n: int, scratch: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Our scrapes and prometheus_client's, each in a process of its own, timed alternately.

    The best of ``repeat`` each (``PmemCollector``: of 3 at most), the two
    processes asked in turn for one scrape at a time, so a slow spell of
    this machine falls on both sides (``bench_shared.py``'s method).
    """
    out: dict[str, Any] = {}
    servers = {
        kind: subprocess.Popen(
            _command(kind, n, scratch, opts),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        for kind in ("ours", "prom")
    }
    try:

        def ask(kind: str, line: str | None) -> Any:
            server = servers[kind]
            assert server.stdin is not None and server.stdout is not None
            if line is not None:
                server.stdin.write(line + "\n")
                server.stdin.flush()
            answer = server.stdout.readline()
            if not answer:
                server.kill()
                _, err = server.communicate()
                raise RuntimeError(f"{kind} at {n:,} segments failed:\n{err}")
            return json.loads(answer)

        for kind in servers:
            out.update(ask(kind, None))
        for r in range(opts["repeat"]):
            for kind, name in (("ours", "render"), ("prom", "prom"), ("ours", "collector")):
                if name != "collector" or r < 3:
                    out[name] = min(out.get(name, math.inf), ask(kind, name))
    finally:
        for server in servers.values():
            server.communicate()
    return out


def measure(n: int, opts: dict[str, Any]) -> dict[str, Any]:
    """Every figure for N segments, in a scratch folder of /dev/shm removed afterwards."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    scratch = tempfile.mkdtemp(prefix="pmem-fleet-", dir=base)
    try:
        out: dict[str, Any] = {}
        out.update(run("make", n, scratch, opts))
        out.update(scrapes(n, scratch, opts))
        for kind in ("otel", "agent"):
            out.update(run(kind, n, scratch, opts))
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


# (label, size, figure, limit, "<=" or ">="): the targets.
TARGETS: list[tuple[str, int, Callable[[dict[str, Any]], float], float, str]] = [
    ("scrape (render), ms", 10_000, lambda m: m["render"] * 1e3, 100, "<="),
    ("prometheus_client multiprocess / ours", 1_000, lambda m: m["prom"] / m["render"], 15, ">="),
    ("prometheus_client multiprocess / ours", 10_000, lambda m: m["prom"] / m["render"], 60, ">="),
    ("OpenTelemetry collection, s", 10_000, lambda m: m["otel"], 1, "<="),
    ("start-up to the first full scrape, s", 1_000, lambda m: m["startup"], 2, "<="),
    ("start-up to the first full scrape, s", 10_000, lambda m: m["startup"], 2, "<="),
    ("agent memory (VmHWM), MiB", 10_000, lambda m: m["VmHWM"] / 1024, 64, "<="),
    ("discovery p99, ms", 1_000, lambda m: quantile(m["latencies"], 0.99) * 1e3, 100, "<="),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", help=f"segment counts, comma-separated (default {SIZES})")
    ap.add_argument("--creations", type=int, help="new segments timed for discovery (50)")
    ap.add_argument("--flat", action="store_true", help="DIR/{vm}.seg, not DIR/{vm}/pmem.seg")
    ap.add_argument("--profile", action="store_true", help="cProfile one render() at each size")
    ap.add_argument("--quick", action="store_true", help="a smoke run: size 10, few repeats")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10" if args.quick else SIZES)).split(",")]
    creations = args.creations if args.creations is not None else 3 if args.quick else 50
    results: dict[int, dict[str, Any]] = {}
    print(
        "| segments | ours: `render()` | `PmemCollector` | prometheus_client multiprocess "
        "| multiprocess / ours | OpenTelemetry | start-up | agent VmHWM | discovery p50 / p99 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        repeat = 2 if args.quick else 5 if n >= 10_000 else 7
        opts = {"flat": args.flat, "repeat": repeat, "creations": creations,
                "profile": args.profile}  # fmt: skip
        m = results[n] = measure(n, opts)
        lat = m["latencies"]
        print(
            f"| {n:,} | {_ms(m['render'])} (first {_ms(m['render_first'])}) "
            f"| {_ms(m['collector'])} | {_ms(m['prom'])} | {m['prom'] / m['render']:.1f}x "
            f"| {_ms(m['otel'])} (first {_ms(m['otel_first'])}) | {_ms(m['startup'])} "
            f"| {m['VmHWM'] / 1024:.1f} MiB "
            f"| {_ms(statistics.median(lat))} / {_ms(quantile(lat, 0.99))} |",
            flush=True,
        )
    print()
    print("targets (issue 23):")
    for label, n, figure, limit, how in TARGETS:
        if n not in results:
            print(f"  ----  {label} at {n:,} segments: not measured in this run")
            continue
        value = figure(results[n])
        ok = value <= limit if how == "<=" else value >= limit
        print(f"  {'PASS' if ok else 'MISS'}  {label} at {n:,} segments: {value:.3g} "
              f"(target {how} {limit:g})")  # fmt: skip
    for n, m in results.items():
        if "profile" in m:
            print(f"\none render() of {n:,} segments, cProfile, top 10 by own time:")
            print(m["profile"])
            print(f"the pattern's glob alone (Pattern.find(), in a rescan): {_ms(m['find'])}")


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C: the scratch folder and the agent go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, n, scratch, opts = sys.argv[2:6]
        print(json.dumps(worker(kind, int(n), scratch, json.loads(opts))))
    else:
        main()
