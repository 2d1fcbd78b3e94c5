"""Segments found by patterns: the VMs of a host, each labelled by its path.

A host runs one VMM a microVM, each with its segment under its own jail::

    /srv/jailer/firecracker/{vm}/root/run/pmem.seg

A :class:`Pattern` is such a path: a glob (``*``, ``?``, ``[...]`` within a
path component) whose wildcards may be named, ``{name}`` matching as ``*``
does and labelling every series of the segment it found with
``name="<what it matched>"``.  A :class:`Fleet` follows every segment its
patterns match: found at the first scan after it appears, read through a
:class:`~pmem_metrics.follow.Followed` (its final counts once it is gone),
and let go once its path matches no more.  A file that matches but is not a
segment is logged once, and skipped.
"""

from __future__ import annotations

import errno
import glob
import logging
import re
import resource
import time
from collections.abc import Iterable, Sequence

from .follow import Followed

_log = logging.getLogger("pmem_metrics")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = ("drive_id", "segment")
"""Label names every series has already: a pattern cannot name a wildcard so."""

RESCAN = 1.0
"""Seconds between two scans of the patterns, at most one per read."""


def _open_files() -> int:
    """The open-file limit of this process (soft)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _glob_regex(text: str) -> str:
    """The regular expression of the glob *text*, whose wildcards stay within a component."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in text[i + 2 :]:
            end = text.index("]", i + 2)
            body = text[i + 1 : end]
            out.append("[^" + re.escape(body[1:]) + "]" if body[:1] == "!" else "[" + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Pattern:
    """A path glob whose wildcards may be named ``{name}``; ``ValueError`` naming it if bad."""

    __slots__ = ("_regex", "glob", "names", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError(f"not a segment pattern: {text!r}")
        parts = re.split(r"\{([^{}]*)\}", text)
        names = parts[1::2]
        for name in names:
            if not _NAME.fullmatch(name):
                raise ValueError(f"{text}: {{{name}}} is not a label name (letters, digits, _)")
            if name in RESERVED or name.startswith("__"):
                raise ValueError(f"{text}: {{{name}}} is a label every series has already")
        if len(set(names)) != len(names):
            raise ValueError(f"{text}: a label named twice")
        if "{" in "".join(parts[0::2]) or "}" in "".join(parts[0::2]):
            raise ValueError(f"{text}: a brace that names no label")
        self.text = text
        self.names: tuple[str, ...] = tuple(names)
        """The names of its labelled wildcards, in order."""
        self.glob = "*".join(parts[0::2])
        """What :func:`glob.glob` is given: each ``{name}`` a ``*``."""
        regex = "".join(
            _glob_regex(p) if k % 2 == 0 else f"(?P<{p}>[^/]*)" for k, p in enumerate(parts)
        )
        self._regex = re.compile(regex)

    def find(self) -> dict[str, dict[str, str]]:
        """Every path it matches now, and its labels (what each named wildcard matched)."""
        found = {}
        for path in glob.glob(self.glob):
            m = self._regex.fullmatch(path)
            if m is not None:
                found[path] = m.groupdict()
        return found

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


class Fleet:
    """Every segment *patterns* match, followed; read-only unless *readonly* is false.

    Raises ``ValueError`` for a bad pattern (naming it).  Labels that only
    some patterns name are ``""`` on the others' segments.
    """

    def __init__(
        self, patterns: Iterable[str | Pattern], *, readonly: bool = True, rescan: float = RESCAN
    ) -> None:
        self.patterns = [p if isinstance(p, Pattern) else Pattern(p) for p in patterns]
        self.names: tuple[str, ...] = tuple(
            dict.fromkeys(n for p in self.patterns for n in p.names)
        )
        """Every label name of the patterns, in the order they first appear."""
        self.readonly = readonly
        self.rescan = rescan
        self._members: dict[str, Followed] = {}
        self._scanned = -float("inf")
        self._skipped: set[str] = set()

    def members(self) -> Sequence[Followed]:
        """The segments followed now (scanning the patterns again if one is due), in path order."""
        if time.monotonic() - self._scanned >= self.rescan:
            self.scan()
        return [self._members[p] for p in sorted(self._members)]

    def scan(self) -> None:
        """Look for segments now: new paths are followed, gone ones dropped once read out."""
        self._scanned = time.monotonic()
        found: dict[str, dict[str, str]] = {}
        for pattern in self.patterns:
            for path, labels in pattern.find().items():
                found.setdefault(path, {n: labels.get(n, "") for n in self.names})
        for path, labels in found.items():
            if path not in self._members:
                self._members[path] = Followed(path, labels, readonly=self.readonly)
        for path in list(self._members):
            member = self._members[path]
            if path not in found and member.registry is None:
                del self._members[path]  # gone, its final counts read: let go
                self._skipped.discard(path)

    def skipped(self, member: Followed, why: object) -> None:
        """Log once that *member*'s file cannot be read (not a segment, say): skipped till then."""
        if member.path not in self._skipped:
            self._skipped.add(member.path)
            if isinstance(why, OSError) and why.errno == errno.EMFILE:
                _log.error(
                    "pmem_metrics: more segments than the open-file limit (%d) allows: "
                    "%s and any other past it are not read", _open_files(), member.path,
                )  # fmt: skip
            else:
                _log.warning("pmem_metrics: skipping %s: %s", member.path, why)
