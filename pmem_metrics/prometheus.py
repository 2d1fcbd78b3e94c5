"""Prometheus exposition: a prometheus_client collector for every pmem device.

Needs the optional extra ``prometheus`` (``pip install '.[prometheus]'`` from
a checkout), which brings prometheus_client.

Each field becomes a counter family ``pmem_<field>_total`` with one series per
device, labelled ``drive_id``, valued at the device's cumulative count
(``count()``), with the field's doc as HELP::

    # HELP pmem_activate_fails_total Number of times when activate failed on a pmem device.
    # TYPE pmem_activate_fails_total counter
    pmem_activate_fails_total{drive_id="drv0"} 1.0

Given several registries (``PmemCollector(segments={"vm-1": seg1, ...})``,
see :func:`pmem_metrics.open_segment`), every series also gets a ``segment``
label, the registry's key: ``pmem_activate_fails_total{drive_id="drv0",segment="vm-1"}``,
and a gauge ``pmem_segment_up{segment="vm-1"}`` says whether the scrape could
read it (1) or not (0, the error logged): one corrupt segment does not fail
the scrape of the others.

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

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

try:
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "pmem_metrics.prometheus needs prometheus_client: pip install '.[prometheus]'"
    ) from e

from ._binding import DEFAULT_REGISTRY, FIELD_DOCS, FIELDS, CData
from ._snapshot import Snapshot, peek
from .errors import PmemMetricsError
from .registry import Registry

_log = logging.getLogger("pmem_metrics")

SCRAPE_TIMEOUT = 5.0
"""Seconds one scrape waits, in all, for segments whose registry lock another process holds."""

__all__ = ["PmemCollector", "register"]


class PmemCollector(Collector):
    """Exposes every device's cumulative counts as ``pmem_<field>_total{drive_id=...}``.

    Of the process's default registry; or, given *segments* (a name for each
    :class:`~pmem_metrics.Registry`), of each of those, every series labelled
    ``segment`` with its registry's name.  A segment whose registry lock
    another process holds (stopped in the middle of an insert, say) is waited
    for until *timeout* seconds into the scrape, then counts as unreadable.
    Raises ``TypeError`` for *segments* that do not map ``str`` to
    ``Registry``, ``ValueError`` for a *timeout* that is not a positive number.
    """

    def __init__(
        self, segments: Mapping[str, Registry] | None = None, *, timeout: float = SCRAPE_TIMEOUT
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._timeout = float(timeout)
        if segments is not None and not (
            isinstance(segments, Mapping)
            and all(isinstance(k, str) and isinstance(v, Registry) for k, v in segments.items())
        ):
            raise TypeError("segments must map str to pmem_metrics.Registry")
        self._labels = ["drive_id"] if segments is None else ["drive_id", "segment"]
        # (the extra label values, the C registry) of each registry to read
        self._sources: list[tuple[tuple[str, ...], CData]] = (
            [((), DEFAULT_REGISTRY)]
            if segments is None
            else [((name,), r._r) for name, r in segments.items()]
        )

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The families, without samples: registering reads no counter."""
        return [*(self._family(name) for name in FIELDS), *self._up()]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """One family per field, one sample per device, from one read of each registry."""
        families = [self._family(name) for name in FIELDS]
        up = self._up()
        deadline = time.monotonic() + self._timeout  # each segment still gets one try
        for extra, r in self._sources:
            try:
                snap = peek(r, deadline)
            except (PmemMetricsError, OSError, ValueError) as e:
                if not up:
                    raise  # the default registry alone: the scrape fails, as it should
                # One segment that cannot be read must not hide the others.
                _log.warning("pmem_metrics: cannot read segment %r: %s", extra[0], e)
                up[0].add_metric(list(extra), 0)
                continue
            ids = Snapshot.split(snap.ids_text)
            for family, counts in zip(families, snap.columns(snap.counts)):
                for drive_id, value in zip(ids, counts):
                    family.add_metric([drive_id, *extra], value)
            if up:
                up[0].add_metric(list(extra), 1)
        return iter([*families, *up])

    def _up(self) -> list[GaugeMetricFamily]:
        if len(self._labels) == 1:
            return []
        doc = "Whether the last scrape could read the segment (1) or not (0)."
        return [GaugeMetricFamily("pmem_segment_up", doc, labels=["segment"])]

    def _family(self, name: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"pmem_{name}", FIELD_DOCS[name], labels=self._labels)


def register(
    registry: CollectorRegistry | None = None,
    segments: Mapping[str, Registry] | None = None,
    *,
    timeout: float = SCRAPE_TIMEOUT,
) -> PmemCollector:
    """Register a :class:`PmemCollector` of *segments* with *registry*; return it.

    *registry* is prometheus_client's (its default one if None); *segments*
    and *timeout* as for :class:`PmemCollector` (None: this process's
    default registry).
    """
    collector = PmemCollector(segments, timeout=timeout)
    target: Any = REGISTRY if registry is None else registry
    target.register(collector)
    return collector
