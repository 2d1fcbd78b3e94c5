"""The exporter's metrics lines as a service: one per beat and a final one, ended by no fault.

A line that fails -- its destination did not take it within the write
timeout (a pipe whose reader paused), a segment's flush lock held past its
bound (a process stopped inside a flush), a segment corrupt for a moment --
is not the end of the exporter, nor of its Prometheus and OpenTelemetry
endpoints: the writer withdrew the flush, so the counts stay in the segment
and the next flush of it reports them (the next line that goes out, or
another writer's).  Lines are tried again every beat; stderr says when they
start failing and when they go out again, not at every beat.  A broken pipe
on stdout is the end (nobody can read stdout again): it is raised.

A stop (:class:`~._service.Signals`) ends the beats; the final line then
waits at most the write timeout, and a line that did not go out says, in
one line, where its counts are.  A second stop signal abandons the line
under way at once (:class:`~._service.Abandoned`): leaving a :class:`Lines`
(a context manager) with it says so, and lets it on its way out.

:class:`SegmentLines` writes the lines of the segment at a path, from
whichever segment is there: a final line from one removed or replaced.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..errors import PmemMetricsError
from ..follow import Followed
from ..registry import Registry
from ..writer import DEFAULT_TIMEOUT, MetricsWriter
from ._args import positive
from ._service import Abandoned, Signals, write_lines


def add_write_timeout(p: argparse.ArgumentParser) -> None:
    """``--write-timeout``: how long a line may wait for its destination."""
    p.add_argument(
        "--write-timeout",
        type=positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds a line may wait for its destination to take it (default "
        f"{DEFAULT_TIMEOUT:g}); a line that fails is tried again at the next beat, its counts "
        "kept, and at a stop the line under way and the final one wait this long at most",
    )


class Lines:
    """Metrics lines of the segment at *path* that *write* writes (``False``: none was).

    *who* begins what it says on stderr; *stdout*: the lines go to stdout,
    whose broken pipe ends them.
    """

    def __init__(self, who: str, write: Callable[[], bool], path: str, stdout: bool) -> None:
        self._who = who
        self._write = write
        # Where the counts no line reported are: a flush whose line did not go out is withdrawn.
        self._kept = f"its counts stay in the segment {path!r} for its next flush, whoever makes it"
        self._stdout = stdout
        self.written = 0
        """Lines that went out."""
        self.failing: str | None = None
        """Why the last line failed, while lines fail; ``None`` once one goes out."""

    def _say(self, text: str) -> None:
        print(f"{self._who}: {text}", file=sys.stderr, flush=True)

    def _attempt(self) -> tuple[bool, str | None]:
        """Write a line: whether one went out, and why not if it failed."""
        try:
            wrote = self._write()
        except (PmemMetricsError, OSError) as e:
            if self._stdout and isinstance(e, BrokenPipeError):
                raise
            return False, str(e)
        self.written += wrote
        return wrote, None

    def write(self) -> bool:
        """One beat's line; ``False`` if none went out (a failure is said once, until one does)."""
        wrote, why = self._attempt()
        if why is not None and self.failing is None:
            self._say(f"a metrics line failed ({why}); {self._kept}; the next beat tries again")
        elif wrote and self.failing is not None:
            self._say("metrics lines go out again")
        if wrote or why is not None:
            self.failing = why
        return wrote

    def run(self, signals: Signals, start: float, interval: float, duration: float) -> int:
        """A line per beat from *start* (as :func:`~._service.write_lines`), then the final one.

        Returns the lines that went out.
        """
        write_lines(signals, start, interval, duration, self.write)
        why = self._attempt()[1]
        if why is not None:
            self._say(f"the final line was not written ({why}); {self._kept}")
        return self.written

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is not None and issubclass(kind, Abandoned):
            self._say(f"a second signal: stopped at once, without a final line; {self._kept}")


class SegmentLines:
    """The metrics lines of the segment at one path, from whichever segment is there now.

    When the segment is removed or replaced, one more line reports what it
    counted since the last one (read from the file still open), then the
    path is followed to the next segment (:class:`~pmem_metrics.follow.Followed`).
    """

    def __init__(
        self, path: str, writer: MetricsWriter, registry: Registry, say: Callable[[str], None]
    ) -> None:
        self._say = say  # one line on stderr
        self._path = path
        self._writer = writer
        self._followed = Followed(path, readonly=False, registry=registry)
        self._gone = False  # the path had no segment at the last look (said once on stderr)

    def write(self) -> bool:
        """Write a line; ``False`` (none written) while the path has no segment."""
        registry = self._followed.open()
        if registry is None:
            if not self._gone:
                self._say(f"the segment at {self._path!r} was removed; waiting for a new one")
                self._gone = True
            return False
        if registry is not self._writer.registry:
            self._say(f"the segment at {self._path!r} was replaced; lines come from the new one")
            self._writer.set_registry(registry)
        self._gone = False
        return bool(self._followed.use(lambda _: self._writer.write()))
