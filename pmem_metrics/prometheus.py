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
from ._scrape import ROOM, SCRAPE_TIMEOUT, UP_DOC, Sources
from ._snapshot import Snapshot
from .registry import Registry

__all__ = ["SCRAPE_TIMEOUT", "PmemCollector", "register"]


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

    *patterns*: paths with wildcards, a segment at every path they match
    (:mod:`pmem_metrics.fleet`: ``/srv/jailer/firecracker/{vm}/root/run/pmem.seg``),
    found when it appears (by inotify, at the next scrape; else by a rescan
    each second) and followed as with *reopen*: once its file is gone, the next
    scrape has its final counts and then it is gone too.  Its series are
    labelled ``segment`` with its path, and with each named wildcard's match.

    Raises ``TypeError`` for *segments* that do not map ``str`` to
    ``Registry`` or a *reopen* that is not a ``bool``, ``ValueError`` for a
    *timeout* that is not a positive number or a bad pattern (naming it).
    """

    def __init__(
        self,
        segments: Mapping[str, Registry] | None = None,
        *,
        patterns: Iterable[str] | None = None,
        timeout: float = SCRAPE_TIMEOUT,
        reopen: bool = False,
    ) -> None:
        self._sources = Sources(segments, patterns=patterns, timeout=timeout, reopen=reopen)
        self._labels = ["drive_id", *self._sources.label_names]

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The families, without samples: registering reads no counter."""
        return [*(self._family(name, FIELD_DOCS[name]) for name in FIELDS), *self._up()]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """One family per field, one sample per device, from one read of each registry."""
        # This library's fields, then any other a segment (another build's) has.
        families = {name: self._family(name, FIELD_DOCS[name]) for name in FIELDS}
        up = self._up()
        for extra, snap, room in self._sources.read():
            if snap is None:
                up[0].add_metric(list(extra), 0)
                continue
            ids = Snapshot.split(snap.ids_text)
            for name, counts in zip(snap.fields, snap.columns(snap.counts)):
                family = families.get(name) or families.setdefault(
                    name, self._family(name, snap.docs[name])
                )
                for drive_id, value in zip(ids, counts):
                    family.add_metric([drive_id, *extra], value)
            if up:
                up[0].add_metric(list(extra), 1)
            if room is not None:
                for gauge, value in zip(up[1:], room):
                    gauge.add_metric(list(extra), value)
        return iter([*families.values(), *up])

    def _up(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        if not self._sources.segmented:
            return []
        kinds: dict[str, Any] = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
        return [
            GaugeMetricFamily("pmem_segment_up", UP_DOC, labels=list(self._sources.label_names)),
            *(
                kinds[kind](name, doc, labels=list(self._sources.label_names))
                for name, kind, doc in ROOM
            ),
        ]

    def _family(self, name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"pmem_{name}", doc, labels=self._labels)


def register(
    collector_registry: CollectorRegistry | None = None,
    segments: Mapping[str, Registry] | None = None,
    *,
    patterns: Iterable[str] | None = None,
    timeout: float = SCRAPE_TIMEOUT,
    reopen: bool = False,
) -> PmemCollector:
    """Register a :class:`PmemCollector` of *segments* with *collector_registry*; return it.

    *collector_registry* is prometheus_client's ``CollectorRegistry`` (its
    default one, ``REGISTRY``, if None; named so as not to be taken for a
    pmem :class:`~pmem_metrics.Registry`, which go in *segments*);
    *segments*, *patterns*, *timeout* and *reopen* as for :class:`PmemCollector`
    (neither: this process's default registry).
    """
    collector = PmemCollector(segments, patterns=patterns, timeout=timeout, reopen=reopen)
    target: Any = REGISTRY if collector_registry is None else collector_registry
    target.register(collector)
    return collector
