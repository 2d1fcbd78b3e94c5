"""Registries as objects: several shared segments in one process.

A *registry* is a set of devices whose counters are shared by id.  The
module-level API (:meth:`PmemMetricsPerDevice.alloc`, :func:`flush_metrics`,
:data:`METRICS`, the Prometheus collector) works on the process's default
registry: private, or a shared segment once :func:`attach` was called.
:func:`open_segment` opens a segment as a :class:`Registry` of its own,
without attaching the process, so one process can read or flush several
(an exporter, say)::

    >>> from pmem_metrics import open_segment
    >>> seg = open_segment("/dev/shm/vm-17")  # doctest: +SKIP
    >>> seg.alloc("drv0").activate_fails.inc()  # doctest: +SKIP
    >>> seg.flush_metrics_json()  # doctest: +SKIP
    '{"pmem_drv0":{"activate_fails":1,...},"pmem":{"activate_fails":1,...}}'

A registry lives as long as the process (its devices' counters stay
mapped), and opening a segment the process has open already gives that same
registry.
"""

from __future__ import annotations

import os

from ._binding import DEFAULT_REGISTRY, CData, ffi, lib
from .device import PmemMetricsPerDevice, alloc_in, count_in, registry_path, segment_args
from .errors import segment_error
from .flush import Flush, as_dict, as_json, flush_in


class Registry:
    """A set of pmem devices: the process's default one, or a shared segment.

    Get one with :func:`open_segment` or :meth:`Registry.default`.  Two
    ``Registry`` objects compare equal when they are the same C registry.
    """

    __slots__ = ("_r", "path")

    _r: CData  # the C struct pmem_metrics_registry *
    path: str | None
    """The path the segment was opened by; ``None`` for the default registry."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use pmem_metrics.open_segment(path) or Registry.default()")

    @classmethod
    def _wrap(cls, r: CData, path: str | None) -> Registry:
        self = object.__new__(cls)
        self._r = r
        self.path = path
        return self

    @classmethod
    def default(cls) -> Registry:
        """The process's default registry: what :meth:`PmemMetricsPerDevice.alloc` uses."""
        return cls._wrap(DEFAULT_REGISTRY, None)

    def alloc(self, drive_id: str) -> PmemMetricsPerDevice:
        """The metrics of device *drive_id* here: as :meth:`PmemMetricsPerDevice.alloc` does."""
        return alloc_in(self._r, drive_id, PmemMetricsPerDevice, repr(self))

    def device_count(self) -> int:
        """Number of devices in this registry (from every process, for a segment)."""
        return count_in(self._r)

    def flush_metrics(self) -> Flush:
        """Flush this registry; as :func:`pmem_metrics.flush_metrics`."""
        return flush_in(self._r, as_dict)

    def flush_metrics_json(self) -> str:
        """Flush this registry, as compact JSON; as :func:`pmem_metrics.flush_metrics_json`."""
        return flush_in(self._r, as_json)

    @property
    def is_shared(self) -> bool:
        """Whether this registry lives in a shared segment."""
        return bool(lib.pmem_metrics_registry_is_shared(self._r))

    @property
    def readonly(self) -> bool:
        """Whether this segment was opened read-only: it can be read and counted, not flushed."""
        return not lib.pmem_metrics_registry_is_writable(self._r)

    @property
    def capacity(self) -> int | None:
        """How many devices the segment has room for; ``None`` for a private registry."""
        return lib.pmem_metrics_registry_capacity(self._r) or None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Registry):
            return NotImplemented
        return bool(self._r == other._r)

    def __hash__(self) -> int:
        return hash(int(ffi.cast("uintptr_t", self._r)))

    def __repr__(self) -> str:
        if self.path is None:
            return "Registry.default()"
        return f"open_segment({self.path!r})"


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
    open read-only here already, opened again for writing).
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
    return Registry._wrap(r, registry_path(r))
