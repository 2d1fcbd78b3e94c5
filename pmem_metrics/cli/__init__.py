"""Command line: ``python -m pmem_metrics demo`` and ``python -m pmem_metrics --cflags --libs``.

The demo itself is :mod:`pmem_metrics.demo`; this module parses arguments
and turns failures into one-line errors and exit statuses.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Callable, TypeVar

from .. import capi
from .demo import demo
from .export import export

_T = TypeVar("_T", int, float)


def _checked(kind: type[_T], ok: Callable[[_T], bool], what: str) -> Callable[[str], _T]:
    """An argparse ``type``: *text* as *kind*, refused unless ``ok(value)`` ("must be *what*")."""

    def parse(text: str) -> _T:
        value = kind(text)
        if not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'" names the type
    return parse


_count = _checked(int, lambda v: v >= 0, ">= 0")
_port = _checked(int, lambda v: 0 <= v <= 65535, "a port number, 0 to 65535")
_seconds = _checked(float, lambda v: v >= 0, ">= 0")
_interval = _checked(float, lambda v: v > 0, "> 0")


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the flush at exit cannot fail again.

    What the Python docs advise after a ``BrokenPipeError`` on stdout: the
    interpreter's own flush would otherwise print "Exception ignored ...".
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # closed, or not a file: nothing to flush into a pipe
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pmem_metrics``."""
    parser = argparse.ArgumentParser(
        prog="python -m pmem_metrics", description="pmem_metrics: per-device pmem counters"
    )
    parser.add_argument(
        "--cflags", action="store_true", help="print compiler flags for C code using libpmemmetrics"
    )
    parser.add_argument(
        "--libs", action="store_true", help="print linker flags for C code using libpmemmetrics"
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("demo", help="simulate pmem devices and write metrics lines")
    p.add_argument("--devices", type=_count, default=4, help="number of devices (default 4)")
    p.add_argument("--duration", type=_seconds, default=3.0, help="seconds to run (default 3)")
    p.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between lines (default 1)"
    )
    p.add_argument("--metrics-path", help="file or named pipe to write to (default: stdout)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--processes",
        type=_count,
        default=0,
        help="bump the devices from N worker processes sharing a temporary segment (default: "
        "threads of this process)",
    )
    p.add_argument(
        "--prometheus-port",
        type=_port,
        help="also serve the counters for Prometheus on this port (0: any free one)",
    )
    p.add_argument(
        "--prometheus-addr", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    e = sub.add_parser(
        "export", help="report every device of a shared segment: metrics lines and/or Prometheus"
    )
    e.add_argument(
        "--shm",
        required=True,
        action="append",
        help="a shared segment to read (repeat it for several: Prometheus only)",
    )
    e.add_argument(
        "--metrics-path",
        help="file or named pipe to write lines to (default: stdout, unless only Prometheus)",
    )
    e.add_argument(
        "--interval", type=_interval, default=60.0, help="seconds between lines (default 60)"
    )
    e.add_argument(
        "--duration",
        type=_seconds,
        default=float("inf"),
        help="seconds to run (default: until Ctrl-C)",
    )
    e.add_argument(
        "--wait",
        action="store_true",
        help="wait for a segment that is not there yet (until --duration), instead of failing",
    )
    e.add_argument("--prometheus-port", type=_port, help="serve the counters for Prometheus")
    e.add_argument(
        "--prometheus-addr", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    args = parser.parse_args(argv)
    if args.cflags or args.libs:
        if args.command:
            parser.error("--cflags/--libs take no command")
    elif args.command is None:
        parser.error("a command (demo, export) or --cflags/--libs is required")
    try:
        if args.cflags or args.libs:
            if sys.stdout is None:
                raise SystemExit("python -m pmem_metrics: stdout is closed")
            flags = (capi.cflags() if args.cflags else []) + (capi.libs() if args.libs else [])
            print(" ".join(flags), flush=True)  # a broken pipe fails here, not at exit
            return 0
        prometheus = None
        if args.prometheus_port is not None:
            prometheus = (args.prometheus_port, args.prometheus_addr)
        if args.command == "export":
            return export(
                args.shm, args.metrics_path, args.interval, args.duration, prometheus, args.wait
            )
        return demo(
            args.devices,
            args.duration,
            args.interval,
            args.metrics_path,
            args.seed,
            prometheus,
            args.processes,
        )
    except KeyboardInterrupt:
        # A Ctrl-C before the demo's own handling, or a second one.  On the way
        # out, a further one must not interrupt the exit with a traceback.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            _discard_stdout()
        print(f"python -m pmem_metrics: {e}", file=sys.stderr)
        return 1
