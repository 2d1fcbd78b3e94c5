"""pmem_metrics: exact, fast per-device virtio-pmem counters, Firecracker compatible.

Every pmem device, keyed by its drive id, owns the counters named in
:data:`FIELDS`.  They live in the C library ``libpmemmetrics``; C code linked
against it in the same process shares them.

>>> from pmem_metrics import PmemMetricsPerDevice, flush_metrics_json
>>> m = PmemMetricsPerDevice.alloc("drv0")
>>> m.activate_fails.inc()
>>> m.queue_event_count.add(3)
>>> flush_metrics_json()  # doctest: +SKIP
'{"pmem_drv0":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":3},"pmem":{...}}'

The module-level calls (:func:`flush_metrics`, :func:`read`, :func:`get`,
...) are the methods of the process's default registry
(:meth:`Registry.default`); :func:`open_segment` gives a shared segment's.
See :mod:`pmem_metrics.flush` for the format and the flush guarantees, and
:mod:`pmem_metrics.capi` for linking C code against the same library.
"""

from __future__ import annotations

from ._binding import FIELD_DOCS, FIELDS, ID_MAX_CHARS
from .capi import get_include, get_library_dir
from .device import Counter, PmemMetricsPerDevice
from .errors import (
    AlreadyInitializedError,
    FlushInProgressError,
    FlushTimeoutError,
    InvalidDriveIdError,
    InvalidSegmentError,
    MetricsDestinationError,
    OutOfMemoryError,
    PmemMetricsError,
    ReadOnlySegmentError,
    SegmentError,
    SegmentFullError,
    SegmentReplacedError,
    SegmentTimeoutError,
    UnknownDeviceError,
    UntrustedSegmentError,
    WriterStateError,
)
from .flush import Flush
from .registry import Counts, Registry, Stats
from .segment import attach, open_segment
from .writer import METRICS, MetricsWriter

# The module-level calls are the default registry's methods: one
# implementation, one docstring (help(pmem_metrics.read) shows Registry.read's).
_default = Registry.default()
device_count = _default.device_count
flush_metrics = _default.flush_metrics
flush_metrics_json = _default.flush_metrics_json
get = _default.get
ids = _default.ids
is_shared = _default.is_shared
read = _default.read
retire = _default.retire
stats = _default.stats
del _default


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata on first use.

    ``importlib.metadata`` costs more than the rest of the package to import
    (about 70 ms), and every command and every process that only counts
    would pay it; so it is imported only when the version is asked for.
    """
    if name == "__version__":
        from importlib.metadata import version

        value = version("pmem_metrics")
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FIELDS",
    "FIELD_DOCS",
    "ID_MAX_CHARS",
    "METRICS",
    "AlreadyInitializedError",
    "Counter",
    "Counts",
    "Flush",
    "FlushInProgressError",
    "FlushTimeoutError",
    "InvalidDriveIdError",
    "InvalidSegmentError",
    "MetricsDestinationError",
    "MetricsWriter",
    "OutOfMemoryError",
    "PmemMetricsError",
    "PmemMetricsPerDevice",
    "ReadOnlySegmentError",
    "Registry",
    "SegmentError",
    "SegmentFullError",
    "SegmentReplacedError",
    "SegmentTimeoutError",
    "Stats",
    "UnknownDeviceError",
    "UntrustedSegmentError",
    "WriterStateError",
    "attach",
    "device_count",
    "flush_metrics",
    "flush_metrics_json",
    "get",
    "get_include",
    "get_library_dir",
    "ids",
    "is_shared",
    "open_segment",
    "read",
    "retire",
    "stats",
]
