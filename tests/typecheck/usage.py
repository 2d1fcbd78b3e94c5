"""User code as the README shows it; CI runs ``mypy --strict`` over it (it is not a test)."""

from __future__ import annotations

import io

from pmem_metrics import (
    FIELDS,
    METRICS,
    Counter,
    MetricsWriter,
    PmemMetricsPerDevice,
    flush_metrics,
    flush_metrics_json,
    get_include,
)
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
