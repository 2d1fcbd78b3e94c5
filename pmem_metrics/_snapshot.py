"""Snapshots of the C registry, taken so that no exception can strand one.

A ``KeyboardInterrupt`` (or any exception a signal handler raises) can
arrive between any two bytecodes, including the instant a C call returns and
before Python has stored its result.  So the C calls used here never hand a
snapshot back as a return value: each writes it into a *slot*, memory Python
allocated before the call, and the cleanup path reads the slot.  A slot frees
whatever it still holds when it is garbage collected.

A flush is, in C terms::

    slot = new_slot()
    take(slot)        waits for another flush in short slices, so Ctrl-C is
                      taken between them; the snapshot is in slot[0]
    ...render and deliver...
    publish(slot)     commit: move each counter's baseline up by what it reported
    withdraw(slot)    on an exception at any point before the caller has the
                      report: abort an open flush, or undo a published one

``withdraw`` and ``publish`` are single C calls on the slot, so the cleanup
code needs no subscript, attribute or global lookup before it reaches C.
"""

from __future__ import annotations

import errno
import time
from typing import Any, Callable

from ._binding import (
    DEFAULT_REGISTRY,
    FIELD_DOCS,
    FIELDS,
    WAIT_SLICE_MS,
    CData,
    ffi,
    lib,
    segment_wait_s,
)
from .errors import registry_error

_OWN = b"".join(f"{name}\0{FIELD_DOCS[name]}\0".encode() for name in FIELDS)
"""This library's field list as C gives a registry's: each name, NUL, doc, NUL."""
_OWN_RAW = lib.pmem_metrics_fields(ffi.NULL)
"""The C block of this library's field list: what a registry of these fields hands out."""
_OTHERS: dict[bytes, tuple[tuple[str, ...], dict[str, str]]] = {}
"""Field lists of segments another build made, decoded once each (a few at most)."""


def fields_of(block: bytes) -> tuple[tuple[str, ...], dict[str, str]]:
    """The names, and each one's doc, of a registry's field list *block* (as C gives it)."""
    if block == _OWN:
        return FIELDS, FIELD_DOCS
    known = _OTHERS.get(block)
    if known is None:
        parts = block.decode("utf-8", "replace").split("\0")[:-1]
        names = tuple(parts[0::2])
        known = names, dict(zip(names, parts[1::2]))
        if len(_OTHERS) < 64:  # bounded: a host runs a handful of builds at once
            _OTHERS[block] = known
    return known


publish = lib.pmem_metrics_snapshot_publish
withdraw = lib.pmem_metrics_snapshot_withdraw
dispose = lib.pmem_metrics_snapshot_dispose


class Snapshot:
    """The ids and numbers of one C snapshot, in id order, copied out in a few calls."""

    __slots__ = ("aggregate", "counts", "diffs", "docs", "fields", "ids_text", "nf", "room")

    def __init__(
        self, s: CData, counts: bool = False, diffs: bool = True, scratch: Scratch | None = None
    ) -> None:
        size = scratch.size if scratch is not None else ffi.new("size_t *")
        n = lib.pmem_metrics_snapshot_len(s)
        raw = lib.pmem_metrics_snapshot_ids(s, size)
        # Every id followed by NUL; ids never contain NUL (C rejects it).
        self.ids_text: str = ffi.unpack(raw, size[0]).decode("utf-8")
        # Its registry's fields: this library's, or a segment's that another build made.
        raw = lib.pmem_metrics_snapshot_fields(s, size)
        if raw == _OWN_RAW:
            self.fields, self.docs = FIELDS, FIELD_DOCS
        else:
            self.fields, self.docs = fields_of(ffi.unpack(raw, size[0]))
        self.nf: int = len(self.fields)
        nf = self.nf
        # A flush reads diffs and their aggregate; a peek (a scrape) the counts,
        # and the diffs too when asked what the next flush would report.
        self.diffs: list[int] = []
        self.aggregate: list[int] = []
        self.counts: list[int] = []
        self.room: tuple[int, int, int, int] | None = None
        """A segment's capacity, devices, retired devices and allocation failures, read with
        its counts (a peek); None for a private registry's."""
        if counts:
            self.counts = ffi.unpack(lib.pmem_metrics_snapshot_counts(s), n * nf)
            room = scratch.room if scratch is not None else Scratch.new_room()
            if lib.pmem_metrics_snapshot_stats(s, room) == 0:
                self.room = (room.capacity, room.devices, room.retired, room.alloc_failures)
        if diffs:
            self.diffs = ffi.unpack(lib.pmem_metrics_snapshot_diffs(s), n * nf)
            self.aggregate = ffi.unpack(lib.pmem_metrics_snapshot_aggregate(s), nf)

    @staticmethod
    def split(ids_text: str) -> list[str]:
        """The ids in *ids_text* (every id followed by NUL), in order."""
        return ids_text.split("\0")[:-1]

    def columns(self, values: list[int]) -> list[list[int]]:
        """*values* (diffs or counts) split into one list per field, each in id order."""
        return [values[f :: self.nf] for f in range(self.nf)]


def new_slot() -> CData:
    """A ``struct pmem_metrics_snapshot *[1]`` that disposes of its snapshot when collected."""
    return ffi.gc(ffi.new("struct pmem_metrics_snapshot *[1]"), dispose)


class Scratch:
    """The C memory peeks made one after another reuse: a slot and out-parameters.

    A scrape of thousands of segments makes one, not one each.  Not to be
    shared between threads (each call fills its out-parameters).
    """

    __slots__ = ("room", "size", "slot")

    def __init__(self) -> None:
        self.slot = new_slot()
        self.size: Any = ffi.new("size_t *")
        self.room = self.new_room()

    @staticmethod
    def new_room() -> Any:
        """A ``struct pmem_metrics_registry_stats *`` (``Any``: its fields are read by name)."""
        return ffi.new("struct pmem_metrics_registry_stats *")


def _into(
    call: Callable[[CData, CData, int], int],
    r: CData,
    slot: CData,
    deadline: float | None,
    busy: str,
    doing: str,
) -> None:
    """``call(r, slot, WAIT_SLICE_MS)`` until it succeeds, in slices (Ctrl-C is taken between).

    Past *deadline* (``time.monotonic()``), ``TimeoutError`` saying *busy*; a
    segment's wait is bounded in any case (:func:`segment_wait_s`), and its
    failures name it (*doing* says what failed).
    """
    while call(r, slot, WAIT_SLICE_MS) != 0:
        err = ffi.errno
        if err != errno.ETIMEDOUT:
            raise registry_error(err, r, doing, "cannot take a metrics snapshot")
        if deadline is None and lib.pmem_metrics_registry_is_shared(r):
            deadline = time.monotonic() + segment_wait_s()
        if deadline is not None and time.monotonic() >= deadline:
            raise registry_error(err, r, doing, busy)


def take(slot: CData, deadline: float | None = None, r: CData = DEFAULT_REGISTRY) -> Snapshot:
    """Open a flush of the C registry *r* into *slot*, waiting for others in interruptible slices.

    *deadline* (``time.monotonic()``) bounds the wait: past it, ``TimeoutError``.
    """
    _into(
        lib.pmem_metrics_registry_snapshot_take_into,
        r,
        slot,
        deadline,
        "another metrics flush is still in progress",
        "flush",
    )
    return Snapshot(slot[0])


def peek(
    r: CData = DEFAULT_REGISTRY,
    deadline: float | None = None,
    diffs: bool = False,
    scratch: Scratch | None = None,
) -> Snapshot:
    """Every device's cumulative counts in the C registry *r* (and *diffs*), without flushing.

    A peek waits for no flush and takes no lock (in a shared segment it
    reads the file without one); *deadline* (``time.monotonic()``) is kept
    for the callers that bound every call they make.  *scratch*: C memory
    to reuse (peeks of many registries in a row, in one thread).
    """
    if scratch is None:
        scratch = Scratch()
    slot = scratch.slot
    _into(
        lib.pmem_metrics_registry_snapshot_peek_into,
        r,
        slot,
        deadline,
        "the registry is busy",
        "read",
    )
    try:
        return Snapshot(slot[0], counts=True, diffs=diffs, scratch=scratch)
    finally:
        dispose(slot)  # copied out: freed now, the slot empty for the next peek
