"""What ``top`` watches: every segment's rows, and their rates per second between reads.

No terminal here: a :class:`Monitor` reads any :class:`Source` by a clock it
is given, so every rate, and every device that comes or goes, can be tested
with exact values.  What the view shows of the rows is :mod:`._table`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from ..registry import Counts

_WRAP = 2**64  # counters are 64-bit and wrap: a delta across the wrap is still right

_Read = tuple[float, Mapping[str, int]]  # a device's counts, and when they were read


class Row(NamedTuple):
    """One field of one device: its count, and its rates per second (``None``: not known yet)."""

    segment: str
    drive_id: str
    field: str
    total: int
    rate: float | None  # over the last interval
    average: float | None  # since the first read the device was in
    labels: tuple[tuple[str, str], ...] = ()  # its segment's, from a pattern: ((name, value), ...)


def is_zero(row: Row) -> bool:
    """Whether *row* is all zeros (its count, and its rates where known): hidden by default."""
    return row.total == 0 and not row.rate and not row.average


def _per_second(then: _Read, field: str, count: int, now: float) -> float | None:
    """The rate of *count* (read at *now*) since *then*; ``None`` without time between them."""
    when, counts = then
    if now <= when:
        return None
    return ((count - counts.get(field, count)) % _WRAP) / (now - when)


class Rates:
    """Each device's first and latest read, by segment: the rows' rates and averages."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, tuple[_Read, _Read]]] = {}

    def update(
        self, segment: str, counts: Counts, now: float, labels: tuple[tuple[str, str], ...] = ()
    ) -> list[Row]:
        """*segment*'s rows, from its *counts* read at *now* (seconds, any monotonic clock).

        A device read for the first time starts its baseline here: its rates
        are ``None`` until its next read.  A device missing from *counts* is
        forgotten (if it comes back, it starts a new baseline).
        """
        seen = self._seen.get(segment, {})
        kept: dict[str, tuple[_Read, _Read]] = {}
        rows: list[Row] = []
        for drive_id, fields in counts.items():
            latest: _Read = (now, fields)
            first, last = seen.get(drive_id, (latest, latest))
            kept[drive_id] = (first, latest)
            rows.extend(
                Row(
                    segment,
                    drive_id,
                    field,
                    n,
                    _per_second(last, field, n, now),
                    _per_second(first, field, n, now),
                    labels,
                )
                for field, n in fields.items()
            )
        self._seen[segment] = kept
        return rows

    def forget(self, segment: str) -> None:
        """Drop every baseline of *segment* (replaced, or unreadable): its devices start anew."""
        self._seen.pop(segment, None)


class Source(Protocol):
    """What a :class:`Monitor` reads: a segment by its path (a ``follow.Followed``)."""

    path: str
    error: str | None  # why the last read failed
    fresh: bool  # (re)opened since the last read: its devices start new baselines
    # Optional: labels, a pattern's names and what they matched (Followed.labels), go in its rows.

    def read(self) -> Counts | None:
        """The counts now; ``None`` when they cannot be read."""


class Monitor:
    """Every segment's rows at each :meth:`poll`, with their rates since the previous one."""

    def __init__(
        self,
        segments: Sequence[Source] | Callable[[], Sequence[Source]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._segments = segments
        self.segments: Sequence[Source] = [] if callable(segments) else segments
        """The segments read at the last poll (a callable *segments* is asked at each)."""
        self.clock = clock
        self.rows: list[Row] = []
        self.polled: float | None = None  # when the last poll read
        self.interval: float | None = None  # seconds between the last two polls
        self._rates = Rates()

    def poll(self) -> list[Row]:
        """Read every segment; the rows, also kept in :attr:`rows`."""
        now = self.clock()
        rows: list[Row] = []
        if callable(self._segments):
            self.segments = self._segments()  # segments a pattern found: as they are now
        for s in self.segments:
            counts = s.read()
            if s.fresh or counts is None:
                self._rates.forget(s.path)
                s.fresh = False
            if counts is not None:
                labels = tuple(getattr(s, "labels", {}).items())
                rows += self._rates.update(s.path, counts, now, labels)
        self.interval = None if self.polled is None else now - self.polled
        self.polled, self.rows = now, rows
        return rows

    def errors(self) -> dict[str, str | None]:
        """Each segment's path, and why its last read failed (``None``: it did not)."""
        return {s.path: s.error for s in self.segments}
