"""One scrape's read of the registries: what every Prometheus rendering shows.

Both :class:`pmem_metrics.prometheus.PmemCollector` (prometheus_client's
objects) and :mod:`pmem_metrics.exposition` (text, from templates) render a
:class:`Sources`' :meth:`~Sources.read`, so they read the same counters the
same way: one peek per registry, the segment's room read right after it, an
unreadable segment reported as such (and logged once when it becomes
unreadable, once when it is read again: not at every scrape), a replaced one
reopened by its path when asked.  This module needs nothing but the package itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import NamedTuple

from ._snapshot import Snapshot, peek
from .errors import PmemMetricsError, SegmentReplacedError
from .registry import Registry
from .segment import open_segment

_log = logging.getLogger("pmem_metrics")

SCRAPE_TIMEOUT = 5.0
"""Seconds one scrape waits, in all, for segments whose registry lock another process holds."""

UP_DOC = "Whether the last scrape could read the segment (1) or not (0)."
"""HELP of ``pmem_segment_up``, the first family after the fields' (segments only)."""

ROOM = (
    ("pmem_segment_capacity", "gauge", "Device slots of the segment."),
    ("pmem_segment_devices", "gauge", "Live devices in the segment."),
    (
        "pmem_segment_retired",
        "gauge",
        "Retired devices of the segment not let go yet (final flush, or references).",
    ),
    ("pmem_segment_alloc_failures", "counter", "Allocations the segment refused for want of room."),
)
"""The families of a segment's room, after ``pmem_segment_up``, in :attr:`Reading.room`'s
order: (name, type, HELP)."""


class Source:
    """One registry a scrape reads, and the label values its series get."""

    __slots__ = ("down", "labels", "registry")

    def __init__(self, labels: tuple[str, ...], registry: Registry) -> None:
        self.labels = labels
        self.registry = registry  # replaced by the one its path names now, on reopening
        self.down = False  # the last scrape could not read it (logged once)


class Reading(NamedTuple):
    """What one scrape found in one :class:`Source`."""

    labels: tuple[str, ...]
    """The source's label values: ``()`` for the default registry, ``(segment,)`` otherwise."""
    snap: Snapshot | None
    """Every device's counts; ``None`` when the segment could not be read (logged)."""
    room: tuple[int, int, int, int] | None
    """A segment's capacity, devices, retired devices and allocation failures; ``None`` when
    the registry is the default one, or could not be read."""


class Sources:
    """The registries one exporter reads: the default one, or named segments.

    *segments*, *timeout* and *reopen* as for
    :class:`pmem_metrics.prometheus.PmemCollector`, which documents them.
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
        if segments is not None and not (
            isinstance(segments, Mapping)
            and all(isinstance(k, str) and isinstance(v, Registry) for k, v in segments.items())
        ):
            raise TypeError("segments must map str to pmem_metrics.Registry")
        if not isinstance(reopen, bool):
            raise TypeError(f"reopen must be a bool, not {type(reopen).__name__}")
        self.timeout = float(timeout)
        self.reopen = reopen
        self._said = threading.Lock()  # concurrent scrapes log a segment going down or up once
        self.segmented = segments is not None
        """Whether these are named segments (series labelled ``segment``, and the room gauges)."""
        self.sources = (
            [Source((), Registry.default())]
            if segments is None
            else [Source((name,), r) for name, r in segments.items()]
        )

    def read(self) -> list[Reading]:
        """One peek of every source, in order, and each segment's room right after its peek.

        The default registry alone: a failure to read it raises (the scrape
        fails, as it should).  Segments: one that cannot be read is read as
        ``snap=None`` (one must not hide the others), logged (WARNING) at the
        first scrape that cannot read it and at the first that can again.
        """
        out = []
        deadline = time.monotonic() + self.timeout  # each segment still gets one try
        for source in self.sources:
            try:
                snap = self._peek(source, deadline)
            except (PmemMetricsError, OSError, ValueError) as e:
                if not self.segmented:
                    raise
                if self._went(source, down=True):
                    _log.warning("pmem_metrics: cannot read segment %r: %s", source.labels[0], e)
                out.append(Reading(source.labels, None, None))
                continue
            if source.down and self._went(source, down=False):
                _log.warning("pmem_metrics: segment %r can be read again", source.labels[0])
            out.append(Reading(source.labels, snap, self._room(source)))
        return out

    def _went(self, source: Source, down: bool) -> bool:
        """Mark *source* as *down* (or up); whether it was not already (to log it once)."""
        with self._said:
            changed = source.down != down
            source.down = down
        return changed

    def _room(self, source: Source) -> tuple[int, int, int, int] | None:
        """A segment's capacity, devices, retired devices and allocation failures."""
        if not self.segmented:
            return None
        try:
            stats = source.registry.stats()
        except (PmemMetricsError, OSError) as e:  # read a moment ago: logged, left out
            _log.warning("pmem_metrics: cannot read segment %r's room: %s", source.labels[0], e)
            return None
        return (stats.capacity or 0, stats.devices, stats.retired, stats.alloc_failures)

    def _peek(self, source: Source, deadline: float) -> Snapshot:
        """Read *source*; if its path names another segment now and *reopen* was asked, that one."""
        name = source.labels[0] if source.labels else None  # the default registry: unnamed
        snap, source.registry = peek_following(source.registry, deadline, self.reopen, name)
        return snap


def peek_following(
    registry: Registry, deadline: float, reopen: bool, name: object
) -> tuple[Snapshot, Registry]:
    """A peek of *registry*, and the registry read: with *reopen*, a segment replaced
    at its path is opened again by that path and read instead (logged, as *name*).

    ``SegmentReplacedError`` without *reopen*; ``ENOENT`` (a ``SegmentError``)
    until a new segment is there.  The old registry stays open, and mapped if
    it was, until the process ends: the C library never frees a registry.
    Concurrent readers may both reopen: opening one file twice gives the same
    registry, so either's answer is right.
    """
    try:
        return peek(registry._r, deadline), registry
    except SegmentReplacedError:
        if not reopen or registry.path is None:
            raise
    new = open_segment(registry.path, readonly=registry.readonly, create=False)
    snap = peek(new._r, deadline)
    _log.warning(
        "pmem_metrics: segment %r was removed or replaced; reading the one at %s now",
        name,
        registry.path,
    )
    return snap, new
