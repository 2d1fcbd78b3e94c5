"""User code as the README shows it; CI runs ``mypy --strict`` over it (it is not a test)."""

from __future__ import annotations

import io
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pmem_metrics import (
    FIELDS,
    METRICS,
    Counter,
    MetricsWriter,
    PmemMetricsPerDevice,
    Registry,
    flush_metrics,
    flush_metrics_json,
    get_include,
    open_segment,
)
from pmem_metrics.exposition import Exposition, render, start_http_server
from pmem_metrics.otel import Instrumentation, instrument
from pmem_metrics.prometheus import register

m: PmemMetricsPerDevice = PmemMetricsPerDevice.alloc("drv0")
m.activate_fails.inc()
m.queue_event_count.add(5)
counter: Counter = m.queue_event_count
total: int = counter.count() + counter.fetch_diff()
flushed: dict[str, dict[str, int]] = flush_metrics()
text: str = flush_metrics_json()
names: tuple[str, ...] = FIELDS
writer = MetricsWriter()
writer.init(io.StringIO(), id="vm-1", properties={"region": "eu"})
written: bool = writer.write()
METRICS.start_periodic(60.0, at_exit=False)
METRICS.stop_periodic()
include: str = get_include()
collector = register()
seg: Registry = open_segment("/dev/shm/pmem-typecheck", capacity=16, mode=0o600)
in_seg: PmemMetricsPerDevice = seg.alloc("drv0")
seg_text: str = seg.flush_metrics_json()
capacity: int | None = seg.capacity
seg_writer = MetricsWriter(seg)
by_segment = register(None, {"vm-1": seg, "default": Registry.default()})
readonly_seg: Registry = open_segment(
    "/dev/shm/pmem-typecheck", readonly=True, create=False, trust=False
)
is_readonly: bool = readonly_seg.readonly
seg_writer.set_registry(seg)
following = register(None, {"vm-1": readonly_seg}, reopen=True)
handle: Instrumentation = instrument()
on_segments = instrument(None, segments={"vm-1": readonly_seg}, reopen=True)
handle.uninstrument()

page_text: bytes = render()
page = Exposition({"vm-1": readonly_seg}, reopen=True)
om_text: bytes = page.render(openmetrics=True)
status, headers, body = page.respond("application/openmetrics-text", "gzip")
header_pairs: list[tuple[str, str]] = headers
handler: type[BaseHTTPRequestHandler] = page.handler()
http_server: ThreadingHTTPServer = start_http_server(0, "127.0.0.1", {"vm-1": seg})
http_server.shutdown()
