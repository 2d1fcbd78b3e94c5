"""Exceptions of pmem_metrics, and the one helper that turns a C failure into one.

Every exception derives from :class:`PmemMetricsError` and from the builtin it
refines, so ``except ValueError`` and ``except PmemMetricsError`` both work.
"""

from __future__ import annotations

import errno
import os


class PmemMetricsError(Exception):
    """Base class of every exception raised by pmem_metrics."""


class InvalidDriveIdError(PmemMetricsError, ValueError):
    """A drive id broke one of the rules (empty, too long, control characters, bad UTF-8)."""


class OutOfMemoryError(PmemMetricsError, MemoryError):
    """The C library could not allocate memory; nothing was changed."""


class FlushInProgressError(PmemMetricsError, RuntimeError):
    """This thread tried to start a flush while its own flush was still open."""


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


_BY_ERRNO: dict[int, type[PmemMetricsError]] = {
    errno.EINVAL: InvalidDriveIdError,
    errno.ENOMEM: OutOfMemoryError,
    errno.EDEADLK: FlushInProgressError,
    errno.ENOSPC: SegmentFullError,
    errno.EBADMSG: InvalidSegmentError,
    errno.EPROTO: InvalidSegmentError,
}

# What a segment's errno means, for the messages of attach().
SEGMENT_PROBLEMS = {
    errno.EINVAL: "not a pmem_metrics segment (or not a regular file)",
    errno.EPROTO: "a segment of another version or field list",
    errno.EBADMSG: "a truncated or corrupt segment",
    errno.ELOOP: "a symbolic link (never followed)",
    errno.EFBIG: "larger than this process can map",
    errno.EBUSY: (
        "this process already has devices, an open flush or a segment, "
        "or has this segment open (open_segment)"
    ),
}


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
