"""One OpenTelemetry collection's points of one registry, each fit for OTLP.

:mod:`pmem_metrics.otel` reads every registry once per collection as a
scrape does (:class:`pmem_metrics._scrape.Sources`: one peek each, a segment
that cannot be read said once when it goes down and once when it is back,
one removed or replaced read out and followed).  This module turns one such
reading into points: every device's attributes, and each field's column of
counts -- and never sends what OTLP cannot carry.  OTLP's integer points are
signed 64-bit; one count of 2**63 or more (a C counter is unsigned) would
make every export of the batch fail, every device's with it.  Such a count
is sent as :data:`INT64_MAX` (the series stays, flat at that value, until the
counter wraps to a small count: a reset), with one WARNING naming the device
and field the first time (at most :data:`CLAMP_WARNINGS` in all).
"""

from __future__ import annotations

import logging

from ._scrape import Reading
from ._snapshot import Snapshot

_log = logging.getLogger("pmem_metrics")

INT64_MAX = 2**63 - 1
"""The largest count OTLP carries (its integer points are signed 64-bit)."""

CLAMP_WARNINGS = 16
"""Devices and fields named in clamp warnings; past that, counts are clamped quietly."""

SEGMENT = "pmem.segment"
"""The attribute naming a point's registry, given ``segments``."""
DRIVE_ID = "pmem.drive_id"
"""The attribute naming a point's device."""

Row = tuple[list[dict[str, str]], dict[str, list[int]]]
"""A registry's attributes per device, and its columns (counts in device order) by field name."""


class Points:
    """What an instrumentation makes of readings, and the clamps it said already."""

    def __init__(self, label_names: tuple[str, ...]) -> None:
        # pmem.segment for the scrape's segment label, a pattern's labels as they are.
        self._names = (SEGMENT, *label_names[1:])
        self._clamped: set[tuple[str, str, str]] = set()  # (segment, drive id, field) said
        # Each source's attributes per device, kept while its ids and labels are the same
        # (what the last collection used: a gone segment's go).
        self._attrs: dict[tuple[tuple[str, ...], str], list[dict[str, str]]] = {}
        self._used: dict[tuple[tuple[str, ...], str], list[dict[str, str]]] = {}

    def start(self) -> None:
        """A new collection: the attributes the last one did not use are let go."""
        self._attrs, self._used = self._used, {}

    def row(self, reading: Reading) -> tuple[Row, Snapshot] | None:
        """*reading*'s points, and its snapshot; ``None`` if it could not be read."""
        labels, snap, _ = reading
        if snap is None:
            return None
        key = (labels, snap.ids_text)
        attrs = self._attrs.get(key) or self._used.get(key)
        if attrs is None:
            extra = {n: v for n, v in zip(self._names, labels) if v}
            attrs = [{DRIVE_ID: i, **extra} for i in Snapshot.split(snap.ids_text)]
        self._used[key] = attrs
        columns = dict(zip(snap.fields, snap.columns(snap.counts)))
        for field, column in columns.items():
            if column and max(column) > INT64_MAX:
                ids = Snapshot.split(snap.ids_text)
                self._clamp(labels[0] if labels else "", ids, field, column)
        return (attrs, columns), snap

    def _clamp(self, segment: str, ids: list[str], field: str, column: list[int]) -> None:
        """Counts of *column* past :data:`INT64_MAX` set to it, each new one said once."""
        what = f"segment {segment!r}" if segment else "the default registry"
        for k, value in enumerate(column):
            if value <= INT64_MAX:
                continue
            column[k] = INT64_MAX
            key = (segment, ids[k], field)
            if key in self._clamped or len(self._clamped) >= CLAMP_WARNINGS:
                continue
            self._clamped.add(key)
            last = len(self._clamped) == CLAMP_WARNINGS
            _log.warning(
                "pmem_metrics: OpenTelemetry: %s: %r's %s is %d, past OTLP's signed 64 bits: "
                "sent as %d%s",
                what,
                ids[k],
                field,
                value,
                INT64_MAX,
                " (further ones are clamped without a warning)" if last else "",
            )
