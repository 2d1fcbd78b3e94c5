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
the scrape of the others.  With ``reopen=True``, a segment whose path comes
to name another file (removed and created again: a restarted VM, say) is
opened again by that path, and its name's series are the new segment's
from then on (what the exporter does).

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

from ._binding import FIELD_DOCS, FIELDS
from ._snapshot import Snapshot, peek
from .errors import PmemMetricsError, SegmentReplacedError
from .registry import Registry
from .segment import open_segment

_log = logging.getLogger("pmem_metrics")

SCRAPE_TIMEOUT = 5.0
"""Seconds one scrape waits, in all, for segments whose registry lock another process holds."""

__all__ = ["PmemCollector", "register"]


class _Source:
    """One registry a collector reads, and the label values its series get."""

    __slots__ = ("labels", "registry")

    def __init__(self, labels: tuple[str, ...], registry: Registry) -> None:
        self.labels = labels
        self.registry = registry  # replaced by the one its path names now, on reopening


class PmemCollector(Collector):
    """Exposes every device's cumulative counts as ``pmem_<field>_total{drive_id=...}``.

    Of the process's default registry; or, given *segments* (a name for each
    :class:`~pmem_metrics.Registry`), of each of those, every series labelled
    ``segment`` with its registry's name.  A segment whose registry lock
    another process holds (stopped in the middle of an insert, say) is waited
    for until *timeout* seconds into the scrape, then counts as unreadable.

    *reopen*: a segment whose path no longer names the file it opened
    (:class:`~pmem_metrics.SegmentReplacedError`: removed, or replaced) is
    opened again, once per scrape, as ``open_segment(path, readonly=...,
    create=False)`` (read-only if it was; never created, never trusted), and
    read under the same name from then on; until a segment is there again,
    it is unreadable (``pmem_segment_up`` 0).  Without *reopen* it stays
    unreadable.

    Raises ``TypeError`` for *segments* that do not map ``str`` to
    ``Registry`` or a *reopen* that is not a ``bool``, ``ValueError`` for a
    *timeout* that is not a positive number.
    """

    def __init__(
        self,
        segments: Mapping[str, Registry] | None = None,
        *,
        timeout: float = SCRAPE_TIMEOUT,
        reopen: bool = False,
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
        if not isinstance(reopen, bool):
            raise TypeError(f"reopen must be a bool, not {type(reopen).__name__}")
        self._labels = ["drive_id"] if segments is None else ["drive_id", "segment"]
        self._sources = (
            [_Source((), Registry.default())]
            if segments is None
            else [_Source((name,), r) for name, r in segments.items()]
        )
        self._reopen = reopen

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The families, without samples: registering reads no counter."""
        return [*(self._family(name) for name in FIELDS), *self._up()]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """One family per field, one sample per device, from one read of each registry."""
        families = [self._family(name) for name in FIELDS]
        up = self._up()
        deadline = time.monotonic() + self._timeout  # each segment still gets one try
        for source in self._sources:
            extra = source.labels
            try:
                snap = self._peek(source, deadline)
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
                self._add_room(up[1:], source, extra)
        return iter([*families, *up])

    @staticmethod
    def _add_room(room: list[Any], source: _Source, extra: tuple[str, ...]) -> None:
        """A segment's capacity, devices, retired devices and allocation failures."""
        try:
            stats = source.registry.stats()
        except (PmemMetricsError, OSError) as e:  # read a moment ago: logged, left out
            _log.warning("pmem_metrics: cannot read segment %r's room: %s", extra[0], e)
            return
        for family, value in zip(room, (stats.capacity or 0, *stats[1:])):
            family.add_metric(list(extra), value)

    def _peek(self, source: _Source, deadline: float) -> Snapshot:
        """Read *source*; if its path names another segment now and *reopen* was asked, that one."""
        old = source.registry
        try:
            return peek(old._r, deadline)
        except SegmentReplacedError:
            if not self._reopen or old.path is None:
                raise
        # ENOENT (a SegmentError) until a new segment is there.  The old
        # registry stays open, and mapped if it was, until the process ends:
        # the C library never frees a registry.
        new = open_segment(old.path, readonly=old.readonly, create=False)
        snap = peek(new._r, deadline)
        # Concurrent scrapes may both get here: opening one file twice gives
        # the same registry, and the assignment is atomic, so either wins.
        source.registry = new
        _log.warning(
            "pmem_metrics: segment %r was removed or replaced; reading the one at %s now",
            source.labels[0],
            old.path,
        )
        return snap

    def _up(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        if len(self._labels) == 1:
            return []
        doc = "Whether the last scrape could read the segment (1) or not (0)."
        return [
            GaugeMetricFamily("pmem_segment_up", doc, labels=["segment"]),
            GaugeMetricFamily(
                "pmem_segment_capacity", "Device slots of the segment.", labels=["segment"]
            ),
            GaugeMetricFamily(
                "pmem_segment_devices", "Live devices in the segment.", labels=["segment"]
            ),
            GaugeMetricFamily(
                "pmem_segment_retired",
                "Retired devices of the segment not let go yet (final flush, or references).",
                labels=["segment"],
            ),
            CounterMetricFamily(
                "pmem_segment_alloc_failures",
                "Allocations the segment refused for want of room.",
                labels=["segment"],
            ),
        ]

    def _family(self, name: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"pmem_{name}", FIELD_DOCS[name], labels=self._labels)


def register(
    collector_registry: CollectorRegistry | None = None,
    segments: Mapping[str, Registry] | None = None,
    *,
    timeout: float = SCRAPE_TIMEOUT,
    reopen: bool = False,
) -> PmemCollector:
    """Register a :class:`PmemCollector` of *segments* with *collector_registry*; return it.

    *collector_registry* is prometheus_client's ``CollectorRegistry`` (its
    default one, ``REGISTRY``, if None; named so as not to be taken for a
    pmem :class:`~pmem_metrics.Registry`, which go in *segments*);
    *segments*, *timeout* and *reopen* as for :class:`PmemCollector` (None:
    this process's default registry).
    """
    collector = PmemCollector(segments, timeout=timeout, reopen=reopen)
    target: Any = REGISTRY if collector_registry is None else collector_registry
    target.register(collector)
    return collector
