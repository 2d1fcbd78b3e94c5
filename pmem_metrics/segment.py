"""Shared segments: :func:`attach` the process's default registry to one, or :func:`open_segment`.

A segment is a file (normally under ``/dev/shm``) that holds devices shared by
every process that opens it.  docs/shared-segments.md says what is shared,
what a flush promises, and the threat model.
"""

from __future__ import annotations

import os

from ._binding import ffi, lib
from .errors import registry_path, segment_error
from .registry import Registry


def segment_args(
    path: str | os.PathLike[str], capacity: int | None, mode: int, *, trust: bool = True
) -> tuple[bytes, int, int]:
    """The C arguments for a segment at *path*: TypeError or ValueError for bad ones.

    *trust* false: a *mode* that lets others write is refused too (opening
    would refuse the segment it had just created, and leave it behind).
    """
    for what, value in (("capacity", capacity), ("mode", mode)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if capacity is not None and not 0 < capacity <= 1 << 24:
        raise ValueError(f"capacity must be 1 to {1 << 24} devices, not {capacity}")
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise ValueError(
            f"mode must be permission bits (0 to 0o777) that let the owner read and write "
            f"the segment (0o600), not {mode:#o}"
        )
    if not trust and mode & 0o002:
        raise ValueError(
            f"mode {mode:#o} lets other users write the segment, which opening it refuses "
            "(trust=True to create and use such a segment)"
        )
    raw = os.fsencode(path)
    if not raw or b"\0" in raw:
        raise ValueError(f"not a segment path: {path!r}")
    return raw, capacity or 0, mode


def attach(
    path: str | os.PathLike[str],
    capacity: int | None = None,
    mode: int = 0o600,
    *,
    trust: bool = False,
) -> None:
    """Put this process's registry in the shared segment at *path* (created if absent).

    Every process attached to one segment shares its devices: the same id is
    the same counters, flushed once across all of them (at least once where a
    flusher is killed between its line and its commit), and counts survive a
    process that dies.  Call it before the first
    :meth:`PmemMetricsPerDevice.alloc` (before any other call on this
    process's registry: its kind is decided then); the environment variable
    ``PMEM_METRICS_SHM=PATH`` does the same at the first registry call.  A new
    segment gets room for *capacity* devices (``None``: 4096) and file mode
    *mode*.  Raises :class:`SegmentError` (an ``OSError``) naming the path and
    the problem: :class:`InvalidSegmentError` (also a ``ValueError``) for a
    file that is not a usable segment, ``errno.EBUSY`` once devices exist or
    a segment is attached, and the system's errors from opening or creating it;
    ``TypeError`` or ``ValueError`` for a bad argument (an empty path, a
    *capacity* out of 1 to 2**24, a *mode* beyond 0o777 or without 0o600,
    which the creator itself needs, or, unless *trust*, with 0o002, which
    would make a segment opening refuses).  A segment owned by another user, or
    writable by users other than its owner and group, is refused with
    :class:`UntrustedSegmentError` unless *trust* is true.  To read or flush
    a segment without attaching this process, see :func:`open_segment`.
    """
    raw, size, bits = segment_args(path, capacity, mode, trust=trust)
    flags = lib.PMEM_METRICS_OPEN_TRUST if trust else 0
    if lib.pmem_metrics_attach_flags(raw, size, bits, flags) != 0:
        raise segment_error(ffi.errno, os.fsdecode(raw), "attach")


def open_segment(
    path: str | os.PathLike[str],
    capacity: int | None = None,
    mode: int = 0o600,
    *,
    readonly: bool = False,
    create: bool = True,
    trust: bool = False,
) -> Registry:
    """The shared segment at *path* as a :class:`Registry`, created if absent.

    Unlike :func:`attach`, this process's default registry is not changed: the
    segment is one more registry, whose devices, flushes and Prometheus
    collector (:class:`pmem_metrics.prometheus.PmemCollector`) are its own.
    Any number may be open at once.  *capacity* and *mode* are as for
    :func:`attach` (they only matter when the segment is created).

    *readonly*: open the file for reading only (so read permission is all it
    takes: a 0640 segment can be scraped by its group) and read it without
    a mapping and without a lock, so a process that truncates or stops
    cannot harm this one; the registry can be scraped and counted, never
    flushed or allocated in (:class:`ReadOnlySegmentError`).  Never creates.
    *create* false: a missing segment is an error (``ENOENT``), never created.
    *trust*: as for :func:`attach` (read-only, only the "others may write
    it" check applies: the reader cannot be harmed, only misinformed).

    Raises what :func:`attach` raises, except ``EBUSY`` (but for a segment
    open read-only here already, opened again for writing).  Each call is
    one open, let go by the registry's :meth:`~Registry.close` (the segment
    stays open until its last open is closed, or the process ends).
    """
    # Only a call that may create the segment can make one it would refuse.
    raw, size, bits = segment_args(path, capacity, mode, trust=trust or readonly or not create)
    flags = (
        (lib.PMEM_METRICS_OPEN_READONLY if readonly else 0)
        | (0 if create else lib.PMEM_METRICS_OPEN_EXISTING)
        | (lib.PMEM_METRICS_OPEN_TRUST if trust else 0)
    )
    r = lib.pmem_metrics_registry_open_flags(raw, size, bits, flags)
    if r == ffi.NULL:
        raise segment_error(ffi.errno, os.fsdecode(raw), "open")
    return Registry._wrap(r, registry_path(r), opened=True)


def segment_offset(name: str) -> int:
    """Where the segment format puts *name* (docs/segment-format.md), as this build says.

    A header word's byte offset (``"header.used"``), a slot's word from the
    slot's start (``"slot.state"``, ``"slot.id"``; ``"counter.old"`` within a
    counter), a claim's (``"claim.n"``, ``"entry.diff"``), or a constant of
    this build (``"version"``, ``"slot_size"``, ``"lock.flush"``...).  For
    tools and tests that read a segment's bytes themselves: never a literal.
    Raises ``KeyError`` for a name the format does not have.
    """
    value = lib.pmem_metrics_segment_offset(name.encode())
    if value < 0:
        raise KeyError(name)
    return int(value)
