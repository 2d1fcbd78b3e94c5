"""The live view: ``python -m pmem_metrics top --shm PATH [--shm PATH ...]``, like varnishstat.

A row per device and field: its count, its rate per second over the last
``--interval`` and its average per second since top first saw the device
(``-`` until a second read).  With several ``--shm`` or a ``--shm-glob``, a
SEGMENT column gives the path each row is from, and before it a column a
label the patterns name (``{vm}``: a VM column, what ``{vm}`` matched).  Rows
whose count is zero are hidden.  Keys: ``q`` quits, ``s`` sorts by the next
column, ``r`` reverses, ``z`` shows or hides zero rows, ``/`` types a filter
on ids (Enter applies, empty clears).

For scripts, ``--once`` prints the table as text and ``--json`` as one
object; both read, wait one ``--interval``, read again and print, so their
rates are over that interval (and the average is that rate); ``--all`` keeps
zero rows and ``--filter`` is the ``/`` key's.  The JSON holds the rows the
table would, ``interval`` the seconds between the two reads, ``error`` why a
segment could not be read at the second (``null``: it could), and ``labels``
those of a segment a pattern found::

    {"interval": 1.0002, "segments": {"/dev/shm/vm-17": {"error": null, "devices":
      {"drv0": {"cfg_fails": {"count": 12, "rate": 2.0, "average": 2.0}}}}}}

They exit 1 when a segment could not be read (after printing the others).

Top only reads: it opens each segment read-only (read permission is all it
takes), takes no lock and never flushes, so what it shows is never lost to
the next flush.  A path with no segment at the start is an error; later, a
segment that is removed or unreadable is named in a status line, and one
that is replaced is opened again by its path, its devices starting new
baselines.  Ctrl-C ends it with status 130, SIGTERM and ``q`` with 0.
"""

from __future__ import annotations

import argparse
import curses
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence

from ..fleet import Fleet
from ..follow import Followed
from ..segment import open_segment
from ._args import counted, interval, prog
from ._monitor import Monitor
from ._service import Signals
from ._table import COLUMNS, View, as_json, describe, label_column, room_of, table

_KEY_WAIT = 0.1  # seconds the live view waits for a key at most: how soon it sees a signal
_KEYS = {curses.KEY_BACKSPACE: "\b", curses.KEY_ENTER: "\n"}


def open_all(paths: Sequence[str]) -> list[Followed]:
    """The segments at *paths*, read-only; a path without one is an error naming it.

    A segment given twice (under two names, say) is read once, under the first.
    """
    segments: list[Followed] = []
    for path in dict.fromkeys(paths):
        try:
            registry = open_segment(path, readonly=True, create=False)
        except OSError as e:  # an OSError, printed as one line by the CLI
            if e.errno != errno.ENOENT:
                raise
            raise SystemExit(f"{prog()} top: no segment at {path!r} (--shm)") from None
        except ValueError:
            raise SystemExit(f"{prog()} top: not a segment path: {path!r} (--shm)") from None
        if all(s.registry != registry for s in segments):
            segments.append(Followed(path, registry=registry))
    return segments


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``top`` command and its options."""
    p = commands.add_parser(
        "top",
        help="a live view of shared segments' counts and rates",
        description="Show every device of shared segments, a row per field: its count, its "
        "rate over the last --interval and its average since top started; read-only, never "
        "flushes. Keys: q quit, s sort, r reverse, z zero rows, / filter ids. --once or --json "
        "print once, after one --interval, for scripts.",
    )
    p.add_argument(
        "--shm",
        action="append",
        default=[],
        metavar="PATH",
        help="a shared segment to show (repeat it for several)",
    )
    p.add_argument(
        "--shm-glob",
        action="append",
        default=[],
        metavar="PATTERN",
        help="every segment at a path PATTERN matches, as they come and go ({NAME} matches "
        "as * does; repeat it for several)",
    )
    p.add_argument(
        "--interval",
        type=interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between reads (default 1, at least 0.01)",
    )
    once = p.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true", help="print the table once, as text")
    once.add_argument("--json", action="store_true", help="print the rows once, as JSON")
    p.add_argument("--all", "--zero", action="store_true", help="show zero rows too (the z key's)")
    p.add_argument("--filter", default="", metavar="TEXT", help="only ids containing TEXT")
    p.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    one_shot = args.once or args.json
    if not one_shot and not all(f is not None and f.isatty() for f in (sys.stdin, sys.stdout)):
        raise SystemExit(
            f"{prog()} top: the live view needs a terminal; --once or --json print once"
        )
    if sys.stdout is None:
        raise SystemExit(f"{prog()} top: stdout is closed")
    if not one_shot:
        # The window's size is the terminal's, at start and at every resize: with LINES
        # or COLUMNS in its environment (pytest-xdist exports them, a shell may), ncurses
        # would take those instead, and keep them through every resize.
        for name in ("LINES", "COLUMNS"):
            os.environ.pop(name, None)
        try:  # what curses.initscr() does first, for a one-line error instead of a traceback
            curses.setupterm(os.environ.get("TERM", "unknown"), sys.stdout.fileno())
        except curses.error as e:
            raise SystemExit(
                f"{prog()} top: cannot use this terminal ({e}); --once or --json"
            ) from None
    if not args.shm and not args.shm_glob:
        raise SystemExit(
            f"{prog()} top: give the segments to show: --shm PATH or --shm-glob PATTERN"
        )
    given = open_all(args.shm)
    try:
        fleet = Fleet(args.shm_glob) if args.shm_glob else None
    except ValueError as e:
        raise SystemExit(f"{prog()} top: --shm-glob {e}") from None
    monitor = Monitor(given if fleet is None else lambda: [*given, *fleet.members()])
    columns = COLUMNS if len(given) > 1 or fleet is not None else COLUMNS[1:]
    if fleet is not None:  # a column a label the patterns name, first: which VM a row is of
        columns = (*map(label_column, fleet.names), *columns)
    view = View(columns, zeros=args.all, text=args.filter)
    with Signals() as signals:
        if one_shot:
            status = print_once(monitor, view, args.interval, args.json, signals.sleep_until)
        else:
            status = curses.wrapper(live, monitor, view, args.interval, signals)
    return signals.status if status is None else status


def print_once(
    monitor: Monitor, view: View, interval: float, as_object: bool, wait: Callable[[float], bool]
) -> int | None:
    """Read, *wait* until *interval* seconds later, read again and print: ``--once``/``--json``.

    *wait* (``Signals.sleep_until``) returns ``True`` when told to stop:
    then nothing is printed and ``None`` returned.  Else the exit status: 1
    if a segment could not be read (named on stderr), else 0.
    """
    monitor.poll()
    assert monitor.polled is not None
    if wait(monitor.polled + interval):
        return None
    rows, _ = view.select(monitor.poll())
    errors = monitor.errors()
    if as_object:
        rooms = {s.path: room_of(s) for s in monitor.segments}
        labels = {s.path: getattr(s, "labels", {}) for s in monitor.segments}
        print(json.dumps(as_json(rows, errors, monitor.interval, rooms, labels)), flush=True)
    else:
        print("\n".join(table(rows, view.columns)), flush=True)
    for path, error in errors.items():
        if error is not None:
            print(f"top: {path}: {error}", file=sys.stderr)
    return 1 if any(errors.values()) else 0


def live(stdscr: curses.window, monitor: Monitor, view: View, every: float, sig: Signals) -> int:
    """The live view in *stdscr* until ``q`` (status 0) or a stop signal (its status)."""
    curses.set_escdelay(25)  # Esc cancels a filter at once, not after a second
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide its cursor
    monitor.poll()
    due = monitor.clock() + every
    dirty = True
    while sig.caught is None:
        now = monitor.clock()
        if now >= due:
            monitor.poll()
            due = due + every if due + every > now else now + every  # a late beat is skipped
            dirty = True
        if dirty:
            draw(stdscr, monitor, view, every)
            dirty = False
        stdscr.timeout(max(1, int(min(due - monitor.clock(), _KEY_WAIT) * 1000)))
        try:
            key = stdscr.get_wch()
        except curses.error:
            continue  # no key
        if key == curses.KEY_RESIZE:
            dirty = True
        elif isinstance(key, str) or key in _KEYS:
            if view.press(key if isinstance(key, str) else _KEYS[key]):
                return 0
            dirty = True
    return sig.status


def draw(stdscr: curses.window, monitor: Monitor, view: View, every: float) -> None:
    """One frame: a title, the keys, a line per unreadable segment, then the table that fits."""
    rows, hidden = view.select(monitor.rows)
    devices = len({(r.segment, r.drive_id) for r in monitor.rows})
    errors = [
        f"{s.path}: {s.error}" if s.error else f"{s.path}: {describe(room_of(s))}"
        for s in monitor.segments
    ]
    height, width = stdscr.getmaxyx()
    header = 2 + len(errors)
    room = max(0, height - header - 1)  # rows that fit under the table's header
    below = f", {len(rows) - room} below the window" if len(rows) > room else ""
    lines = [
        f"pmem_metrics top: {counted(devices, 'device')} in "
        f"{counted(len(monitor.segments), 'segment')}, every {every:g} s; "
        f"{counted(len(rows), 'row')}{below}, {counted(hidden, 'zero row')} hidden",
        view.keys(),
        *errors,
        *table(rows[:room], view.columns),
    ]
    stdscr.erase()
    for y, text in enumerate(lines[:height]):
        try:  # the last column is left alone: writing the bottom right cell fails
            stdscr.addnstr(y, 0, text, max(0, width - 1), curses.A_REVERSE if y == header else 0)
        except curses.error:
            pass  # a terminal too small: what fits is shown
    stdscr.refresh()
