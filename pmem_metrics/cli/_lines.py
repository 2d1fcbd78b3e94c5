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

Each beat writes a line per segment (:mod:`._segment_lines`), each tried
on its own: one segment's failing lines are said once for that segment, the
others' go on.  A line whose destination failed ends the beat, as every
other line would wait on it too: they are all tried at the next.

A stop (:class:`~._service.Signals`) ends the beats; the final lines then
wait at most the write timeout (the first whose destination fails ends
them), and a line that did not go out says, in one line, where its counts
are.  A second stop signal abandons the line under way at once
(:class:`~._service.Abandoned`): leaving a :class:`Lines` (a context
manager) with it says so, and lets it on its way out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import PmemMetricsError
from ..writer import DEFAULT_TIMEOUT
from ._args import counted, positive
from ._segment_lines import SegmentLines
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


def _kept(path: str) -> str:
    """Where the counts of a line of *path* that did not go out are: its flush was withdrawn."""
    return f"its counts stay in the segment {path!r} for its next flush, whoever makes it"


_KEPT_ALL = "their counts stay in their segments for their next flushes, whoever makes them"


def _of_destination(e: BaseException) -> bool:
    """Whether *e* is the destination's failure (every line would wait on it), not a segment's."""
    return isinstance(e, OSError) and not isinstance(e, PmemMetricsError)


class Lines:
    """Metrics lines of the segments *segments* gives (asked at each beat), one each a beat.

    *who* begins what it says on stderr; *single*: the one path lines come
    from, if only one (said where counts stay after a second signal);
    *stdout*: the lines go to stdout, whose broken pipe ends them.
    """

    def __init__(
        self,
        who: str,
        segments: Callable[[], Sequence[SegmentLines]],
        single: str | None,
        stdout: bool,
    ) -> None:
        self._who = who
        self._segments = segments
        self._kept = _kept(single) if single else _KEPT_ALL
        self._stdout = stdout
        self.written = 0
        """Lines that went out."""
        self.failing: dict[str, str] = {}
        """Why the last line of each segment whose lines fail failed, by path."""

    def _say(self, text: str) -> None:
        print(f"{self._who}: {text}", file=sys.stderr, flush=True)

    def _attempt(self, segment: SegmentLines) -> tuple[bool, BaseException | None]:
        """Write *segment*'s line: whether one went out, and why not if it failed."""
        try:
            wrote = segment.write()
        except (PmemMetricsError, OSError) as e:
            if self._stdout and isinstance(e, BrokenPipeError):
                raise
            return False, e
        self.written += wrote
        return wrote, None

    def write(self) -> int:
        """One beat's lines; how many went out (a segment's failing lines are said once)."""
        segments = self._segments()
        wrote = 0
        for segment in segments:
            path = segment.path
            ok, e = self._attempt(segment)
            if e is not None:
                if path not in self.failing:
                    self._say(
                        f"a metrics line failed ({e}); {_kept(path)}; the next beat tries again"
                    )
                self.failing[path] = str(e)
                if _of_destination(e):
                    break  # the others would wait on it too: all tried at the next beat
            elif ok:
                wrote += 1
                if self.failing.pop(path, None) is not None:
                    self._say(f"metrics lines go out again from {path!r}")
        followed = {s.path for s in segments}
        self.failing = {p: why for p, why in self.failing.items() if p in followed}
        return wrote

    def run(self, signals: Signals, start: float, interval: float, duration: float) -> int:
        """Lines per beat from *start* (as :func:`~._service.write_lines`), then the final ones.

        Returns the lines that went out.
        """
        write_lines(signals, start, interval, duration, self.write)
        segments = self._segments()
        for k, segment in enumerate(segments):
            e = self._attempt(segment)[1]
            if e is None:
                continue
            self._say(f"the final line was not written ({e}); {_kept(segment.path)}")
            if _of_destination(e) and k + 1 < len(segments):
                self._say(
                    f"the final lines of {counted(len(segments) - k - 1, 'more segment')} were "
                    "not tried "
                    f"(the same destination); {_KEPT_ALL}"
                )
                break
        return self.written

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is not None and issubclass(kind, Abandoned):
            self._say(f"a second signal: stopped at once, without a final line; {self._kept}")
