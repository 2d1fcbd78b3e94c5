"""Per-device handles: :class:`PmemMetricsPerDevice` and its :class:`Counter` fields.

A handle is a thin view of counters that live in the C library; Python holds
no counts of its own.  Allocating an id twice yields two handles on the very
same counters (they compare equal).
"""

from __future__ import annotations

import errno
import operator
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, SupportsIndex, TypeVar

from ._binding import DEFAULT_REGISTRY, FIELDS, WAIT_SLICE_MS, CData, ffi, lib, segment_wait_s
from .errors import (
    InvalidDriveIdError,
    PmemMetricsError,
    error_from_errno,
    segment_error,
)

# The C functions of Counter's hot path, and the conversion add() applies.
_alloc_within: Callable[[CData, bytes, int, int], CData] = lib.pmem_metrics_registry_alloc_within
_inc: Callable[[CData], None] = lib.pmem_metrics_inc
_add: Callable[[CData, int], None] = lib.pmem_metrics_add
_index = operator.index

# The longest repr of a drive id that an error message quotes whole.  A
# longer one is quoted as its first characters (a repr of at most half this)
# and its length: a megabyte-long id must not make a megabyte-long message.
_ID_QUOTED_MAX = 80


def _shown(drive_id: str) -> str:
    """*drive_id* as an error message quotes it: its repr, shortened if long."""
    whole = repr(drive_id[:_ID_QUOTED_MAX])  # if that cut the id, its repr is too long
    if len(whole) <= _ID_QUOTED_MAX:
        return whole
    n = _ID_QUOTED_MAX // 2
    head = repr(drive_id[:n])
    while len(head) > _ID_QUOTED_MAX // 2 + 2 and n > 1:  # escapes: \x00 is 4 characters
        n //= 2
        head = repr(drive_id[:n])
    return f"{head}... ({len(drive_id)} characters)"


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

    __slots__ = ("_c",)

    _c: CData  # the C struct pmem_metrics_counter * of this counter

    def __init__(self, c: CData) -> None:
        self._c = c

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


def alloc_in(r: CData, drive_id: str, cls: type[_Device], origin: str) -> _Device:
    """:meth:`PmemMetricsPerDevice.alloc` in the C registry *r*, written *origin* in a repr."""
    if not isinstance(drive_id, str):
        raise TypeError(f"drive id must be a str, not {type(drive_id).__name__}")
    try:
        raw = drive_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDriveIdError(
            f"invalid drive id {_shown(drive_id)}: must be valid Unicode (no lone surrogates)"
        ) from None
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
        shown = _shown(drive_id)
        check = lib.pmem_metrics_id_check(raw, len(raw)) if err == errno.EINVAL else 0
        if check != 0:
            why = ffi.string(lib.pmem_metrics_id_strerror(check)).decode()
            raise InvalidDriveIdError(f"invalid drive id {shown}: {why}")
        message = f"cannot allocate metrics for drive id {shown}"
        raise registry_error(err, r, f"allocate {shown} in", message)
    self = object.__new__(cls)
    self._m = m
    self._origin = origin
    self.drive_id = drive_id
    for i, name in enumerate(FIELDS):
        setattr(self, name, Counter(lib.pmem_metrics_field(m, i)))
    return self


def count_in(r: CData) -> int:
    """Number of devices in the C registry *r*: a segment's, read without a lock."""
    ffi.errno = 0
    n = lib.pmem_metrics_registry_device_count(r)
    if n == 0 and ffi.errno:
        raise registry_error(ffi.errno, r, "count the devices of", "cannot count the devices")
    return n


def device_count() -> int:
    """Number of pmem devices in this process's registry (its segment's, once attached)."""
    return count_in(DEFAULT_REGISTRY)


def registry_path(r: CData) -> str | None:
    """The path of the segment the C registry *r* lives in; ``None`` if it is private."""
    path = lib.pmem_metrics_registry_path(r)
    return None if path == ffi.NULL else os.fsdecode(ffi.string(path))


def registry_error(err: int, r: CData, doing: str, message: str) -> PmemMetricsError:
    """The exception for a call on the C registry *r* that failed with ``errno`` *err*.

    A segment's failure names the segment's path and says what failed
    (*doing* it, "cannot {doing} the metrics segment"); a private registry's
    is described by *message*.  Running out of memory is never the segment's.
    """
    env = os.environ.get("PMEM_METRICS_SHM")
    path = registry_path(r)
    if path is None and r == DEFAULT_REGISTRY and env and err != errno.ENOMEM:
        return segment_error(err, env, "attach")  # PMEM_METRICS_SHM's, which failed
    if path is None or err in (errno.ENOMEM, errno.EDEADLK):
        return error_from_errno(err, message)
    return segment_error(err, path, doing)


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


def is_shared() -> bool:
    """Whether this process's registry lives in a shared segment."""
    return bool(lib.pmem_metrics_registry_is_shared(DEFAULT_REGISTRY))
