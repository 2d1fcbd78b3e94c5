"""What ``top`` shows of the rows (:mod:`._monitor`) and how: sort, filter, keys, table, JSON.

No terminal here either: every key and its effect can be tested as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..registry import Stats
from ._monitor import Row, is_zero

COLUMNS = ("segment", "drive_id", "field", "total", "rate", "average")
"""Every column, in order; the segment's is shown only when there are several segments.
Before them, with patterns that name wildcards, a column a name: :func:`label_column`."""

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


def label_column(name: str) -> str:
    """The column of the label *name* (``{vm}``: as the pattern names it, no row field's name)."""
    return f"{{{name}}}"


def header(column: str) -> str:
    """The column's header: a label's is its name in capitals."""
    return column[1:-1].upper() if column.startswith("{") else HEADERS[column]


def _value(row: Row, column: str) -> str | int | float | None:
    if column.startswith("{"):
        return dict(row.labels).get(column[1:-1], "")
    value: str | int | float | None = getattr(row, column)
    return value


def _sort_key(row: Row, column: str) -> tuple[bool, float | str]:
    value = _value(row, column)
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
            f"q quit  s sort: {header(self.sort)} ({order})  r reverse  "
            f"z zeros: {'shown' if self.zeros else 'hidden'}  / filter ids: {self.text or '-'}"
        )


def _cell(row: Row, column: str) -> str:
    value = _value(row, column)
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(rows: Iterable[Row], columns: tuple[str, ...]) -> list[str]:
    """A header line and a line per row, in aligned columns (numbers to the right)."""
    grid = [[header(c) for c in columns], *([_cell(r, c) for c in columns] for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return [
        "  ".join(
            text.rjust(width) if column in NUMERIC else text.ljust(width)
            for text, width, column in zip(line, widths, columns)
        ).rstrip()
        for line in grid
    ]


Json = dict[str, object]


def as_json(
    rows: Iterable[Row],
    errors: Mapping[str, str | None],
    interval: float | None,
    rooms: Mapping[str, tuple[int | None, int, int, int] | None] | None = None,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Json:
    """``top --json``'s object: *rows* by segment (every one in *errors*), device and field.

    *errors* maps each segment's path to why it could not be read (``None``:
    it could); *interval* is the seconds the rates are over; *rooms* each
    segment's room (:class:`~pmem_metrics.Stats`), where known; *labels*
    the labels of the segments a pattern found (``"labels": {"vm": "a"}``).
    """
    devices: dict[str, dict[str, dict[str, Json]]] = {path: {} for path in errors}
    for r in rows:
        fields = devices[r.segment].setdefault(r.drive_id, {})
        fields[r.field] = {"count": r.total, "rate": r.rate, "average": r.average}
    segments: dict[str, Json] = {
        path: {"error": errors[path], "devices": devices[path]} for path in errors
    }
    for path, room in (rooms or {}).items():
        names = ("capacity", "devices", "retired", "alloc_failures")
        segments[path]["room"] = None if room is None else dict(zip(names, room))
    for path, named in (labels or {}).items():
        if named:
            segments[path]["labels"] = dict(named)
    return {"interval": interval, "segments": segments}


def room_of(segment: object) -> Stats | None:
    """A segment's room as last read (``None``: not read, or not a segment's)."""
    room = getattr(segment, "room", None)
    return room if isinstance(room, Stats) else None


def describe(room: Stats | None) -> str:
    """A segment's room in a few words, for the live view."""
    if room is None:
        return "room not known"
    return (
        f"{room.devices} live of {room.capacity} slots, {room.retired} retired, "
        f"{room.alloc_failures} allocations refused"
    )
