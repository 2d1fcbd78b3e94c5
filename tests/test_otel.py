"""pmem_metrics.otel (the OpenTelemetry bridge) and the exporter's --otlp-endpoint.

Values are checked exactly: against ``count()`` after the threads that
increment have stopped, and, over OTLP/HTTP, as decoded from the protobuf a
receiver in the test got.  Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    PeriodicExportingMetricReader,
)

import pmem_metrics
from pmem_metrics import (
    FIELD_DOCS,
    FIELDS,
    PmemMetricsPerDevice,
    _scrape,
    follow,
    open_segment,
    otel,
)

from .helpers import run_threads

PATIENCE = 60.0
"""Seconds any one wait below may take before the test fails (a bound, not a timing check)."""

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], int]
"""Values by (metric name, sorted attributes)."""


def points(reader: InMemoryMetricReader, prefix: str = "") -> Points:
    """One collection of *reader*: pmem points whose drive id starts with *prefix*."""
    out: Points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            if sm.scope.name != otel.SCOPE:
                continue  # the SDK's own metrics, which some of its versions add
            for m in sm.metrics:
                for p in m.data.data_points:
                    attrs = dict(p.attributes or {})
                    if str(attrs[otel.DRIVE_ID]).startswith(prefix):
                        out[m.name, tuple(sorted(attrs.items()))] = int(p.value)
    return out


def expected(devices: dict[str, PmemMetricsPerDevice], segment: str | None = None) -> Points:
    """What the points of *devices* must be now: every field's ``count()``."""
    extra = () if segment is None else ((otel.SEGMENT, segment),)
    return {
        (f"pmem.{f}", tuple(sorted(((otel.DRIVE_ID, i), *extra)))): c.count()
        for i, m in devices.items()
        for f, c in m.counters().items()
    }


def in_memory(**reader_args: Any) -> InMemoryMetricReader:
    """An in-memory reader that keeps every device apart.

    The default registry of the pytest process holds the devices of every
    test before: more than the SDK's default cardinality limit (2000, where
    it has one) would keep apart.
    """
    if "cardinality_limits" in inspect.signature(InMemoryMetricReader).parameters:
        reader_args["cardinality_limits"] = {ObservableCounter: 1 << 24}
    return InMemoryMetricReader(**reader_args)


def provider(**reader_args: Any) -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = in_memory(**reader_args)
    return MeterProvider(metric_readers=[reader]), reader


def hammer(devices: list[PmemMetricsPerDevice], loop: Callable[[], None], rounds: int) -> None:
    """Four threads bump every field of *devices* while another runs *loop* until they end."""

    def work(seed: int) -> None:
        for n in range(rounds):
            for m in devices:
                counters = list(m.counters().values())
                counters[(n + seed) % len(counters)].add(seed + 1)
                counters[n % len(counters)].inc()

    stop = threading.Event()

    def looper() -> None:
        while not stop.is_set():
            loop()

    workers = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    run_threads(workers, [threading.Thread(target=looper)], stop)


def test_cumulative_values_equal_count_after_concurrent_increments(uid: str) -> None:
    mp, reader = provider()
    otel.instrument(mp)
    devices = {f"{uid}{i}": PmemMetricsPerDevice.alloc(f"{uid}{i}") for i in range(6)}
    hammer(list(devices.values()), lambda: points(reader, uid), rounds=300)
    assert points(reader, uid) == expected(devices)
    # each round, each device: thread s adds s + 1 and increments once
    assert sum(expected(devices).values()) == 300 * 6 * (1 + 2 + 3 + 4 + 4)
    mp.shutdown()


def test_delta_temporality_sums_to_the_increments(uid: str) -> None:
    delta = AggregationTemporality.DELTA
    mp, reader = provider(preferred_temporality={Counter: delta, ObservableCounter: delta})
    otel.instrument(mp)
    devices = {f"{uid}{i}": PmemMetricsPerDevice.alloc(f"{uid}{i}") for i in range(4)}
    sums: dict[Any, int] = {}

    def collect() -> None:
        for key, value in points(reader, uid).items():
            assert value >= 0
            sums[key] = sums.get(key, 0) + value

    for _ in range(3):  # collections during and between the increments
        hammer(list(devices.values()), collect, rounds=200)
        collect()
    assert sums == expected(devices)
    mp.shutdown()


def test_names_unit_description_and_attributes(uid: str) -> None:
    mp, reader = provider()
    otel.instrument(mp)
    drive_id = f"{uid}drv"
    m = PmemMetricsPerDevice.alloc(drive_id)
    m.cfg_fails.add(3)
    data = reader.get_metrics_data()
    assert data is not None
    (rm,) = data.resource_metrics
    (sm,) = [x for x in rm.scope_metrics if x.scope.name == otel.SCOPE]
    assert sm.scope.name == "pmem_metrics" and sm.scope.version == pmem_metrics.__version__
    assert [x.name for x in sm.metrics] == [f"pmem.{f}" for f in FIELDS]
    for metric, field in zip(sm.metrics, FIELDS):
        assert metric.unit == "{event}" and metric.description == FIELD_DOCS[field]
        assert metric.data.is_monotonic
        assert metric.data.aggregation_temporality == AggregationTemporality.CUMULATIVE
        mine = [p for p in metric.data.data_points if p.attributes == {"pmem.drive_id": drive_id}]
        assert [p.value for p in mine] == [m.counters()[field].count()]
        assert all(set(p.attributes or {}) == {"pmem.drive_id"} for p in metric.data.data_points)
    mp.shutdown()


def test_segments_get_pmem_segment(tmp_path: Path) -> None:
    segs = {name: open_segment(tmp_path / name) for name in ("vm-1", "vm-2")}
    devices = {name: {"drv0": seg.alloc("drv0")} for name, seg in segs.items()}
    devices["vm-1"]["drv0"].event_fails.add(7)
    devices["vm-2"]["drv0"].queue_event_count.add(9)
    mp, reader = provider()
    otel.instrument(mp, segments=segs)
    assert points(reader) == {
        **expected(devices["vm-1"], "vm-1"),
        **expected(devices["vm-2"], "vm-2"),
    }
    mp.shutdown()


def test_a_retired_device_ends_its_series(tmp_path: Path) -> None:
    seg = open_segment(tmp_path / "seg")
    gone, kept = seg.alloc("gone"), seg.alloc("kept")
    gone.cfg_fails.add(2)
    kept.cfg_fails.add(5)
    mp, reader = provider()
    otel.instrument(mp, segments={"s": seg})
    both = {**expected({"gone": gone}, "s"), **expected({"kept": kept}, "s")}
    assert points(reader) == both
    seg.retire("gone")
    assert points(reader) == both  # until its final flush, read() shows it
    seg.flush_metrics()  # the final delta
    assert points(reader) == expected({"kept": kept}, "s")
    mp.shutdown()


def counting_peeks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every registry otel reads from now on, once per read."""
    reads: list[object] = []
    real = follow.peek  # otel reads as a scrape does: a segment through follow.Followed

    def peek(r: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(r)
        return real(r, *args, **kwargs)

    monkeypatch.setattr(follow, "peek", peek)
    monkeypatch.setattr(_scrape, "peek", peek)  # the default registry
    return reads


def test_one_read_per_registry_per_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segs = {name: open_segment(tmp_path / name) for name in ("a", "b")}
    for seg in segs.values():
        seg.alloc("drv0").cfg_fails.inc()
    reader, second = in_memory(), in_memory()
    mp = MeterProvider(metric_readers=[reader, second])
    reads = counting_peeks(monkeypatch)
    otel.instrument(mp, segments=segs)
    for n in range(1, 4):
        assert len(points(reader)) == len(points(second)) == 2 * len(FIELDS)
        assert len(reads) == 2 * 2 * n  # two readers, two segments
    mp.shutdown()


def test_uninstrument_stops_the_callbacks(uid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mp, reader = provider()
    PmemMetricsPerDevice.alloc(f"{uid}drv").activate_fails.inc()
    handle = otel.instrument(mp)
    assert len(points(reader, uid)) == len(FIELDS)
    reads = counting_peeks(monkeypatch)
    handle.uninstrument()
    handle.uninstrument()  # again: nothing
    assert points(reader, uid) == {}
    assert reads == []  # the callbacks read nothing any more
    again = otel.instrument(mp)  # the same provider, its instruments made already
    assert len(points(reader, uid)) == len(FIELDS) and len(reads) == 1
    again.uninstrument()
    mp.shutdown()


def test_an_unreadable_segment_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = open_segment(tmp_path / "good"), open_segment(tmp_path / "bad")
    devices = {"drv0": good.alloc("drv0")}
    devices["drv0"].cfg_fails.add(4)
    bad.alloc("drv1").cfg_fails.inc()
    mp, reader = provider()
    otel.instrument(mp, segments={"good": good, "bad": bad})
    os.unlink(tmp_path / "bad")  # removed: a read raises SegmentReplacedError
    with caplog.at_level(logging.WARNING, logger="pmem_metrics"):
        for _ in range(3):  # said once, not at every collection
            assert points(reader) == expected(devices, "good")
    (record,) = caplog.records
    assert record.getMessage().startswith("pmem_metrics: cannot read segment 'bad': ")
    assert str(tmp_path / "bad") in record.getMessage()
    mp.shutdown()


def test_reopen_follows_a_replaced_segment(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    open_segment(path).alloc("old").cfg_fails.inc()
    mp, reader = provider()
    otel.instrument(mp, segments={"s": open_segment(path, readonly=True)}, reopen=True)
    assert {dict(k[1])[otel.DRIVE_ID] for k in points(reader)} == {"old"}
    os.unlink(path)
    last = {"old": open_segment(path.with_name("unused")).alloc("old")}
    last["old"].cfg_fails.inc()  # what the old segment had: its final counts, once
    assert points(reader) == expected(last, "s")
    assert points(reader) == {}  # nothing at the path: logged, skipped
    new = {"new": open_segment(path).alloc("new")}
    new["new"].event_fails.add(2)
    assert points(reader) == expected(new, "s")
    mp.shutdown()


def test_instrument_refuses_bad_arguments() -> None:
    mp, _ = provider()
    with pytest.raises(TypeError):
        otel.instrument(mp, segments={"a": "not a registry"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        otel.instrument(mp, reopen=1)  # type: ignore[arg-type]


# ---- OTLP/HTTP: a receiver in the test decodes what comes ----------------------------


class Receiver:
    """An OTLP/HTTP metrics receiver on 127.0.0.1; bound at once, listening once started.

    Until :meth:`start`, its port is bound but not listening: a connection is
    refused, as by a collector that is down, and no other process can take
    the port meanwhile.
    """

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.refuse = 0
        """Requests still to refuse, with HTTP 400 (which the OTLP client does not retry)."""
        self.refused = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._cond:
                    refuse = receiver.refuse > 0
                    receiver.refuse -= refuse
                    receiver.refused += refuse
                if refuse:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/metrics"
                assert self.headers["Content-Type"] == "application/x-protobuf"
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                reply = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                with receiver._cond:
                    receiver.requests.append(request)
                    receiver._cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.server.server_activate()
        # Polled every 50 ms, not 0.5 s: close() waits for a poll to see the shutdown.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(PATIENCE)
        self.server.server_close()

    def wait_for(self, check: Callable[[dict[Any, int]], bool], what: str) -> dict[Any, int]:
        """The values of the latest request once ``check(values)`` holds; fail after PATIENCE."""
        deadline = time.monotonic() + PATIENCE
        with self._cond:
            while not (self.requests and check(values(self.requests[-1]))):
                left = deadline - time.monotonic()
                assert left > 0, f"never: {what}; got {len(self.requests)} requests"
                self._cond.wait(left)
            return values(self.requests[-1])


def values(request: ExportMetricsServiceRequest) -> dict[Any, int]:
    """The pmem points of *request*: value by (metric, segment or None, drive id), checked."""
    out: dict[Any, int] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name != otel.SCOPE:
                continue  # the SDK's own metrics, which some of its versions add
            for m in sm.metrics:
                field = m.name.removeprefix("pmem.")
                assert m.unit == "{event}" and m.description == FIELD_DOCS[field]
                assert m.sum.is_monotonic
                assert m.sum.aggregation_temporality == 2  # AGGREGATION_TEMPORALITY_CUMULATIVE
                for p in m.sum.data_points:
                    attrs = {a.key: a.value.string_value for a in p.attributes}
                    key = (m.name, attrs.get(otel.SEGMENT), attrs[otel.DRIVE_ID])
                    out[key] = p.as_int
    return out


def resource(request: ExportMetricsServiceRequest) -> dict[str, str]:
    (rm,) = request.resource_metrics
    return {a.key: a.value.string_value for a in rm.resource.attributes}


def wanted(devices: dict[str, PmemMetricsPerDevice], segment: str | None) -> dict[Any, int]:
    return {
        (f"pmem.{f}", segment, i): c.count()
        for i, m in devices.items()
        for f, c in m.counters().items()
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_otlp_http_round_trip(tmp_path: Path, receiver: Receiver) -> None:
    seg = open_segment(tmp_path / "seg")
    devices = {f"drv{i}": seg.alloc(f"drv{i}") for i in range(5)}
    for n, m in enumerate(devices.values()):
        m.activate_fails.add(n)
        m.queue_event_count.add(2**40 + n)
    receiver.start()
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=receiver.url), export_interval_millis=math.inf
    )
    mp = MeterProvider(metric_readers=[reader])
    otel.instrument(mp, segments={"vm-1": seg})
    assert reader.force_flush()
    assert receiver.wait_for(bool, "an export") == wanted(devices, "vm-1")
    devices["drv3"].cfg_fails.add(11)
    assert reader.force_flush()  # cumulative: the next export has the totals
    assert receiver.wait_for(lambda v: v == wanted(devices, "vm-1"), "the new counts")
    assert len(receiver.requests) == 2
    mp.shutdown()


def test_a_count_past_int64_is_clamped_with_one_warning_and_the_others_arrive(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    seg = open_segment(tmp_path / "seg")
    devices = {f"drv{i}": seg.alloc(f"drv{i}") for i in range(3)}
    for n, m in enumerate(devices.values()):
        m.activate_fails.add(n + 1)
    devices["drv1"].cfg_fails.add(2**64 - 5)  # OTLP's integers are signed 64-bit
    want = wanted(devices, "vm-1")
    want["pmem.cfg_fails", "vm-1", "drv1"] = 2**63 - 1
    receiver.start()
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=receiver.url), export_interval_millis=math.inf
    )
    mp = MeterProvider(metric_readers=[reader])
    otel.instrument(mp, segments={"vm-1": seg})
    with caplog.at_level(logging.WARNING, logger="pmem_metrics"):
        for n in range(1, 4):  # three collections, one warning
            reader.force_flush()
            got = receiver.wait_for(lambda _, n=n: len(receiver.requests) >= n, f"export {n}")
            assert got == want
    mp.shutdown()
    said = [r.getMessage() for r in caplog.records if r.name == "pmem_metrics"]
    assert len(said) == 1, said
    assert "'drv1'" in said[0] and "cfg_fails" in said[0] and "'vm-1'" in said[0]
    assert str(2**63 - 1) in said[0]


def test_exporter_pushes_through_a_receiver_down_then_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "seg"
    seg = open_segment(path)
    devices = {f"drv{i}": seg.alloc(f"drv{i}") for i in range(3)}
    for n, m in enumerate(devices.values()):
        m.event_fails.add(n + 1)
    env = {**os.environ, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "1"}  # a failed export fails fast
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("OTEL_RESOURCE_ATTRIBUTES", None)
    cmd = [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--otlp-endpoint", receiver.url, "--otlp-interval", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reading = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr or ()])
    reading.start()
    try:
        said = [lines.get(timeout=PATIENCE)]
        assert said[0] == f"export: pushing OpenTelemetry metrics to {receiver.url} every 0.2 s\n"
        said.append(lines.get(timeout=PATIENCE))  # the receiver is down: refused
        failed = f"export: OTLP export to {receiver.url} failed (the next one carries its counts): "
        assert said[-1] == failed + "[Errno 111] Connection refused\n"
        receiver.start()
        got = receiver.wait_for(bool, "an export once the receiver is up")
        assert got == wanted(devices, str(path))
        devices["drv0"].cfg_fails.add(5)  # after the last export: the final one carries it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0
    finally:
        proc.kill()
    reading.join(PATIENCE)
    assert proc.stdout is not None and proc.stdout.read() == ""  # --otlp-endpoint alone: no lines
    assert receiver.wait_for(lambda v: v == wanted(devices, str(path)), "the final export")
    assert resource(receiver.requests[-1])["service.name"] == "pmem_metrics export"
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    said += rest
    assert said[-1].startswith("export: served, 1 segment, ")
    works_again = f"export: OTLP export to {receiver.url} works again\n"
    assert said[1:-1] == [said[1], works_again], said  # one line for all the failures


def test_a_collector_refusing_5_exports_in_a_row_is_said_once_and_its_recovery_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "seg"
    seg = open_segment(path)
    devices = {"drv0": seg.alloc("drv0")}
    devices["drv0"].cfg_fails.add(3)
    receiver.refuse = 5
    receiver.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(path),
         "--otlp-endpoint", receiver.url, "--otlp-interval", "0.05"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        got = receiver.wait_for(bool, "an export after the refused ones")
        assert receiver.refused == 5 and got == wanted(devices, str(path))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    what = f"export: OTLP export to {receiver.url}"
    said = [line for line in err.splitlines() if line.startswith(what)]
    assert said == [
        f"{what} failed (the next one carries its counts): HTTP 400 Bad Request",
        f"{what} works again",
    ], err


def test_exporter_refuses_a_url_that_is_not_http(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", "x", "--otlp-endpoint", "x:1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--otlp-endpoint: must be an http:// or https:// URL" in r.stderr
