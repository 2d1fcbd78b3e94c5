"""Segments found by patterns: the VMs of a host, each labelled by its path.

A host runs one VMM a microVM, each with its segment under its own jail::

    /srv/jailer/firecracker/{vm}/root/run/pmem.seg

A :class:`Pattern` is such a path: a glob (``*``, ``?``, ``[...]`` within a
path component) whose wildcards may be named, ``{name}`` matching as ``*``
does and labelling every series of the segment it found with
``name="<what it matched>"``.  A :class:`Fleet` follows every segment its
patterns match: opened when it appears, read through a
:class:`~pmem_metrics.follow.Followed` (its final counts once it is gone),
and let go once read out.  A file that matches but is not a segment is
logged once, and skipped; nothing is ever created.

# Discovery

Where the platform has inotify, the directories the patterns can match in
are watched (:mod:`pmem_metrics._watch`: for the pattern above,
``/srv/jailer/firecracker`` and each ``<vm>``, ``<vm>/root`` and
``<vm>/root/run``), and :meth:`Fleet.members` drains their events, without
waiting, before it answers: a segment linked in just before a scrape is in
that scrape.  The same events tell when a member's path was removed,
renamed away or replaced, so no read stats the path of a segment found by a
pattern (an explicit ``--shm`` path is still checked at every read, by C).

A full rescan stays, as the fallback and the guard: every :data:`RESCAN_WATCHED`
seconds while every directory is watched (against events missed), every
:data:`RESCAN` seconds where there is no inotify, where a watch was refused
(``fs.inotify.max_user_watches`` reached: ``ENOSPC``, logged once; each
rescan tries to add the watches still missing), or while the directory
before the first wildcard does not exist; at once after the kernel's event
queue overflowed (``IN_Q_OVERFLOW``).  A rescan walks the patterns and
compares each member's path (``os.lstat``) with the file it has open.

Segments are made whole under a temporary name (``.NAME.PID.N.tmp``) and
linked in, each with its lock file ``NAME.lock``: neither is taken for a
segment (a lock file is skipped silently when its segment exists or matches).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import threading
import time
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence

from ._pattern import RESERVED, Pattern
from ._watch import Touched, Watcher
from .errors import PmemMetricsError
from .follow import Followed

_log = logging.getLogger("pmem_metrics")

__all__ = ["RESCAN", "RESCAN_WATCHED", "RESERVED", "Fleet", "Pattern"]

RESCAN = 1.0
"""Seconds between two full scans without inotify, or with directories not watched."""

RESCAN_WATCHED = 30.0
"""Seconds between two full scans while inotify watches every directory: a guard only."""

_TEMP = re.compile(r"\..+\.[0-9]+\.[0-9]+\.tmp")  # a segment being made (csrc/segment_file.c)


class Fleet:
    """Every segment *patterns* match, followed; read-only unless *readonly* is false.

    Raises ``ValueError`` for a bad pattern (naming it).  Labels that only
    some patterns name are ``""`` on the others' segments.  *rescan*: the
    seconds between full scans (default :data:`RESCAN_WATCHED` while inotify
    watches every directory, else :data:`RESCAN`); *watch* false: no inotify.
    """

    def __init__(
        self,
        patterns: Iterable[str | Pattern],
        *,
        readonly: bool = True,
        rescan: float | None = None,
        watch: bool = True,
    ) -> None:
        self.patterns = [p if isinstance(p, Pattern) else Pattern(p) for p in patterns]
        self.names: tuple[str, ...] = tuple(
            dict.fromkeys(n for p in self.patterns for n in p.names)
        )
        """Every label name of the patterns, in the order they first appear."""
        self.readonly = readonly
        self._rescan = rescan
        self._lock = threading.Lock()  # concurrent scrapes: one of them looks
        self._members: dict[str, Followed] = {}
        self._paths: list[str] = []  # the members', sorted
        self._order: tuple[Followed, ...] | None = ()
        self._ending: set[str] = set()  # members told to end: let go once read out
        self._scanned = -float("inf")
        self._skipped: set[str] = set()
        self.watcher: Watcher | None = None
        """The inotify watches (None without inotify: the rescan finds everything)."""
        if watch:
            try:
                self.watcher = Watcher(self.patterns)
            except OSError as e:  # no inotify here, or no instance left (max_user_instances)
                level = logging.INFO if e.errno == errno.ENOSYS else logging.WARNING
                _log.log(level, "pmem_metrics: no inotify (%s): patterns looked at every %g s",
                         e.strerror, RESCAN)  # fmt: skip

    @property
    def rescan(self) -> float:
        """Seconds between two full scans now (see the class)."""
        if self._rescan is not None:
            return self._rescan
        return RESCAN_WATCHED if self.watcher is not None and self.watcher.complete else RESCAN

    @rescan.setter
    def rescan(self, seconds: float | None) -> None:
        self._rescan = seconds

    def members(self) -> Sequence[Followed]:
        """The segments followed now, in path order: the watches' events seen first, and the
        patterns scanned again if a scan is due.  A member gone is in it once more, for its
        final read; a new one at its path, after that."""
        with self._lock:
            changes = self.watcher.changes() if self.watcher is not None else []
            if changes is None or time.monotonic() - self._scanned >= self.rescan:
                self._scan(rewatch=changes is None)
            else:
                for touched in changes:
                    self._look(touched)
            for path in [p for p in self._ending if self._members[p].ended]:
                self._ending.discard(path)
                self._drop(path)
                self._add(path)  # the next segment at its path, if one is there
            if self._order is None:
                self._order = tuple(self._members[p] for p in self._paths)
            return self._order

    def scan(self) -> None:
        """Look for segments now: new paths followed, each member's path checked."""
        with self._lock:
            self._scan(rewatch=True)

    def _scan(self, rewatch: bool = False) -> None:
        """The patterns walked, each member's path checked; the watches made whole first if
        some are missing or events were lost (*rewatch*), else the walk is a guard only."""
        self._scanned = time.monotonic()
        if self.watcher is not None and (rewatch or not self.watcher.complete):
            self.watcher.sync()  # before the walk: what appears meanwhile makes an event
        found: set[str] = set()
        for pattern in self.patterns:
            found.update(pattern.find())
        for path, member in self._members.items():
            if path not in found:
                self._end(path)
            else:
                self._check(member)
        for path in found:
            self._add(path)
        self._skipped &= found

    def _look(self, touched: Touched) -> None:
        """What is at or below a path an event named: members checked, new ones followed."""
        found = touched.pattern.find(touched.path, touched.level)
        if touched.path in self._members:
            self._check(self._members[touched.path])
        below = touched.path + "/"  # the paths below it are together in sorted order
        at = bisect_left(self._paths, below)
        while at < len(self._paths) and self._paths[at].startswith(below):
            self._check(self._members[self._paths[at]])
            at += 1
        for path in found:
            self._add(path)
        if touched.path not in found:
            self._skipped.discard(touched.path)

    def _check(self, member: Followed) -> None:
        """End *member* if its path no longer names the file it has open."""
        try:
            st = os.lstat(member.path)
        except (FileNotFoundError, NotADirectoryError):
            self._end(member.path)
            return
        except OSError:
            return  # cannot tell now: the next event or rescan will
        if (st.st_dev, st.st_ino) != member.identity:
            self._end(member.path)

    def _end(self, path: str) -> None:
        if path not in self._ending:
            self._ending.add(path)
            self._members[path].end()

    def _add(self, path: str) -> None:
        """Follow the segment at *path* if there is one and it is no member yet."""
        if path in self._members or self._ignored(path):
            return
        labels = self._labels(path)
        if labels is None:
            return
        member = Followed(path, labels, readonly=self.readonly, watched=True)
        try:
            if member.open() is None:
                return  # gone already
        except (PmemMetricsError, OSError) as e:
            self.skipped(member, e)
            return
        self._skipped.discard(path)
        self._members[path] = member
        insort(self._paths, path)
        self._order = None

    def _drop(self, path: str) -> None:
        del self._members[path]
        del self._paths[bisect_left(self._paths, path)]
        self._order = None

    def _labels(self, path: str) -> dict[str, str] | None:
        """The labels of *path*, from the first pattern that matches it; None if none does."""
        for pattern in self.patterns:
            labels = pattern.labels(path)
            if labels is not None:
                return {n: labels.get(n, "") for n in self.names}
        return None

    def _ignored(self, path: str) -> bool:
        """A segment being made, or a segment's lock file: never taken for a segment."""
        if _TEMP.fullmatch(path.rpartition("/")[2]):
            return True
        if path.endswith(".lock"):
            seg = path[: -len(".lock")]
            return self._labels(seg) is not None or os.path.lexists(seg)
        return False

    def skipped(self, member: Followed, why: object) -> None:
        """Log once that *member*'s file cannot be read (not a segment, say): skipped till then."""
        if member.path not in self._skipped:
            self._skipped.add(member.path)
            if isinstance(why, OSError) and why.errno == errno.EMFILE:
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the soft one
                _log.error(
                    "pmem_metrics: more segments than the open-file limit (%d) allows: "
                    "%s and any other past it are not read", limit, member.path,
                )  # fmt: skip
            else:
                _log.warning("pmem_metrics: skipping %s: %s", member.path, why)
