"""Prometheus exposition: a prometheus_client collector for every pmem device.

Needs the optional extra ``prometheus`` (``pip install '.[prometheus]'`` from
a checkout), which brings prometheus_client.

Each field becomes a counter family ``pmem_<field>_total`` with one series per
device, labelled ``drive_id``, valued at the device's cumulative count
(``count()``), with the field's doc as HELP::

    # HELP pmem_activate_fails_total Number of times when activate failed on a pmem device.
    # TYPE pmem_activate_fails_total counter
    pmem_activate_fails_total{drive_id="drv0"} 1.0

There is no unlabelled aggregate series: ``sum(pmem_activate_fails_total)``
in PromQL is that, and an extra series in the same family would be counted
twice by it.  A scrape reads the counters without taking part in flushes: it
resets nothing, so the deltas of Firecracker-style metrics lines are the same
whether or not anything scrapes.

>>> from prometheus_client import start_http_server
>>> from pmem_metrics.prometheus import register
>>> register()  # doctest: +SKIP
>>> start_http_server(9100, addr="127.0.0.1")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

try:
    from prometheus_client.core import REGISTRY, CounterMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "pmem_metrics.prometheus needs prometheus_client: pip install '.[prometheus]'"
    ) from e

from ._binding import FIELD_DOCS, FIELDS
from ._snapshot import Snapshot, peek

__all__ = ["PmemCollector", "register"]


class PmemCollector(Collector):
    """Exposes every device's cumulative counts as ``pmem_<field>_total{drive_id=...}``."""

    def describe(self) -> Iterable[CounterMetricFamily]:
        """The families, without samples: registering reads no counter."""
        return [self._family(name) for name in FIELDS]

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One family per field, one sample per device, from one read of all counters."""
        snap = peek()
        ids = Snapshot.split(snap.ids_text)
        for name, counts in zip(FIELDS, snap.columns(snap.counts)):
            family = self._family(name)
            for drive_id, value in zip(ids, counts):
                family.add_metric([drive_id], value)
            yield family

    @staticmethod
    def _family(name: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"pmem_{name}", FIELD_DOCS[name], labels=["drive_id"])


def register(registry: CollectorRegistry | None = None) -> PmemCollector:
    """Register a :class:`PmemCollector` with *registry* (the default one if None); return it."""
    collector = PmemCollector()
    target: Any = REGISTRY if registry is None else registry
    target.register(collector)
    return collector
