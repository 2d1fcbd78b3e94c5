"""Registries: the process's default one, and shared segments opened as registries of their own.

A *registry* is a set of devices whose counters are shared by id.  The
module-level calls (:func:`pmem_metrics.flush_metrics`, :func:`pmem_metrics.read`,
...) are the methods of the process's default registry, :meth:`Registry.default`:
private, or a shared segment once :func:`attach` was called; so are
:meth:`PmemMetricsPerDevice.alloc`, :data:`METRICS` and the Prometheus collector.
:func:`open_segment` opens a segment as a :class:`Registry` of its own,
without attaching the process, so one process can read or flush several
(an exporter, say)::

    >>> from pmem_metrics import open_segment
    >>> seg = open_segment("/dev/shm/vm-17")  # doctest: +SKIP
    >>> seg.alloc("drv0").activate_fails.inc()  # doctest: +SKIP
    >>> seg.flush_metrics_json()  # doctest: +SKIP
    '{"pmem_drv0":{"activate_fails":1,...},"pmem":{"activate_fails":1,...}}'

Opening a segment the process has open already gives that same registry;
each open is let go by :meth:`Registry.close`, the last one freeing it.
"""

from __future__ import annotations

import errno
from typing import Any, NamedTuple

from ._binding import DEFAULT_REGISTRY, CData, ffi, lib
from ._snapshot import Snapshot, fields_of, peek
from .device import PmemMetricsPerDevice, alloc_in, find_in, retire_in
from .errors import registry_error
from .flush import Flush, as_dict, as_json, flush_in

Counts = dict[str, dict[str, int]]
"""What :meth:`Registry.read` returns: ``{drive_id: {field: value}}``, in id order."""


class Stats(NamedTuple):
    """How full a registry is: :meth:`Registry.stats`."""

    capacity: int | None
    """Device slots of a segment; ``None`` for a private registry (it grows)."""
    devices: int
    """Live devices."""
    retired: int
    """Retired devices not let go yet: waiting for their final flush, or for references."""
    alloc_failures: int
    """Allocations refused for want of room (a segment: since it was created)."""


class Registry:
    """A set of pmem devices: the process's default one, or a shared segment.

    Get one with :func:`open_segment` or :meth:`Registry.default`.  Two
    ``Registry`` objects compare equal when they are the same C registry.
    """

    __slots__ = ("_cr", "_opened", "path")

    _cr: CData | None  # the C struct pmem_metrics_registry *; None once closed
    _opened: bool  # an open of its own to close (open_segment's)
    path: str | None
    """The path the segment was opened by; ``None`` for the default registry."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use pmem_metrics.open_segment(path) or Registry.default()")

    @classmethod
    def _wrap(cls, r: CData, path: str | None, opened: bool = False) -> Registry:
        self = object.__new__(cls)
        self._cr = r
        self._opened = opened
        self.path = path
        return self

    @property
    def _r(self) -> CData:
        """The C registry; ``ValueError`` once this object closed it."""
        if self._cr is None:
            raise ValueError(f"{self._origin()} is closed")
        return self._cr

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (this object can no longer be used)."""
        return self._cr is None

    def close(self) -> None:
        """Let go of this open (an :func:`open_segment`'s); the last frees files and memory.

        Reads already made stay yours.  Raises :class:`SegmentError`
        ``EBUSY`` (staying open) while a device handle or a flush of it is
        held here, ``ValueError`` for the default registry.  Twice: nothing.
        Also a context manager: ``with open_segment(path) as seg: ...``.
        """
        if self._cr is None:
            return
        if not self._opened:
            raise ValueError(f"{self._origin()} was not opened here: it cannot be closed")
        if lib.pmem_metrics_registry_close(self._cr) != 0:
            raise registry_error(ffi.errno, self._cr, "close", "cannot close the segment")
        self._cr = None

    def forget_path(self) -> None:
        """Read and flush the file this segment has open, whatever its path names now: the
        final counts of a segment removed or replaced (:class:`pmem_metrics.follow.Followed`)."""
        if lib.pmem_metrics_registry_forget_path(self._r) != 0:
            raise registry_error(ffi.errno, self._r, "follow", "not a segment")

    def identity(self) -> tuple[int, int]:
        """The ``(st_dev, st_ino)`` of the file this segment has open: what ``os.lstat`` of
        its path gives while the path still names it (:class:`pmem_metrics.fleet.Fleet`)."""
        ids = ffi.new("uint64_t[2]")
        if lib.pmem_metrics_registry_identity(self._r, ids, ids + 1) != 0:
            raise registry_error(ffi.errno, self._r, "follow", "not a segment")
        return ids[0], ids[1]

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def default(cls) -> Registry:
        """The process's default registry: what :meth:`PmemMetricsPerDevice.alloc` uses."""
        return cls._wrap(DEFAULT_REGISTRY, None)

    def alloc(self, drive_id: str) -> PmemMetricsPerDevice:
        """The metrics of device *drive_id* here: as :meth:`PmemMetricsPerDevice.alloc` does."""
        return alloc_in(self._r, drive_id, PmemMetricsPerDevice, self._origin())

    def get(self, drive_id: str) -> PmemMetricsPerDevice | None:
        """The metrics of device *drive_id* if it exists here, else ``None``; creates nothing.

        Raises as :meth:`alloc` does for a bad id, and
        :class:`ReadOnlySegmentError` in a registry opened read-only (its
        counters are not mapped into this process: :meth:`read` them).
        """
        return find_in(self._r, drive_id, self._origin())

    def retire(self, drive_id: str) -> None:
        """Retire device *drive_id* (a hot-unplugged drive): reported once more, then gone.

        The next flush reports its final delta, in its own entry and in the
        aggregate; later lines and scrapes do not show it (a registry that
        nobody flushes stops showing it to scrapes after a grace period,
        ``PMEM_METRICS_RETIRE_GRACE_MS``, default 5 minutes).  An
        :meth:`alloc` of the id before that flush gives the same device back;
        after it, a new one from zero.  Handles still held keep the device's
        room, and what they add after its final flush is counted nowhere,
        never into another device.  Raises :class:`UnknownDeviceError` (a
        ``KeyError``) for an id no live device has, as :meth:`alloc` does for
        a bad id, and :class:`ReadOnlySegmentError` in a read-only registry.
        """
        retire_in(self._r, drive_id)

    def stats(self) -> Stats:
        """How full this registry is: capacity, live devices, retired ones, allocation failures."""
        out: Any = ffi.new("struct pmem_metrics_registry_stats *")  # a struct: fields by name
        if lib.pmem_metrics_registry_stats(self._r, out) != 0:
            raise registry_error(ffi.errno, self._r, "read", "cannot read the registry's stats")
        return Stats(out.capacity or None, out.devices, out.retired, out.alloc_failures)

    def __contains__(self, drive_id: object) -> bool:
        """Whether a device *drive_id* exists here (``False`` for what is not an id)."""
        if not isinstance(drive_id, str):
            return False
        try:
            return self.get(drive_id) is not None
        except ValueError:
            return False  # not a valid id: no device has it
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
        return drive_id in self.ids()  # read-only: no handle to be had, but the ids are

    def ids(self) -> list[str]:
        """Every device's id, in id (code point) order; takes no lock, changes nothing."""
        return Snapshot.split(peek(self._r).ids_text)

    def __len__(self) -> int:
        """Number of devices: :meth:`device_count`."""
        return self.device_count()

    def device_count(self) -> int:
        """Number of devices in this registry (from every process, for a segment)."""
        ffi.errno = 0
        n = lib.pmem_metrics_registry_device_count(self._r)
        if n == 0 and ffi.errno:
            raise registry_error(
                ffi.errno, self._r, "count the devices of", "cannot count the devices"
            )
        return n

    def read(self, *, pending: bool = False) -> Counts:
        """Every device's counts, ``{drive_id: {field: count}}`` in id order, without flushing.

        The values are cumulative, as ``count()`` (what Prometheus scrapes);
        with *pending*, what the next flush would report instead, as
        ``fetch_diff()``.  Each counter is read once, all of them in one
        pass, and nothing changes: the next flush reports exactly what it
        would have without this.  Takes no lock and waits for no flush;
        works on a segment opened read-only.  In a segment, raises what a
        flush raises (:class:`SegmentReplacedError`, :class:`InvalidSegmentError`).
        """
        snap = peek(self._r, diffs=pending)
        values = snap.diffs if pending else snap.counts
        ids = Snapshot.split(snap.ids_text)
        return {i: dict(zip(snap.fields, row)) for i, *row in zip(ids, *snap.columns(values))}

    def flush_metrics(self) -> Flush:
        """Flush: every device's counts since the last flush, then the aggregate, as a dict.

        Keys are ``"pmem_<drive id>"`` in id order, then ``"pmem"``; each value
        maps every name in ``FIELDS`` to its diff.  The aggregate is the
        field-wise sum of the devices in this same flush.  If the call raises
        (even a ``KeyboardInterrupt``), nothing was flushed: the next flush
        reports it all.
        """
        return flush_in(self._r, as_dict)

    def flush_metrics_json(self) -> str:
        """Flush, as compact JSON text (the same object :meth:`flush_metrics` returns)."""
        return flush_in(self._r, as_json)

    def is_shared(self) -> bool:
        """Whether this registry lives in a shared segment.

        A method, not a property: the default registry's answer is decided
        at its first call (and asking decides it, as any call does).
        """
        return bool(lib.pmem_metrics_registry_is_shared(self._r))

    @property
    def readonly(self) -> bool:
        """Whether this segment was opened read-only: it can be read and counted, not flushed."""
        return not lib.pmem_metrics_registry_is_writable(self._r)

    @property
    def capacity(self) -> int | None:
        """How many devices the segment has room for; ``None`` for a private registry."""
        return lib.pmem_metrics_registry_capacity(self._r) or None

    @property
    def field_docs(self) -> dict[str, str]:
        """This registry's fields and their docs, in order: ``FIELD_DOCS``, but for a
        segment opened read-only that another build made, whose own list it is."""
        size = ffi.new("size_t *")
        raw = lib.pmem_metrics_registry_fields(self._r, size)
        if raw == ffi.NULL:
            raise registry_error(ffi.errno, self._r, "read the fields of", "cannot be used")
        return dict(fields_of(ffi.unpack(raw, size[0]))[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Registry):
            return NotImplemented
        return self is other if self._cr is None or other._cr is None else self._cr == other._cr

    def __hash__(self) -> int:
        return hash(int(ffi.cast("uintptr_t", self._cr))) if self._cr is not None else id(self)

    def __repr__(self) -> str:
        return self._origin()

    def _origin(self) -> str:
        if self.path is None:
            return "Registry.default()"
        return f"open_segment({self.path!r})"
