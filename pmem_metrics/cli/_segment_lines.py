"""Which segments the exporter's lines come from, and what each line says of its segment.

A :class:`SegmentLines` writes the lines of the segment at one path, through
a :class:`~pmem_metrics.follow.Followed`: a final line from a segment removed
or replaced (what it counted since the last line, read from the file still
open), then the next segment at the path, if any.  :class:`AllLines` holds
one for each ``--shm`` and one for each segment a ``--shm-glob`` pattern finds
now (:class:`~pmem_metrics.fleet.Fleet`, opened read-write: a line is a
flush); a pattern's segment that is gone gets its final line and is let go.

With more than one segment, every line says which it is from, in one
``"labels"`` object after the timestamp (:func:`pmem_metrics.flush.labels_json`)::

    {"utc_timestamp_ms":1700000000000,"labels":{"segment":"/srv/jailer/firecracker/a/root/run/pmem.seg","vm":"a"},"pmem_drv0":{...},"pmem":{...}}

the labels a Prometheus series of it has: ``segment``, the path, then each
name the patterns give (``""`` where a segment's pattern has no such name).
With one ``--shm`` the lines are Firecracker's, byte for byte: no labels.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from .. import follow
from ..fleet import Fleet
from ..follow import Followed
from ..registry import Registry
from ..writer import MetricsWriter


class SegmentLines:
    """The metrics lines of the segment at one path, from whichever segment is there now.

    *labels*: what each line says of it (``None``: nothing).  *given*: a
    path named on the command line: stderr says when its segment is removed
    and when another is there.  A pattern's, once gone, is let go with its
    final line, and one that cannot be opened for writing (a read-only
    agent's) is said once and skipped, tried again at each beat.
    """

    def __init__(
        self,
        followed: Followed,
        writer: MetricsWriter,
        say: Callable[[str], None],
        labels: Mapping[str, str] | None,
        given: bool,
    ) -> None:
        self.followed = followed
        self.path = followed.path
        self.labels = labels
        self._writer = writer
        self._say = say  # one line on stderr
        self._given = given
        self._seen: Registry | None = followed.registry  # the last segment lines came from
        self._gone = False  # the path had no segment at the last look (said once)
        self._refused = False  # cannot be opened for writing (said once)

    def write(self) -> bool:
        """Write a line; ``False`` (none written) while there is no segment to write it of."""
        try:
            registry = self.followed.open()
        except OSError as e:
            if self._given:
                raise  # a failed line, said and tried again as any
            if not self._refused:
                why = "lines need write access: " if e.errno in (errno.EACCES, errno.EPERM) else ""
                self._say(
                    f"no metrics lines from {self.path!r} ({why}{e}); Prometheus and "
                    "OpenTelemetry still read it; tried again at each beat, said once"
                )
                self._refused = True
            return False
        self._refused = False
        if registry is None:
            if self._given and not self._gone:
                self._say(f"the segment at {self.path!r} was removed; waiting for a new one")
            self._gone = True
            return False
        if self._given and self._seen is not None and registry is not self._seen:
            self._say(f"the segment at {self.path!r} was replaced; lines come from the new one")
        self._seen, self._gone = registry, False
        self._writer.set_registry(registry, self.labels)
        return bool(self.followed.use(lambda _: self._writer.write()))


class AllLines:
    """The :class:`SegmentLines` of *segments* (``--shm``) and of what *fleet* finds, in order.

    Calling it gives them as they are now (the fleet scanned again when due).
    A pattern's segment that is also given is written once, as given.
    """

    def __init__(
        self,
        segments: Mapping[str, Registry],
        fleet: Fleet | None,
        writer: MetricsWriter,
        say: Callable[[str], None],
    ) -> None:
        self._fleet = fleet
        self._writer = writer
        self._say = say
        self.labelled = len(segments) > 1 or fleet is not None
        """Whether lines say which segment they are from (more than one could be)."""
        blank = dict.fromkeys(fleet.names if fleet is not None else (), "")
        self.given = [
            SegmentLines(
                Followed(path, readonly=False, registry=registry),
                writer,
                say,
                {"segment": path, **blank} if self.labelled else None,
                given=True,
            )
            for path, registry in segments.items()
        ]
        self._found: dict[str, SegmentLines] = {}  # what the patterns found, by path

    def __call__(self) -> list[SegmentLines]:
        if self._fleet is None:
            return self.given
        given = {s.path for s in self.given}
        found = {}
        for member in self._fleet.members():
            if member.path in given:
                continue
            lines = self._found.get(member.path)
            if lines is None or lines.followed is not member:
                labels = {"segment": member.path, **member.labels}
                lines = SegmentLines(member, self._writer, self._say, labels, given=False)
            found[member.path] = lines
        self._found = found
        return [*self.given, *found.values()]


@contextmanager
def writable_where_permitted(lines: bool) -> Iterator[None]:
    """While in it, with *lines*, the scrape's and OTLP's segments are opened read-write where
    this process may (:data:`pmem_metrics.follow.WRITABLE_WHERE_PERMITTED`): else one a scrape
    opened first, read-only, could not be opened for its lines (``EBUSY``)."""
    before = follow.WRITABLE_WHERE_PERMITTED
    follow.WRITABLE_WHERE_PERMITTED = lines or before
    try:
        yield
    finally:
        follow.WRITABLE_WHERE_PERMITTED = before
