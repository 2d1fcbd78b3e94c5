"""Per-device handles: :class:`PmemMetricsPerDevice` and its :class:`Counter` fields.

A handle is a thin view of counters that live in the C library; Python holds
no counts of its own.  Allocating an id twice yields two handles on the very
same counters (they compare equal).
"""

from __future__ import annotations

import errno
import operator
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, SupportsIndex, TypeVar

from ._binding import DEFAULT_REGISTRY, FIELDS, WAIT_SLICE_MS, CData, ffi, lib, segment_wait_s
from ._ids import id_bytes, quoted, refuse_id
from .errors import UnknownDeviceError, registry_error

# The C functions of Counter's hot path, and the conversion add() applies.
_alloc_within: Callable[[CData, bytes, int, int], CData] = lib.pmem_metrics_registry_alloc_within
_inc: Callable[[CData], None] = lib.pmem_metrics_inc
_add: Callable[[CData, int], None] = lib.pmem_metrics_add
_release: Callable[[CData], None] = lib.pmem_metrics_release
_index = operator.index


class Counter:
    """One shared incremental counter of a pmem device.

    ``inc()`` adds 1 and ``add(n)`` adds *n*, an integer in ``0 <= n < 2**64``:
    an ``int``, a ``bool`` or any object with ``__index__`` (numpy integers).
    Anything else raises ``TypeError`` (``float``, ``Fraction``, ``Decimal``
    and objects with only ``__int__`` included: nothing is truncated), and an
    integer out of range ``OverflowError``; a refused call adds nothing.  Both
    are one relaxed atomic add in C, safe from any thread.  Values wrap modulo
    ``2**64``.
    """

    __slots__ = ("_c", "_device")

    _c: CData  # the C struct pmem_metrics_counter * of this counter
    _device: CData  # its device's pointer, whose collection gives the device's reference back

    def __init__(self, c: CData, device: CData) -> None:
        self._c = c
        self._device = device

    # The hot path.  Python methods, not the C functions bound to the counter
    # (as they were): a wrong call then names Counter.inc/Counter.add, not the
    # C function, and add() can convert its argument first.  CPython 3.11+
    # specialises the method load and inlines the call.  The callees are
    # module globals (one specialised load each), and returning the C call's
    # result (None) saves two instructions over discarding it and returning
    # None.  The measured costs of each choice: bench/README.md.
    def inc(self) -> None:
        """Add 1."""
        return _inc(self._c)

    def add(self, n: SupportsIndex, /) -> None:
        """Add *n* (``0 <= n < 2**64``, an integer by ``operator.index``)."""
        # operator.index first: CFFI's own conversion to uint64_t would take
        # __int__ (Fraction(7, 2) adding 3) and refuse __index__-only objects.
        return _add(self._c, _index(n))

    def count(self) -> int:
        """Everything ever added (modulo 2**64); flushes do not reset it."""
        return lib.pmem_metrics_count(self._c)

    def fetch_diff(self) -> int:
        """What the next flush would report for this counter; changes nothing."""
        return lib.pmem_metrics_fetch_diff(self._c)

    def __repr__(self) -> str:
        return f"<Counter count={self.count()} diff={self.fetch_diff()}>"


if sys.version_info < (3, 10):  # pragma: no cover - depends on the interpreter
    # CPython 3.9 names a function by its code's co_name in a wrong call's
    # TypeError ("inc() takes 1 positional argument ..."); 3.10+ by its
    # qualified name ("Counter.inc() takes ...").  Give 3.9 the qualified
    # name too (its tracebacks show it as well).  Done once at import: the
    # calls themselves are unchanged.
    for _method in (Counter.inc, Counter.add):
        _method.__code__ = _method.__code__.replace(co_name=_method.__qualname__)
    del _method


class PmemMetricsPerDevice:
    """The counters of one pmem device: one :class:`Counter` attribute per name in ``FIELDS``.

    Get one with :meth:`alloc`; the counters live for the rest of the process.
    """

    __slots__ = ("_m", "_origin", "drive_id", *FIELDS)

    drive_id: str
    _m: CData  # the C struct pmem_metrics *
    _origin: str  # how its registry is written in a repr

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use PmemMetricsPerDevice.alloc(drive_id)")

    @classmethod
    def alloc(cls, drive_id: str) -> PmemMetricsPerDevice:
        """The metrics of device *drive_id*, created at zero on first use.

        The same id always gives the same counters.  Raises ``TypeError`` if
        *drive_id* is not a ``str``, :class:`InvalidDriveIdError` (a
        ``ValueError``) if it is empty, longer than ``ID_MAX_CHARS`` characters,
        holds NUL or other control characters, or lone surrogates, and
        :class:`OutOfMemoryError` (a ``MemoryError``) if the C library is out
        of memory.  In a shared segment, :class:`SegmentFullError` (an
        ``OSError``, ``errno.ENOSPC``) when it has no room for another device.
        A refused call changes nothing.  The error quotes a long id
        shortened: its first characters and its length.
        """
        return alloc_in(DEFAULT_REGISTRY, drive_id, cls, cls.__name__)

    def read(self, *, pending: bool = False) -> dict[str, int]:
        """Every field's ``count()`` (*pending*: its ``fetch_diff()``), by name; changes nothing."""
        get = lib.pmem_metrics_fetch_diff if pending else lib.pmem_metrics_count
        return {name: get(getattr(self, name)._c) for name in FIELDS}

    def counters(self) -> dict[str, Counter]:
        """Every field's :class:`Counter`, by name, in flush order."""
        return {name: getattr(self, name) for name in FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PmemMetricsPerDevice):
            return NotImplemented
        return bool(self._m == other._m)  # the same C device

    def __hash__(self) -> int:
        return hash(int(ffi.cast("uintptr_t", self._m)))

    def __repr__(self) -> str:
        return f"{self._origin}.alloc({self.drive_id!r})"

    if TYPE_CHECKING:
        # The counters are set in alloc() from FIELDS, which comes from C at
        # import; this tells type checkers that they are Counters without
        # naming them in Python (so a new field needs no Python change; the
        # price: a misspelt field passes the type checker, and fails at run
        # time).  Only for type checkers: a class with __getattr__ loses
        # CPython's specialised attribute loads, which slows every increment
        # (measured in bench/README.md).
        def __getattr__(self, name: str) -> Counter: ...


_Device = TypeVar("_Device", bound=PmemMetricsPerDevice)


def _handle(cls: type[_Device], m: CData, drive_id: str, origin: str) -> _Device:
    """A handle on the device *m*, holding the reference C took for it (released when collected).

    Its counters keep the device's pointer too: a counter kept after its
    handle is gone still holds the device, whose room is then never reused.
    """
    m = ffi.gc(m, _release)
    self = object.__new__(cls)
    self._m = m
    self._origin = origin
    self.drive_id = drive_id
    for i, name in enumerate(FIELDS):
        setattr(self, name, Counter(lib.pmem_metrics_field(m, i), m))
    return self


def alloc_in(r: CData, drive_id: str, cls: type[_Device], origin: str) -> _Device:
    """:meth:`PmemMetricsPerDevice.alloc` in the C registry *r*, written *origin* in a repr."""
    raw = id_bytes(drive_id)
    m = _alloc_within(r, raw, len(raw), WAIT_SLICE_MS)
    deadline = None
    # In a segment, another process may hold the insert lock: wait in slices
    # (Ctrl-C is taken between them), within the segment's bound.
    while m == ffi.NULL and ffi.errno == errno.ETIMEDOUT:
        if deadline is None:
            deadline = time.monotonic() + segment_wait_s()
        elif time.monotonic() >= deadline:
            break
        m = _alloc_within(r, raw, len(raw), WAIT_SLICE_MS)
    if m == ffi.NULL:
        err = ffi.errno
        refuse_id(drive_id, raw, err)
        shown = quoted(drive_id)
        message = f"cannot allocate metrics for drive id {shown}"
        raise registry_error(err, r, f"allocate {shown} in", message)
    return _handle(cls, m, drive_id, origin)


def find_in(r: CData, drive_id: str, origin: str) -> PmemMetricsPerDevice | None:
    """The handle of *drive_id* in the C registry *r* if it exists there, creating nothing."""
    raw = id_bytes(drive_id)
    m = lib.pmem_metrics_registry_find(r, raw, len(raw))
    if m == ffi.NULL:
        err = ffi.errno
        if err == errno.ENOENT:
            return None
        refuse_id(drive_id, raw, err)
        shown = quoted(drive_id)
        raise registry_error(err, r, f"look {shown} up in", f"cannot look up {shown}")
    return _handle(PmemMetricsPerDevice, m, drive_id, origin)


def retire_in(r: CData, drive_id: str) -> None:
    """:meth:`Registry.retire` in the C registry *r*."""
    raw = id_bytes(drive_id)
    if lib.pmem_metrics_registry_retire(r, raw, len(raw)) != 0:
        err = ffi.errno
        shown = quoted(drive_id)
        if err == errno.ENOENT:
            raise UnknownDeviceError(
                f"no live device {shown} to retire (never allocated, or retired already)"
            )
        refuse_id(drive_id, raw, err)
        raise registry_error(err, r, f"retire {shown} in", f"cannot retire {shown}")
