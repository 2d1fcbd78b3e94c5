"""Where metrics lines go: a path or a descriptor (:class:`FdSink`), or a file object.

:func:`sink_for` picks the sink for a destination and refuses at once one
that cannot take lines; a file object with no descriptor gets its lines
through ``write()`` and ``flush()`` (:class:`FileSink`).
"""

from __future__ import annotations

import errno
import io
import os
from typing import IO, Any, Union

from ._fdsink import FdSink, Progress
from .errors import MetricsDestinationError

Destination = Union[str, "os.PathLike[str]", IO[Any]]


class FileSink:
    """A file object with no descriptor (``io.StringIO``, ...): ``write()`` then ``flush()``.

    Text streams get ``str``, binary ones ``bytes``.  If either call fails the
    line counts as not delivered, so its counts are reported again by the next
    write: nothing is lost, but an object that kept the line buffered through
    a failed ``flush()`` will later emit it too.  No deadline applies.
    """

    cut = None  # nothing can be cut back

    def __init__(self, f: IO[Any]) -> None:
        self.f = f
        self.binary = isinstance(f, (io.RawIOBase, io.BufferedIOBase))

    def write(self, line: str, deadline: float, progress: Progress) -> None:
        """Hand *line* to the object and flush it."""
        progress.length = 1
        self.f.write(line.encode("utf-8") if self.binary else line)
        flush = getattr(self.f, "flush", None)
        if flush is not None:
            flush()
        progress.sent[0] = 1  # delivered (an interrupt just before this repeats the line)


def sink_for(destination: Destination) -> FdSink | FileSink:
    """The sink for *destination*, refusing at once one that cannot take lines."""
    if isinstance(destination, (str, os.PathLike)):
        return FdSink.open(destination)
    if not callable(getattr(destination, "write", None)):
        raise TypeError(
            "metrics destination must be a path or a writable file object, "
            f"not {type(destination).__name__}"
        )
    name = str(getattr(destination, "name", destination))
    if getattr(destination, "closed", False):
        raise MetricsDestinationError(errno.EBADF, f"metrics destination {name!r} is closed")
    writable = getattr(destination, "writable", None)
    if callable(writable) and not writable():
        raise MetricsDestinationError(
            errno.EBADF, f"metrics destination {name!r} is not open for writing"
        )
    try:
        fd = destination.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return FileSink(destination)
    return FdSink(fd, name, destination)
