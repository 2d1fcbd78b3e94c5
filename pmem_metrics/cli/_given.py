"""The segments named on the command line (``--shm``): opened, never created, waited for.

A segment is made whole and linked in by the process that attaches to it;
the exporter only opens what is there.  With ``--wait`` it looks at the path
again until a segment is there, Ctrl-C or the end of ``--duration``.
"""

from __future__ import annotations

import errno
import sys
import time

from ..errors import SegmentError
from ..registry import Registry
from ..segment import open_segment
from ._args import prog
from ._service import Signals

POLL_INTERVAL = 0.2
"""Seconds between two looks at a path that ``--wait`` waits on."""


def missing(path: str) -> SystemExit:
    """The error for no segment at *path*, naming it."""
    return SystemExit(
        f"{prog()} export: no segment at {path!r} (a process creates it when it attaches; "
        "--wait waits for one)"
    )


def open_given(
    path: str, readonly: bool, signals: Signals, wait_until: float | None
) -> Registry | None:
    """The segment at *path*, never created; ``None`` after a Ctrl-C.

    A missing segment is an error, unless *wait_until* (``time.monotonic()``)
    is given: then the path is looked at every :data:`POLL_INTERVAL` until
    a segment is there, or the time is up (an error too).
    """
    announced = False
    while True:
        try:
            # create=False, not a check for the file first: a segment removed
            # between the check and the open would be created by the open.
            return open_segment(path, readonly=readonly, create=False)
        except SegmentError as e:
            if e.errno != errno.ENOENT:
                raise
        if wait_until is None:
            raise missing(path)
        if not announced:
            print(f"export: waiting for a segment at {path!r}", file=sys.stderr, flush=True)
            announced = True
        if time.monotonic() >= wait_until:
            raise SystemExit(
                f"{prog()} export: still no segment at {path!r} at the end of --duration"
            )
        if signals.sleep_until(min(wait_until, time.monotonic() + POLL_INTERVAL)):
            return None
