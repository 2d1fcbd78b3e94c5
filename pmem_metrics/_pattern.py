"""A path glob whose wildcards may be named: where a fleet looks for segments.

``/srv/jailer/firecracker/{vm}/root/run/pmem.seg`` matches as
``/srv/jailer/firecracker/*/root/run/pmem.seg`` does, and what ``{vm}``
matched labels the segment found there.  The part before the first
component with a wildcard, its :attr:`~Pattern.prefix`, is a path as given
(a symbolic link in it is followed); below it the components are matched
one directory at a time, as :mod:`glob` does (a name starting with ``.``
only by a component that does too), except that a symbolic link is never
followed: a segment is found only where the directories are real, so a link
does not make a path that matches lead somewhere else.  (A link swapped in
between the walk and the opening of a segment is not caught: opening is by
path, in C.)
"""

from __future__ import annotations

import glob
import os
import re
import stat

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = ("drive_id", "segment")
"""Label names every series has already: a pattern cannot name a wildcard so."""


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


def _regex(text: str) -> str:
    """The regular expression of a pattern (or part): each ``{name}`` a named ``*``."""
    parts = re.split(r"\{([^{}]*)\}", text)
    return "".join(_glob_regex(p) if k % 2 == 0 else f"(?P<{p}>[^/]*)" for k, p in enumerate(parts))


class Pattern:
    """A path glob whose wildcards may be named ``{name}``; ``ValueError`` naming it if bad."""

    __slots__ = ("_levels", "_regex", "_static", "glob", "names", "parts", "prefix", "text")

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
        """The pattern as a plain glob: each ``{name}`` a ``*``."""
        self._regex = re.compile(_regex(text))
        comps = text.split("/")
        wild = [k for k, c in enumerate(comps) if "{" in c or glob.has_magic(c)]
        first = min(wild[0] if wild else len(comps) - 1, len(comps) - 1)
        self.prefix = "".join(c + "/" for c in comps[:first])
        """The path before the first component with a wildcard, with its ``/`` (or ``""``)."""
        self.parts = tuple(comps[first:])
        """The components after :attr:`prefix`: directory levels, then the file's."""
        self._levels = tuple(re.compile(_regex(c)) for c in self.parts)
        self._static = tuple("{" not in c and not glob.has_magic(c) for c in self.parts)

    def labels(self, path: str) -> dict[str, str] | None:
        """What each named wildcard matched in *path*; None if it does not match."""
        m = self._regex.fullmatch(path)
        return None if m is None else m.groupdict()

    def matches(self, level: int, name: str) -> bool:
        """Whether *name* matches component *level* of :attr:`parts` (a dot name, only a
        component that starts with a dot, as in :mod:`glob`)."""
        part = self.parts[level]
        hidden_ok = not name.startswith(".") or part.startswith(".")
        return hidden_ok and name not in (".", "..") and bool(self._levels[level].fullmatch(name))

    def entries(self, prefix: str, level: int) -> list[str]:
        """The names in directory *prefix* matching component *level*: directories (never a
        link) above the file's level, anything at it."""
        last = level == len(self.parts) - 1
        if self._static[level]:
            name = self.parts[level]
            try:
                mode = os.lstat(prefix + name).st_mode
            except OSError:
                return []
            return [name] if last or stat.S_ISDIR(mode) else []
        try:
            with os.scandir(prefix or ".") as it:
                return [
                    e.name
                    for e in it
                    if self.matches(level, e.name) and (last or e.is_dir(follow_symlinks=False))
                ]
        except OSError:
            return []

    def find(self, path: str | None = None, level: int = -1) -> dict[str, dict[str, str]]:
        """Every path it matches now, and its labels; only those at or below *path* when given,
        an entry that matches component *level* (as :meth:`entries` found it)."""
        found: dict[str, dict[str, str]] = {}
        if path is None:
            self._walk(self.prefix, 0, found)
        elif level == len(self.parts) - 1:
            if os.path.lexists(path) and (labels := self.labels(path)) is not None:
                found[path] = labels
        elif os.path.isdir(path) and not os.path.islink(path):
            self._walk(path + "/", level + 1, found)
        return found

    def _walk(self, prefix: str, level: int, found: dict[str, dict[str, str]]) -> None:
        last = level == len(self.parts) - 1
        for name in self.entries(prefix, level):
            if not last:
                self._walk(prefix + name + "/", level + 1, found)
            elif (labels := self.labels(prefix + name)) is not None:
                found[prefix + name] = labels

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"
