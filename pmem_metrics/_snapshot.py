"""Snapshots of the C registry: a flush (take, then commit or abort) and a peek.

Everything one C snapshot holds is copied out in a few calls: all ids as one
string, all diffs (or counts) as one list.  Rendering is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._binding import NFIELDS, ffi, lib
from .errors import error_from_errno


class Snapshot:
    """The ids and numbers of one C snapshot, in id order."""

    __slots__ = ("aggregate", "counts", "diffs", "ids_utf8")

    def __init__(self, s: Any, counts: bool = False) -> None:
        n: int = lib.pmem_metrics_snapshot_len(s)
        size = ffi.new("size_t *")
        ids = lib.pmem_metrics_snapshot_ids(s, size)
        # Every id followed by NUL; ids never contain NUL (C rejects it).
        self.ids_utf8: str = ffi.unpack(ids, size[0]).decode("utf-8") if n else ""
        self.diffs: list[int] = ffi.unpack(lib.pmem_metrics_snapshot_diffs(s), n * NFIELDS)
        self.aggregate: list[int] = ffi.unpack(lib.pmem_metrics_snapshot_aggregate(s), NFIELDS)
        self.counts: list[int] = (
            ffi.unpack(lib.pmem_metrics_snapshot_counts(s), n * NFIELDS) if counts else []
        )

    @staticmethod
    def split(ids_utf8: str) -> list[str]:
        """The ids of *ids_utf8* (each followed by NUL) as a list."""
        return ids_utf8.split("\0")[:-1]

    def rows(self, values: list[int], ids_utf8: str | None = None) -> Iterator[tuple[Any, ...]]:
        """(id, value of each field) per device, in id order, from *values* (diffs or counts)."""
        names = self.split(self.ids_utf8 if ids_utf8 is None else ids_utf8)
        return zip(names, *(values[f::NFIELDS] for f in range(NFIELDS)))


@contextmanager
def flushing() -> Iterator[Snapshot]:
    """Take a flush snapshot; commit it if the body succeeds, abort it (losing nothing) if not."""
    s = ffi.NULL
    try:
        # Inside the try, so that an exception raised by a signal handler as the
        # call returns still aborts (what is left is the instant between the
        # C call's return and this assignment).
        s = lib.pmem_metrics_snapshot_take()
        if s == ffi.NULL:
            raise error_from_errno(ffi.errno, "cannot take a metrics snapshot")
        yield Snapshot(s)
    except BaseException:
        lib.pmem_metrics_snapshot_abort(s)  # a no-op on NULL
        raise
    lib.pmem_metrics_snapshot_commit(s)


def peek() -> Snapshot:
    """Every device's cumulative counts (and diffs), without flushing or waiting for a flush."""
    s = lib.pmem_metrics_snapshot_peek()
    if s == ffi.NULL:
        raise error_from_errno(ffi.errno, "cannot take a metrics snapshot")
    try:
        return Snapshot(s, counts=True)
    finally:
        lib.pmem_metrics_snapshot_abort(s)  # only frees a peek
