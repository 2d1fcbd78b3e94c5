"""One OpenTelemetry collection's read of one registry: its points, each fit for OTLP.

:mod:`pmem_metrics.otel` reads each registry once per collection through a
:class:`Source`: one peek (a replaced segment followed by its path when
asked), every device's attributes, and each field's column of counts.  Two
things an exporter that runs for months must not do once a collection:

- *say the same thing again.*  A registry that cannot be read is a WARNING
  when it stops being readable and one more when it is read again, not a
  line per collection.
- *send what OTLP cannot carry.*  OTLP's integer points are signed 64-bit;
  one count of 2**63 or more (a C counter is unsigned) would make every
  export of the batch fail, every device's with it.  Such a count is sent as
  :data:`INT64_MAX` (the series stays, flat at that value, until the counter
  wraps to a small count: a reset), with one WARNING naming the device and
  field the first time (at most :data:`CLAMP_WARNINGS` a registry).
"""

from __future__ import annotations

import logging

from ._scrape import peek_following
from ._snapshot import Snapshot
from .errors import PmemMetricsError
from .registry import Registry

_log = logging.getLogger("pmem_metrics")

INT64_MAX = 2**63 - 1
"""The largest count OTLP carries (its integer points are signed 64-bit)."""

CLAMP_WARNINGS = 16
"""Devices and fields a registry names in clamp warnings; past that, counts are clamped quietly."""

SEGMENT = "pmem.segment"
"""The attribute naming a point's registry, given ``segments``."""
DRIVE_ID = "pmem.drive_id"
"""The attribute naming a point's device."""

Row = tuple[list[dict[str, str]], dict[str, list[int]]]
"""A registry's attributes per device, and its columns (counts in device order) by field name."""


class Source:
    """One registry an instrumentation reads, the attributes its points get, what it said."""

    __slots__ = ("attributes", "clamped", "down", "name", "registry")

    def __init__(self, name: str | None, registry: Registry) -> None:
        self.name = name
        self.attributes = {} if name is None else {SEGMENT: name}
        self.registry = registry  # replaced by the one its path names now, on reopening
        self.down = False  # the last read failed (said once)
        self.clamped: set[tuple[str, str]] = set()  # (drive id, field) said to be clamped

    def read(self, deadline: float, reopen: bool) -> tuple[Row, Snapshot] | None:
        """The points of this registry, and the snapshot read; ``None`` (said once) on failure."""
        what = "the default registry" if self.name is None else f"segment {self.name!r}"
        try:
            snap, self.registry = peek_following(self.registry, deadline, reopen, self.name)
        except (PmemMetricsError, OSError, ValueError) as e:
            if not self.down:
                _log.warning("pmem_metrics: OpenTelemetry: cannot read %s: %s", what, e)
                self.down = True
            return None
        if self.down:
            _log.warning("pmem_metrics: OpenTelemetry: %s can be read again", what)
            self.down = False
        ids = Snapshot.split(snap.ids_text)
        attributes = [{DRIVE_ID: i, **self.attributes} for i in ids]
        columns = dict(zip(snap.fields, snap.columns(snap.counts)))
        for field, column in columns.items():
            if column and max(column) > INT64_MAX:
                self._clamp(what, ids, field, column)
        return (attributes, columns), snap

    def _clamp(self, what: str, ids: list[str], field: str, column: list[int]) -> None:
        """Counts of *column* past :data:`INT64_MAX` set to it, each new one said once."""
        for k, value in enumerate(column):
            if value <= INT64_MAX:
                continue
            column[k] = INT64_MAX
            key = (ids[k], field)
            if key in self.clamped or len(self.clamped) >= CLAMP_WARNINGS:
                continue
            self.clamped.add(key)
            last = len(self.clamped) == CLAMP_WARNINGS
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
