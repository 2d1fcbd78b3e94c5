"""Segments followed by their paths: what an agent on a host of VMs reads.

A VM's segment lives at a path for as long as the VM runs.  A
:class:`Followed` segment is opened by that path (never created), read, and
watched: once the path no longer names the file it opened (the VM exited and
its file was removed, or the next VM's replaced it), the counts the old file
holds -- what the VM counted since the last read -- are read once more
through the descriptor still open (:meth:`Registry.forget_path`), handed to
the caller as that segment's final reading, and the registry is closed: the
path is opened again at the next read, if a segment is there.  So nothing a
VM counted is lost when it exits, and the agent holds descriptors and memory
for the live segments only.

A segment a :class:`~pmem_metrics.fleet.Fleet` follows is *watched*: its
path is forgotten as soon as it is open, so no read stats the path, and the
fleet, which learns of paths changing from inotify or by one ``lstat`` of
each at a rescan (against :attr:`Followed.identity`), calls
:meth:`Followed.end` once the path names another file or none: the next read
is the final one, and the segment is never opened again by this object.

The exporter's lines, ``top``, the Prometheus page and the OpenTelemetry
bridge all read their segments through this one object.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TypeVar

from ._snapshot import Scratch, Snapshot, peek
from .errors import PmemMetricsError, SegmentError, SegmentReplacedError
from .registry import Registry, Stats
from .segment import open_segment

_log = logging.getLogger("pmem_metrics")
_T = TypeVar("_T")

WRITABLE_WHERE_PERMITTED = False
"""Whether a read-only :class:`Followed` opens its segment read-write where this process may.

For a process that also flushes the segments it reads (the exporter's lines):
a segment it opened read-only cannot be opened read-write as well (``EBUSY``)
until that is closed, so a scrape that opened a new segment first would keep
the lines from it.  Where the process may not write (``EACCES``, ``EPERM``:
another user's, ``EROFS``) it is opened read-only, as asked.
"""
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class Followed:
    """The segment at *path*: opened read-only unless *readonly* is false, followed.

    *registry*: the segment already open at *path* (else it is opened at the
    first read).  *reopen* false: a segment replaced or removed stays
    unreadable (:class:`SegmentReplacedError`), as it is read no more.
    *labels*: what its series are labelled with (the caller's to use).
    *watched*: the caller tells when the path no longer names the file
    (:meth:`end`), so no read checks it (see the module's docstring).
    """

    __slots__ = (
        "ended", "ending", "error", "fresh", "identity", "labels", "path", "readonly",
        "registry", "reopen", "room", "watched",
    )  # fmt: skip

    def __init__(
        self,
        path: str,
        labels: dict[str, str] | None = None,
        *,
        readonly: bool = True,
        registry: Registry | None = None,
        reopen: bool = True,
        watched: bool = False,
    ) -> None:
        self.path = path
        self.labels = labels if labels is not None else {}
        self.readonly = readonly
        self.registry = registry
        self.reopen = reopen
        self.watched = watched
        self.identity: tuple[int, int] | None = None
        """``(st_dev, st_ino)`` of the file open, when watched (else None)."""
        self.ending = False
        """Told that the path names another file or none: the next read is the final one."""
        self.ended = False
        """Watched and read out: never opened again by this object."""
        self.error: str | None = None
        """Why the last read failed (``"no segment"`` while the path has none); else None."""
        self.fresh = True
        """(Re)opened since the last read: its counts start new baselines (``top``'s rates)."""
        self.room: Stats | None = None
        """The segment's room as of the last read; None if unread."""

    def open(self) -> Registry | None:
        """Its registry, opening the path if need be: None while the path has no segment."""
        if self.registry is None:
            try:
                registry = self._open()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                return None
            if self.watched:
                try:
                    registry.forget_path()  # the caller watches the path: no read stats it
                    self.identity = registry.identity()
                except BaseException:
                    registry.close()
                    raise
            self.registry = registry
            self.fresh = True
        return self.registry

    def _open(self) -> Registry:
        if self.readonly and WRITABLE_WHERE_PERMITTED:
            try:
                return open_segment(self.path, create=False)
            except OSError as e:
                if e.errno not in _NOT_WRITABLE:
                    raise
        return open_segment(self.path, readonly=self.readonly, create=False)

    def peek(self, deadline: float, scratch: Scratch | None = None) -> Snapshot | None:
        """Every device's counts now (C's peek), and its room; its final ones once it is gone.

        None, with :attr:`error` saying why, while the path has no segment.
        Raises what a peek raises for a segment that cannot be read, and
        :class:`SegmentReplacedError` for a replaced one when not *reopen*.
        """
        snap = self.use(lambda r: peek(r._r, deadline, scratch=scratch))
        room = None if snap is None else snap.room
        self.room = None if room is None else Stats(*room)
        return snap

    def read(self) -> dict[str, dict[str, int]] | None:
        """The counts as :meth:`Registry.read` gives them, as :meth:`peek` reads them; None,
        with :attr:`error` saying why, when they cannot be read (``top`` shows why)."""
        self.room = None
        try:
            counts = self.use(Registry.read)
        except (PmemMetricsError, OSError) as e:
            self.error = (e.strerror if isinstance(e, OSError) else None) or str(e)
            return None
        try:
            self.room = None if self.registry is None else self.registry.stats()
        except (PmemMetricsError, OSError):
            pass  # read a moment ago: its room left out
        return counts

    def use(self, call: Callable[[Registry], _T]) -> _T | None:
        """*call* on the registry (a peek, a read, a line); the final one once it is gone.

        When the path no longer names the file, *call* runs once more on the
        old file, then the registry is closed: the next use opens the path
        again (not if :attr:`watched`: once :meth:`end` was called, this is the last).
        None, with :attr:`error` set, while the path has no segment.
        """
        if self.ended:
            self.error = "no segment"
            return None
        registry = self.open()
        if registry is None:
            self.error = "no segment"
            return None
        if self.ending:
            return self._final(registry, call)
        try:
            out = call(registry)
        except SegmentReplacedError:
            if not self.reopen:
                raise
            return self._final(registry, call)
        self.error = None
        return out

    def _final(self, registry: Registry, call: Callable[[Registry], _T]) -> _T:
        """*call*'s last run on the file *registry* has open, then the registry let go.

        If *call* fails for want of its destination (a line that did not go
        out), the registry is kept and the next use runs it again: the
        counts a VM left are never let go unreported.  If the file itself
        cannot be read (a :class:`SegmentError`), nothing more can come of
        it: it is let go, and the error raised.
        """
        registry.forget_path()
        self.ending = True  # until the final call succeeds, every use is the final one
        try:
            out = call(registry)
        except SegmentError:
            self._ended()
            raise
        self._ended()
        _log.info("pmem_metrics: the segment at %s was removed or replaced: final counts read",
                  self.path)  # fmt: skip
        self.error = None
        return out

    def _ended(self) -> None:
        self.ending = False
        self.let_go()
        self.ended = self.watched

    def end(self) -> None:
        """The path names another file or none (a watcher saw it): the next use is the final
        one, through the descriptor still open, then the registry is let go for good."""
        self.ending = True

    def let_go(self) -> None:
        """Close its registry (the path is opened again at the next use)."""
        registry, self.registry = self.registry, None
        if registry is not None:
            try:
                registry.close()
            except OSError as e:  # a handle of it held here: it stays open, and is not read
                _log.warning("pmem_metrics: cannot let go of the segment at %s: %s", self.path, e)
