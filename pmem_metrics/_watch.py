"""The directories where a fleet's patterns can match, watched with inotify.

For ``/srv/jailer/firecracker/{vm}/root/run/pmem.seg`` the directory before
the first wildcard, ``/srv/jailer/firecracker``, is watched, and below it
every directory that matches the pattern so far: ``<vm>``, ``<vm>/root``
and ``<vm>/root/run``, three watches a VM.  A directory that appears is
watched at once (then its subtree is looked at, so what was made in it
before the watch is found too); one removed or moved away is watched no
more.  Each event names an entry of a watched directory; those that match
the pattern's component there come out of :meth:`Watcher.changes` as
:class:`Touched` paths, for the fleet to look at (what is below or at them).

Symbolic links are never followed below the directory before the first
wildcard (``IN_DONT_FOLLOW | IN_ONLYDIR``): a link there is no directory
to watch.  Each watch counts against the user's ``fs.inotify.max_user_watches``;
past it (``ENOSPC``) the directories left are not watched, which is logged
once, and :attr:`Watcher.complete` is false until a later :meth:`~Watcher.sync`
watches them all: the fleet looks at everything every second meanwhile.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, NamedTuple

from ._binding import lib
from ._inotify import DIR_EVENTS, Inotify

if TYPE_CHECKING:
    from ._pattern import Pattern

_log = logging.getLogger("pmem_metrics")

_GONE = (errno.ENOENT, errno.ENOTDIR, errno.EACCES)  # a directory gone, a link, not ours to read
_LIMIT = "/proc/sys/fs/inotify/max_user_watches"


class Touched(NamedTuple):
    """A path where something changed: what *pattern* matches at or below it is to be seen."""

    pattern: Pattern
    path: str
    level: int
    """The index in :attr:`Pattern.parts` of the path's last component."""


class _Dir:
    """A watched directory: its entries are matched against ``pattern.parts[level]``."""

    __slots__ = ("level", "parent", "pattern", "prefix", "subdirs", "wd")

    def __init__(self, pattern: Pattern, prefix: str, level: int, parent: _Dir | None) -> None:
        self.pattern, self.prefix, self.level, self.parent = pattern, prefix, level, parent
        self.wd = -1
        self.subdirs: dict[str, _Dir] = {}


class Watcher:
    """Watches for *patterns*; ``OSError`` where inotify cannot be had (``ENOSYS``, ``EMFILE``)."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self._inotify = Inotify()
        self._bases = [_Dir(p, p.prefix, 0, None) for p in patterns]
        self._by_wd: dict[int, list[_Dir]] = {}
        self._full = False  # a watch was refused for want of room in this pass
        self._said: set[int] = set()  # the errnos of refusals logged
        self.complete = False
        """Whether every directory the patterns need is watched (at the last sync and since)."""

    def sync(self) -> None:
        """Watch every directory the patterns need that is not watched yet (the ones just
        made, or those past the watch limit last time).  Reads each level's directory."""
        self._full = False
        self.complete = all(self._watch(d) for d in self._bases)

    def changes(self) -> list[Touched] | None:
        """What changed since the last call, drained without waiting; None when events were
        lost (the queue overflowed) or a base directory went: look at everything then."""
        events, lost = self._inotify.read()
        touched: list[Touched] = []
        for event in events:
            for d in list(self._by_wd.get(event.wd, ())):
                if event.mask & lib.IN_IGNORED or (
                    event.mask & (lib.IN_DELETE_SELF | lib.IN_MOVE_SELF) and d.parent is None
                ):
                    self._drop(d)
                    lost |= d.parent is None  # the base: watched again at the next sync
                    continue
                name = event.name
                if not name or not d.pattern.matches(d.level, name):
                    continue
                path = d.prefix + name
                if d.level < len(d.pattern.parts) - 1:  # a directory level: directories only
                    if not event.mask & lib.IN_ISDIR:
                        continue
                    old = d.subdirs.pop(name, None)
                    if old is not None:
                        self._drop(old)
                    if event.mask & (lib.IN_CREATE | lib.IN_MOVED_TO):
                        sub = d.subdirs[name] = _Dir(d.pattern, path + "/", d.level + 1, d)
                        self.complete &= self._watch(sub)
                touched.append(Touched(d.pattern, path, d.level))
        return None if lost else touched

    def _watch(self, d: _Dir) -> bool:
        """Watch *d* and the directories below it that match; whether none was left out."""
        if d.wd < 0:
            if self._full:
                return False
            path = d.prefix.rstrip("/") or ("/" if d.prefix else ".")
            base = d.parent is None
            mask = DIR_EVENTS | lib.IN_ONLYDIR | (0 if base else lib.IN_DONT_FOLLOW)
            try:
                d.wd = self._inotify.add(path, mask)
            except OSError as e:
                if e.errno in _GONE and not base:
                    return True
                self._refused(path, e)
                return False
            self._by_wd.setdefault(d.wd, []).append(d)
        if d.level == len(d.pattern.parts) - 1:
            return True
        ok = True
        for name in d.pattern.entries(d.prefix, d.level):  # directories, never a link
            if name not in d.subdirs:
                d.subdirs[name] = _Dir(d.pattern, d.prefix + name + "/", d.level + 1, d)
        for sub in list(d.subdirs.values()):
            ok = self._watch(sub) and ok
        return ok

    def _refused(self, path: str, e: OSError) -> None:
        """Log once (for each reason) that a watch was refused: the rescan finds what it
        would have."""
        self._full |= e.errno == errno.ENOSPC
        if (e.errno or 0) in self._said:
            return
        self._said.add(e.errno or 0)
        if e.errno == errno.ENOSPC:
            try:
                with open(_LIMIT, encoding="ascii") as f:
                    limit = f.read().strip()
            except OSError:
                limit = "?"
            why = f"out of inotify watches (fs.inotify.max_user_watches = {limit})"
        else:
            why = e.strerror or str(e)
        # A directory not there yet (no VM so far) is no surprise.
        level = logging.INFO if e.errno == errno.ENOENT else logging.WARNING
        _log.log(level, "pmem_metrics: cannot watch %s: %s: segments there are found by a "
                 "rescan each second", path, why)  # fmt: skip

    def _drop(self, d: _Dir) -> None:
        """Watch *d* and everything below it no more."""
        for sub in list(d.subdirs.values()):
            self._drop(sub)
        d.subdirs.clear()
        if d.parent is not None and d.parent.subdirs.get(d.prefix[len(d.parent.prefix) : -1]) is d:
            del d.parent.subdirs[d.prefix[len(d.parent.prefix) : -1]]
        if d.wd >= 0:
            dirs = self._by_wd.get(d.wd, [])
            if d in dirs:
                dirs.remove(d)
            if not dirs:
                self._by_wd.pop(d.wd, None)
                self._inotify.remove(d.wd)
            d.wd = -1

    def close(self) -> None:
        """Stop watching (the descriptor closed)."""
        self._inotify.close()
