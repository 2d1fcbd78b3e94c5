"""One scrape's read of the registries: what every Prometheus rendering shows.

Both :class:`pmem_metrics.prometheus.PmemCollector` (prometheus_client's
objects) and :mod:`pmem_metrics.exposition` (text, from templates) render a
:class:`Sources`' :meth:`~Sources.read`, so they read the same counters the
same way: one peek per registry (a segment's room read with its counts), an
unreadable segment reported as such (and logged once when it becomes
unreadable, once when it is read again: not at every scrape), a replaced one
read out and reopened by its path when asked.  This module needs nothing but the package itself.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ._snapshot import Scratch, Snapshot, peek
from .errors import PmemMetricsError
from .fleet import Fleet
from .follow import Followed
from .registry import Registry

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

    __slots__ = ("down", "followed", "labels", "registry")

    def __init__(
        self, labels: tuple[str, ...], registry: Registry | None, followed: Followed | None
    ) -> None:
        self.labels = labels
        self.registry = registry  # the default registry's; a segment's is followed
        self.followed = followed
        self.down = False  # the last scrape could not read it (logged once)

    @classmethod
    def of(cls, labels: tuple[str, ...], registry: Registry, reopen: bool) -> Source:
        """*registry* as a source: a segment followed by its path."""
        if registry.path is None:
            return cls(labels, registry, None)
        followed = Followed(
            registry.path, registry=registry, readonly=registry.readonly, reopen=reopen
        )
        return cls(labels, None, followed)


class Reading(NamedTuple):
    """What one scrape found in one :class:`Source`."""

    labels: tuple[str, ...]
    """The source's label values, as :attr:`Sources.label_names` names them: ``()`` for the
    default registry, ``(segment, ...)`` otherwise."""
    snap: Snapshot | None
    """Every device's counts; ``None`` when the segment could not be read (logged)."""
    room: tuple[int, int, int, int] | None
    """A segment's capacity, devices, retired devices and allocation failures; ``None`` when
    the registry is the default one, or could not be read."""


class Sources:
    """The registries one exporter reads: the default one, or named segments and patterns.

    *segments*, *patterns*, *timeout* and *reopen* as for
    :class:`pmem_metrics.prometheus.PmemCollector`, which documents them.
    Raises ``TypeError`` for *segments* that do not map ``str`` to
    ``Registry`` or a *reopen* that is not a ``bool``, ``ValueError`` for a
    *timeout* that is not a positive number or a bad pattern.
    """

    def __init__(
        self,
        segments: Mapping[str, Registry] | None = None,
        *,
        patterns: Iterable[str] | None = None,
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
        self.fleet = Fleet(patterns) if patterns is not None else None
        self.segmented = segments is not None or self.fleet is not None
        """Whether these are named segments (series labelled ``segment``, and the room gauges)."""
        names = self.fleet.names if self.fleet is not None else ()
        self.label_names: tuple[str, ...] = ("segment", *names) if self.segmented else ()
        """The labels of every series but the device's own: ``segment``, then the patterns'."""
        self._found: dict[str, Source] = {}  # the sources the patterns found, by path
        blank = ("",) * len(names)
        self.sources = (
            [Source.of((), Registry.default(), reopen)]
            if not self.segmented
            else [Source.of((name, *blank), r, reopen) for name, r in (segments or {}).items()]
        )

    def read(self) -> list[Reading]:
        """One peek of every source, in order (a segment's room read with its counts).

        The default registry alone: a failure to read it raises (the scrape
        fails, as it should).  Segments: one that cannot be read is read as
        ``snap=None`` (one must not hide the others), logged (WARNING) at the
        first scrape that cannot read it and at the first that can again.
        """
        out = []
        deadline = time.monotonic() + self.timeout  # each segment still gets one try
        scratch = Scratch()
        for source in self._all():
            try:
                snap = self._peek(source, deadline, scratch)
            except _Absent:
                continue  # a pattern's segment gone (its final counts read already)
            except (PmemMetricsError, OSError, ValueError) as e:
                if not self.segmented:
                    raise
                found = source.followed is not None and source.followed.path in self._found
                if found and source.followed is not None and source.followed.registry is None:
                    assert self.fleet is not None  # never a segment: skipped
                    self.fleet.skipped(source.followed, e)
                    continue
                if self._went(source, down=True):
                    _log.warning("pmem_metrics: cannot read segment %r: %s", source.labels[0], e)
                out.append(Reading(source.labels, None, None))
                continue
            if source.down and self._went(source, down=False):
                _log.warning("pmem_metrics: segment %r can be read again", source.labels[0])
            out.append(Reading(source.labels, snap, snap.room))
        return out

    def _went(self, source: Source, down: bool) -> bool:
        """Mark *source* as *down* (or up); whether it was not already (to log it once)."""
        with self._said:
            changed = source.down != down
            source.down = down
        return changed

    def _all(self) -> list[Source]:
        """The sources given, then the segments the patterns match now."""
        if self.fleet is None:
            return self.sources
        found = {}
        for member in self.fleet.members():
            source = self._found.get(member.path)
            if source is None or source.followed is not member:
                labels = (member.path, *(member.labels[n] for n in self.fleet.names))
                source = Source(labels, None, member)
            found[member.path] = source
        self._found = found
        return [*self.sources, *found.values()]

    def _peek(self, source: Source, deadline: float, scratch: Scratch) -> Snapshot:
        """Read *source*: a segment's final counts once it is gone, then the one at its path."""
        if source.followed is None:
            assert source.registry is not None
            return peek(source.registry._r, deadline, scratch=scratch)
        snap = source.followed.peek(deadline, scratch)
        if snap is None and source.followed.path in self._found:
            raise _Absent  # a pattern's: gone, not down
        if snap is None:  # the path has no segment (yet)
            raise FileNotFoundError(errno.ENOENT, "no segment", source.followed.path)
        return snap


class _Absent(Exception):
    """A pattern's segment whose path has none now: left out, not down."""
