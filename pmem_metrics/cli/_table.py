"""The model of ``top``: its rows and their rates, what the view shows, and the table's text.

No terminal and no segment here: a :class:`Monitor` reads any
:class:`Source` by a clock it is given, so every rate, sort, filter, key and
device that comes or goes can be tested with exact values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..registry import Counts

COLUMNS = ("segment", "drive_id", "field", "total", "rate", "average")
"""Every column, in order; the segment's is shown only when there are several segments."""

HEADERS = {
    "segment": "SEGMENT",
    "drive_id": "ID",
    "field": "FIELD",
    "total": "COUNT",
    "rate": "RATE/S",
    "average": "AVG/S",
}

NUMERIC = ("total", "rate", "average")
"""Columns aligned right and sorted high first (the text columns: A to Z)."""

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

    def update(self, segment: str, counts: Counts, now: float) -> list[Row]:
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
                )
                for field, n in fields.items()
            )
        self._seen[segment] = kept
        return rows

    def forget(self, segment: str) -> None:
        """Drop every baseline of *segment* (replaced, or unreadable): its devices start anew."""
        self._seen.pop(segment, None)


class Source(Protocol):
    """What a :class:`Monitor` reads: a segment by its path (``top.Segment``)."""

    path: str
    error: str | None  # why the last read failed
    fresh: bool  # (re)opened since the last read: its devices start new baselines

    def read(self) -> Counts | None:
        """The counts now; ``None`` when they cannot be read."""


class Monitor:
    """Every segment's rows at each :meth:`poll`, with their rates since the previous one."""

    def __init__(self, segments: Sequence[Source], clock: Callable[[], float] = time.monotonic):
        self.segments = segments
        self.clock = clock
        self.rows: list[Row] = []
        self.polled: float | None = None  # when the last poll read
        self.interval: float | None = None  # seconds between the last two polls
        self._rates = Rates()

    def poll(self) -> list[Row]:
        """Read every segment; the rows, also kept in :attr:`rows`."""
        now = self.clock()
        rows: list[Row] = []
        for s in self.segments:
            counts = s.read()
            if s.fresh or counts is None:
                self._rates.forget(s.path)
                s.fresh = False
            if counts is not None:
                rows += self._rates.update(s.path, counts, now)
        self.interval = None if self.polled is None else now - self.polled
        self.polled, self.rows = now, rows
        return rows

    def errors(self) -> dict[str, str | None]:
        """Each segment's path, and why its last read failed (``None``: it did not)."""
        return {s.path: s.error for s in self.segments}


def _sort_key(row: Row, column: str) -> tuple[bool, float | str]:
    value = getattr(row, column)
    return (value is not None, 0 if value is None else value)  # unknown rates sort lowest


@dataclass
class View:
    """What the table shows and in which order, changed by :meth:`press`.

    Rows are sorted by :attr:`sort` (numbers high first, text A to Z;
    :attr:`reverse` turns it round), ties kept in segment, id and field
    order.  :attr:`text` keeps only the devices whose id contains it; zero
    rows are hidden unless :attr:`zeros`.
    """

    columns: tuple[str, ...]
    sort: str = ""  # a column; empty: the first one
    reverse: bool = False
    zeros: bool = False
    text: str = ""
    editing: str | None = None  # the filter being typed after "/"

    def __post_init__(self) -> None:
        self.sort = self.sort or self.columns[0]

    def select(self, rows: Iterable[Row]) -> tuple[list[Row], int]:
        """The rows to show, in order, and how many zero rows were hidden."""
        matching = [r for r in rows if self.text in r.drive_id]
        shown = matching if self.zeros else [r for r in matching if not is_zero(r)]
        high_first = (self.sort in NUMERIC) != self.reverse
        # sorted() is stable, reverse=True too: ties stay in their order.
        shown = sorted(shown, key=lambda r: _sort_key(r, self.sort), reverse=high_first)
        return shown, len(matching) - len(shown)

    def press(self, key: str) -> bool:
        """Act on *key* (a character; ``"\\b"`` erases, ``"\\n"`` enters); ``True``: quit.

        ``q`` quits, ``s`` sorts by the next column, ``r`` reverses, ``z``
        shows or hides zero rows, ``/`` starts typing a filter: Enter applies
        it (an empty one clears it), Escape cancels.
        """
        if self.editing is not None:
            if key in ("\n", "\r"):
                self.text, self.editing = self.editing, None
            elif key == "\x1b":
                self.editing = None
            elif key in ("\b", "\x7f"):
                self.editing = self.editing[:-1]
            elif key.isprintable():
                self.editing += key
            return False
        if key == "q":
            return True
        if key == "s":
            self.sort = self.columns[(self.columns.index(self.sort) + 1) % len(self.columns)]
        elif key == "r":
            self.reverse = not self.reverse
        elif key == "z":
            self.zeros = not self.zeros
        elif key == "/":
            self.editing = ""
        return False

    def keys(self) -> str:
        """The key line: what each key does, and the state it changes."""
        if self.editing is not None:
            return f"filter ids: {self.editing}_   (Enter applies, empty clears; Esc cancels)"
        high_first = (self.sort in NUMERIC) != self.reverse
        if self.sort in NUMERIC:
            order = "high first" if high_first else "low first"
        else:
            order = "Z to A" if self.reverse else "A to Z"
        return (
            f"q quit  s sort: {HEADERS[self.sort]} ({order})  r reverse  "
            f"z zeros: {'shown' if self.zeros else 'hidden'}  / filter ids: {self.text or '-'}"
        )


def _cell(row: Row, column: str) -> str:
    value = getattr(row, column)
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(rows: Iterable[Row], columns: tuple[str, ...]) -> list[str]:
    """A header line and a line per row, in aligned columns (numbers to the right)."""
    grid = [[HEADERS[c] for c in columns], *([_cell(r, c) for c in columns] for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return [
        "  ".join(
            text.rjust(width) if column in NUMERIC else text.ljust(width)
            for text, width, column in zip(line, widths, columns)
        ).rstrip()
        for line in grid
    ]


Json = dict[str, object]


def as_json(rows: Iterable[Row], errors: Mapping[str, str | None], interval: float | None) -> Json:
    """``top --json``'s object: *rows* by segment (every one in *errors*), device and field.

    *errors* maps each segment's path to why it could not be read (``None``:
    it could); *interval* is the seconds the rates are over.
    """
    devices: dict[str, dict[str, dict[str, Json]]] = {path: {} for path in errors}
    for r in rows:
        fields = devices[r.segment].setdefault(r.drive_id, {})
        fields[r.field] = {"count": r.total, "rate": r.rate, "average": r.average}
    segments = {path: {"error": errors[path], "devices": devices[path]} for path in errors}
    return {"interval": interval, "segments": segments}
