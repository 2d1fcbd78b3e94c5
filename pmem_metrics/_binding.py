"""The compiled CFFI binding, and the facts read from the C library at import.

The field list is defined once, in C (``PMEM_METRICS_FIELDS``); Python reads the
names and their docs here and builds everything else from them.
"""

from __future__ import annotations

from _cffi_backend import _CDataBase as CData  # the type of every C value CFFI hands out

try:
    from ._ffi import ffi, lib
except ImportError as e:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "pmem_metrics: the compiled extension is missing; build it with `pip install .` "
        f"(imported from {__file__})"
    ) from e

NFIELDS: int = lib.PMEM_METRICS_NFIELDS
"""Number of counters of one device."""

FIELDS: tuple[str, ...] = tuple(
    ffi.string(lib.pmem_metrics_field_name(i)).decode("ascii") for i in range(NFIELDS)
)
"""The counters of one device, in flush order (the attributes of a device handle)."""

FIELD_DOCS: dict[str, str] = {
    name: ffi.string(lib.pmem_metrics_field_doc(i)).decode("utf-8") for i, name in enumerate(FIELDS)
}
"""Each field's one-line description (the Prometheus HELP text)."""

ID_MAX_CHARS: int = lib.PMEM_METRICS_ID_MAX_CHARS
"""The longest drive id accepted, in characters (code points)."""

DEFAULT_REGISTRY: CData = lib.pmem_metrics_registry_default()
"""The C ``struct pmem_metrics_registry *`` of the process's default registry."""

WAIT_SLICE_MS = 50
"""Longest time one C call waits (for a flush, a segment's lock): the Ctrl-C latency of a wait."""


def segment_wait_s() -> float:
    """How long a call waits for another process's segment lock at most, in seconds.

    ``PMEM_METRICS_SEGMENT_WAIT_MS`` in the environment sets it (read once, by C).
    """
    return lib.pmem_metrics_segment_wait_ms() / 1000


__all__ = [
    "DEFAULT_REGISTRY",
    "FIELDS",
    "FIELD_DOCS",
    "ID_MAX_CHARS",
    "NFIELDS",
    "WAIT_SLICE_MS",
    "CData",
    "ffi",
    "lib",
    "segment_wait_s",
]
