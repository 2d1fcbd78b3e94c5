"""The commands: ``python -m pmem_metrics COMMAND`` (or ``pmem-metrics COMMAND``), and ``--cflags``.

Each command is a module here that adds its own parser (``add_parser``):
:mod:`~pmem_metrics.cli.demo`, :mod:`~pmem_metrics.cli.export`,
:mod:`~pmem_metrics.cli.top`.  What they share as services (signals, beats,
the Prometheus endpoint) is :mod:`~pmem_metrics.cli._service`.  This module
dispatches and turns failures into one-line errors and exit statuses.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Callable

from .. import capi
from . import demo, export, top
from ._args import prog
from ._service import Abandoned


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


class _Version(argparse.Action):
    """``--version``: the version is read only when asked for (it costs an import)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from .. import __version__

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of ``python -m pmem_metrics``, and each command's own."""
    parser = argparse.ArgumentParser(
        prog=prog(),
        description="pmem_metrics: exact per-device virtio-pmem counters (Firecracker "
        "compatible). Run a command, or print the flags to build C code against the library.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument(
        "--cflags", action="store_true", help="print compiler flags for C code using libpmemmetrics"
    )
    parser.add_argument(
        "--libs", action="store_true", help="print linker flags for C code using libpmemmetrics"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (demo, export, top):
        command.add_parser(sub)
    return parser, dict(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pmem_metrics`` and of the ``pmem-metrics`` script."""
    parser, commands = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # What a command does not know is its error, with its own usage.
        owner = commands.get(args.command, parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cflags or args.libs:
        if args.command:
            parser.error("--cflags/--libs take no command")
    elif args.command is None:
        parser.error(f"a command ({', '.join(commands)}) or --cflags/--libs is required")
    try:
        if args.cflags or args.libs:
            if sys.stdout is None:
                raise SystemExit(f"{prog()}: stdout is closed")
            flags = (capi.cflags() if args.cflags else []) + (capi.libs() if args.libs else [])
            print(" ".join(flags), flush=True)  # a broken pipe fails here, not at exit
            return 0
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except KeyboardInterrupt as e:
        # A Ctrl-C before the command's own handling, or a second stop signal
        # (Abandoned: 0 unless a Ctrl-C came).  On the way out, a further one
        # must not interrupt the exit with a traceback.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return e.status if isinstance(e, Abandoned) else 130
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            _discard_stdout()
        print(f"{prog()}: {e}", file=sys.stderr)
        return 1
