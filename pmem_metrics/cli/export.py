"""The exporter: ``python -m pmem_metrics export --shm PATH [--shm PATH ...]``.

It opens existing shared segments (without attaching itself to any, and
never creating one: a mistyped path is an error, not a new file; with
``--wait`` it waits for the segment to appear) and reports every device of
every process in them: Firecracker metrics lines every ``--interval``
seconds (and a final one), a Prometheus endpoint, an OpenTelemetry push
(:mod:`._otlp`), or any of them together, until Ctrl-C, SIGTERM or
``--duration``, never on a fault that passes (:mod:`._lines`); SIGHUP reopens
``--metrics-path`` (log rotation).  It creates no device of its own.

Lines are flushes: they report each count once, across every process that
flushes the segment.  A flush moves the segment's baselines, so lines need
write access to it (a pattern's segment without it is said once and gets no
lines).  With several segments each beat writes a line per segment, which
says in ``"labels"`` which it is from (:mod:`._segment_lines`).  Prometheus
and OpenTelemetry read (they reset nothing), each series labelled with the
path it was given as (``segment``, ``pmem.segment``; one segment given twice
is read once, under the first).  Without lines the segments are opened
read-only: read permission is enough (a 0640 segment scraped by its group).

The exporter follows its paths: when a segment is removed or replaced (its
process restarted, say), what it counted since the last line or scrape is
read once more from the file still open -- a final line; the next scrape and
OTLP export carry it -- and the old segment is closed; a scrape then reports
``pmem_segment_up`` 0 until a segment is at the path again, then the new one
under the same label, and lines come from the new one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext

from ..fleet import Fleet, Pattern
from ..registry import Registry
from ..writer import DEFAULT_TIMEOUT, MetricsWriter
from ._args import (
    add_otlp,
    add_prometheus,
    counted,
    interval,
    otlp_of,
    prog,
    prometheus_of,
    seconds,
)
from ._given import missing, open_given
from ._lines import Lines, add_write_timeout
from ._segment_lines import AllLines, writable_where_permitted
from ._service import Signals, raise_open_files, serve_prometheus


def _say(line: str) -> None:  # one line on stderr, as export: LINE
    print(f"export: {line}", file=sys.stderr, flush=True)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``export`` command and its options."""
    p = commands.add_parser(
        "export",
        help="report every device of a shared segment: lines, Prometheus, OpenTelemetry",
        description="Report every device of existing shared segments, from every process "
        "in them: a Firecracker metrics line a segment every --interval seconds (needs write "
        'access; with several segments each line says which, as "labels":{"segment":PATH,'
        '"vm":...} after utc_timestamp_ms), and/or a Prometheus endpoint, and/or an '
        "OpenTelemetry push (read access is enough). A failed line is tried again at the next "
        "beat. "
        "Ctrl-C or SIGTERM ends it (final line, then status 130 or 0; a second one abandons "
        "a line that hangs); SIGHUP reopens --metrics-path.",
    )
    p.add_argument(
        "--shm",
        action="append",
        default=[],
        metavar="PATH",
        help="a shared segment to read (repeat it for several)",
    )
    p.add_argument(
        "--shm-glob",
        action="append",
        default=[],
        metavar="PATTERN",
        help="every shared segment at a path PATTERN matches, found as it appears and let go "
        "once gone; {NAME} matches as * does and labels its series and lines NAME=<match> "
        "(repeat it for several), e.g. /srv/jailer/firecracker/{vm}/root/run/pmem.seg",
    )
    p.add_argument(
        "--metrics-path",
        metavar="PATH",
        help="file or named pipe to write lines to (default: stdout, unless Prometheus or "
        "OTLP was asked for)",
    )
    p.add_argument(
        "--interval",
        type=interval,
        default=60.0,
        metavar="SECONDS",
        help="seconds between lines (default 60, at least 0.01)",
    )
    p.add_argument(
        "--duration",
        type=seconds,
        default=float("inf"),
        metavar="SECONDS",
        help="seconds to run (default: until stopped)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for a segment that is not there yet (until --duration), instead of failing",
    )
    add_write_timeout(p)
    add_prometheus(p, "the counters")
    add_otlp(p, "the counters")
    p.set_defaults(run=_main)


def _main(a: argparse.Namespace) -> int:
    return export(
        a.shm,
        a.metrics_path,
        a.interval,
        a.duration,
        prometheus_of(a),
        a.wait,
        otlp_of(a),
        patterns=a.shm_glob,
        write_timeout=a.write_timeout,
    )


def export(
    shms: Sequence[str],
    metrics_path: str | None,
    interval: float,
    duration: float,
    prometheus: tuple[int, str] | None,
    wait: bool = False,
    otlp: tuple[str, float] | None = None,
    patterns: Sequence[str] = (),
    write_timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Run the exporter; return the process exit status (130 after a Ctrl-C, else 0).

    Lines go to *metrics_path*, or to stdout unless *prometheus* (port, address)
    or *otlp* (URL, interval) was asked for, each waiting *write_timeout*
    seconds at most; *patterns* find more segments (``--shm-glob``).  With
    *wait*, a segment not there yet is waited for (within *duration*), not an
    error.
    """
    lines_wanted = metrics_path is not None or (prometheus is None and otlp is None)
    paths = list(dict.fromkeys(shms))
    if not paths and not patterns:
        raise SystemExit(
            f"{prog()} export: give the segments to read: --shm PATH or --shm-glob PATTERN"
        )
    for pattern in patterns:
        try:
            Pattern(pattern)
        except ValueError as e:
            raise SystemExit(f"{prog()} export: --shm-glob {e}") from None
    if lines_wanted and metrics_path is None and sys.stdout is None:
        raise SystemExit(f"{prog()}: stdout is closed; give --metrics-path")
    for path in paths:
        if not path:
            raise missing(path)
    if otlp is not None:
        try:
            from ._otlp import Pusher  # the extra otel: imported only when asked for
        except ImportError:
            raise SystemExit(
                f"{prog()} export: --otlp-endpoint needs pip install '.[otel]'"
            ) from None
    raise_open_files()
    writer = MetricsWriter()
    on_hup = writer.reopen if metrics_path is not None else None
    with Signals(on_hup=on_hup) as signals, writable_where_permitted(lines_wanted):
        start = time.monotonic()
        segments: dict[str, Registry] = {}
        for path in paths:
            # Lines flush, which writes to the segment; Prometheus and OTLP only read.
            until = start + duration if wait else None
            registry = open_given(path, not lines_wanted, signals, until)
            if registry is None:
                _say(f"interrupted while waiting for {path!r}")
                return signals.status
            if registry not in segments.values():
                segments[path] = registry
        beats: Lines | None = None
        if lines_wanted:
            writer.init(sys.stdout if metrics_path is None else metrics_path, timeout=write_timeout)
            # The patterns' own Fleet for the lines (the scrape's is read on its threads); both
            # open read-write where they may, so share each segment's registry.
            every = AllLines(segments, Fleet(patterns, readonly=False) if patterns else None,
                             writer, _say)  # fmt: skip
            single = None if every.labelled else next(iter(segments))
            beats = Lines("export", every, single, stdout=metrics_path is None)
        with nullcontext() if beats is None else beats:  # says what a second signal left
            if prometheus is not None:
                serve_prometheus(
                    *prometheus, who="export", segments=segments, reopen=True, patterns=patterns
                )
            with nullcontext() if otlp is None else Pusher(*otlp, segments, "export", patterns):
                if beats is not None:
                    # Beats count from now: the wait for a segment must not make them late.
                    opened = time.monotonic()
                    beats.run(signals, opened, interval, start + duration - opened)
                else:
                    signals.sleep_until(start + duration)
    what = "served" if beats is None else counted(beats.written, "metrics line")
    _say(f"{what}, {counted(len(segments), 'segment')}, {time.monotonic() - start:.2f} s")
    return signals.status
