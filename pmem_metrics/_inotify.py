"""inotify(7) through the CFFI binding: watches on directories, their events drained.

Thin wrappers, as the rest of the binding: each checks, makes one call and
turns a failure into an ``OSError``.  The descriptor is non-blocking and
close-on-exec; :meth:`Inotify.read` drains what is queued, never waits, and
reads at most :data:`MAX_READ` bytes a call, so one call's work is bounded
whatever the kernel queued (``fs.inotify.max_queued_events``; past it the
kernel drops events and queues ``IN_Q_OVERFLOW``).  An event is parsed with
:mod:`struct` as ``struct inotify_event``: ``wd``, ``mask``, ``cookie``,
``len``, then ``len`` bytes of name padded with NULs.

Where the platform has no inotify (:data:`AVAILABLE` false) creating an
:class:`Inotify` raises ``OSError`` ``ENOSYS``: the caller looks again from
time to time instead.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from ._binding import ffi, lib

AVAILABLE = bool(lib.PMI_HAVE_INOTIFY)
"""Whether this platform has inotify (Linux)."""

DIR_EVENTS = (
    lib.IN_CREATE | lib.IN_MOVED_TO | lib.IN_DELETE | lib.IN_MOVED_FROM
    | lib.IN_DELETE_SELF | lib.IN_MOVE_SELF | lib.IN_EXCL_UNLINK
)  # fmt: skip
"""What a watched directory reports: names that come and go, and the directory itself going."""

CHUNK = 64 * 1024
"""Bytes one ``read`` asks for: hundreds of events (one is 16 bytes and a name of 255 at most)."""

MAX_READ = 16 * CHUNK
"""Bytes one :meth:`Inotify.read` takes at most (in reads of :data:`CHUNK`); more queued is
as an overflow: 1 MiB, more than the kernel queues by default (16384 events)."""

_HEAD = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
assert _HEAD.size == lib.PMI_INOTIFY_EVENT_SIZE, "struct inotify_event is not what it was"


class Event(NamedTuple):
    """One inotify event: the watch it came from, what happened, and the name it concerns."""

    wd: int
    """The watch (``-1`` for ``IN_Q_OVERFLOW``)."""
    mask: int
    """``IN_*`` bits: what happened (``IN_ISDIR``: to a directory)."""
    name: str
    """The entry of the watched directory it concerns; ``""`` for the directory itself."""


def _error(what: str, path: str | None = None) -> OSError:
    code = ffi.errno
    return OSError(code, f"{what}: {os.strerror(code)}", path)


class Inotify:
    """An inotify instance: ``OSError`` if the platform or the per-user limit refuses one."""

    fd = -1  # none yet

    def __init__(self) -> None:
        fd = lib.inotify_init1(lib.IN_NONBLOCK | lib.IN_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd

    def add(self, path: str, mask: int) -> int:
        """Watch *path* for *mask*: its watch descriptor (the same one for a directory watched
        already).  ``OSError`` as ``inotify_add_watch`` fails: ``ENOSPC`` past the per-user
        limit (``fs.inotify.max_user_watches``), ``ENOTDIR`` for a symlink under
        ``IN_ONLYDIR | IN_DONT_FOLLOW``, ``ENOENT`` for a path gone."""
        wd = lib.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error("inotify_add_watch", path)
        return wd

    def remove(self, wd: int) -> None:
        """Stop watch *wd*; one the kernel dropped already (its directory gone) is no error."""
        if lib.inotify_rm_watch(self.fd, wd) != 0 and ffi.errno != errno.EINVAL:
            raise _error("inotify_rm_watch")

    def read(self) -> tuple[list[Event], bool]:
        """The events queued now (never waiting), and whether some were lost: the kernel's
        queue overflowed, or more than :data:`MAX_READ` bytes were queued (those are left for
        the next call, and the caller should look at everything again)."""
        events: list[Event] = []
        for _ in range(max(1, MAX_READ // CHUNK)):
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return events, False
            at = 0
            while at + _HEAD.size <= len(data):
                wd, mask, _cookie, size = _HEAD.unpack_from(data, at)
                at += _HEAD.size
                name = data[at : at + size].split(b"\0", 1)[0]
                at += size
                events.append(Event(wd, mask, os.fsdecode(name)))
                if mask & lib.IN_Q_OVERFLOW:
                    return events, True
        return events, True

    def close(self) -> None:
        """Close the descriptor (every watch goes with it).  Twice: nothing."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()
