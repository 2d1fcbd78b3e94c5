"""Exceptions of pmem_metrics, and the helpers that turn a C failure into one.

Every exception derives from :class:`PmemMetricsError` and from the builtin it
refines, so ``except ValueError`` and ``except PmemMetricsError`` both work.
"""

from __future__ import annotations

import errno
import os

from ._binding import DEFAULT_REGISTRY, CData, ffi, lib


class PmemMetricsError(Exception):
    """Base class of every exception raised by pmem_metrics."""


class InvalidDriveIdError(PmemMetricsError, ValueError):
    """A drive id broke one of the rules (empty, too long, control characters, bad UTF-8)."""


class UnknownDeviceError(PmemMetricsError, KeyError):
    """No live device has that id: never allocated, or retired already."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError's own quotes its message


class OutOfMemoryError(PmemMetricsError, MemoryError):
    """The C library could not allocate memory; nothing was changed."""


class FlushInProgressError(PmemMetricsError, RuntimeError):
    """This thread tried to start a flush while its own flush was still open."""


class FlushTimeoutError(PmemMetricsError, TimeoutError):
    """Another flush of the registry was still in progress when the wait's deadline passed."""


class WriterStateError(PmemMetricsError, RuntimeError):
    """The metrics writer is not in a state for this call (e.g. periodic writing before init)."""


class AlreadyInitializedError(WriterStateError):
    """The metrics writer was initialised a second time."""


class MetricsDestinationError(PmemMetricsError, OSError):
    """The metrics destination could not be opened (for example, a named pipe with no reader)."""


class SegmentError(PmemMetricsError, OSError):
    """A shared segment could not be used: its ``errno`` and ``filename`` say why and which."""


class InvalidSegmentError(SegmentError, ValueError):
    """The file is not a segment this library can use: foreign, corrupt or truncated."""


class SegmentFullError(SegmentError):
    """The shared segment has no room for another device (``errno.ENOSPC``)."""


class SegmentTimeoutError(SegmentError, TimeoutError):
    """Another process held the segment's lock past the bound (stopped, or stuck writing)."""


class SegmentReplacedError(SegmentError):
    """The segment's path no longer names the file that was opened: removed, or replaced.

    Open the path again (:func:`pmem_metrics.open_segment`) to read the new one.
    """


class UntrustedSegmentError(SegmentError, PermissionError):
    """The segment is another user's, or others may write it; refused unless ``trust=True``."""


class ReadOnlySegmentError(SegmentError, PermissionError):
    """The segment was opened read-only: it can be read and counted, not flushed or allocated in."""


_BY_ERRNO: dict[int, type[PmemMetricsError]] = {
    errno.EINVAL: InvalidDriveIdError,
    errno.ENOMEM: OutOfMemoryError,
    errno.EDEADLK: FlushInProgressError,
    errno.ETIMEDOUT: FlushTimeoutError,
    errno.ENOSPC: SegmentFullError,
    errno.EBADMSG: InvalidSegmentError,
    errno.EPROTO: InvalidSegmentError,
}

# What a segment's errno means, for the messages of its errors.
SEGMENT_PROBLEMS = {
    errno.EINVAL: "not a pmem_metrics segment (or not a regular file)",
    errno.EPROTO: "a segment of another version or field list",
    errno.EBADMSG: "a truncated or corrupt segment",
    errno.ELOOP: "a symbolic link (never followed)",
    errno.EFBIG: "too large for this machine (over a quarter of its memory) or this process",
    errno.EBUSY: (
        "this process already used its registry (attach before any other call), "
        "has this segment open (open_segment), or holds a device or a flush of it (close)"
    ),
    errno.ESTALE: "removed or replaced since it was opened: open the path again",
    errno.EPERM: (
        "owned by another user, or writable by users other than its owner and group "
        "(trust=True to use it anyway), or its lock file (the path + '.lock') is another "
        "user's or readable by users who may not write it"
    ),
    errno.EROFS: "opened read-only: it can be read, not flushed or allocated in",
    errno.ETIMEDOUT: "another process held its lock past the bound (stopped, or stuck?)",
    errno.ENOENT: "no such segment",
    errno.EACCES: (
        "Permission denied (a writer needs write access to it and to its lock file, "
        "the path + '.lock')"
    ),
}

SEGMENT_ERRORS: dict[int, type[SegmentError]] = {
    errno.EINVAL: InvalidSegmentError,
    errno.EPROTO: InvalidSegmentError,
    errno.EBADMSG: InvalidSegmentError,
    errno.ENOSPC: SegmentFullError,
    errno.ETIMEDOUT: SegmentTimeoutError,
    errno.ESTALE: SegmentReplacedError,
    errno.EPERM: UntrustedSegmentError,
    errno.EROFS: ReadOnlySegmentError,
}


def segment_error(err: int, path: str, doing: str) -> SegmentError:
    """The exception for the segment at *path* failing with ``errno`` *err* while *doing* it."""
    why = SEGMENT_PROBLEMS.get(err, os.strerror(err))
    return SEGMENT_ERRORS.get(err, SegmentError)(
        err, f"cannot {doing} the metrics segment: {why}", path
    )


def error_from_errno(err: int, message: str) -> PmemMetricsError:
    """The exception for a C call that failed with ``errno`` *err*, described by *message*.

    The C error text is appended, except for EINVAL, whose *message* names
    the rule that was broken ("Invalid argument" would add nothing).
    """
    cls = _BY_ERRNO.get(err, PmemMetricsError)
    text = f"{message} ({os.strerror(err)})" if err and err != errno.EINVAL else message
    if issubclass(cls, OSError):
        return cls(err, text)
    return cls(text)


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
