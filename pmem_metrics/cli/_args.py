"""The commands' shared argument types: each refuses a bad value in one line naming the option."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, TypeVar

_T = TypeVar("_T", int, float)

INTERVAL_FLOOR = 0.01
"""The shortest ``--interval`` in seconds: below it a command would do nothing but write."""


def _checked(kind: type[_T], ok: Callable[[_T], bool], what: str) -> Callable[[str], _T]:
    """An argparse ``type``: *text* as *kind*, refused unless ``ok(value)`` ("must be *what*")."""

    def parse(text: str) -> _T:
        value = kind(text)
        if not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'" names the type
    return parse


count = _checked(int, lambda v: v >= 0, ">= 0")
port = _checked(int, lambda v: 0 <= v <= 65535, "a port number, 0 to 65535")
seconds = _checked(float, lambda v: v >= 0, ">= 0")
positive = _checked(float, lambda v: 0 < v < float("inf"), "> 0")
interval = _checked(
    float, lambda v: INTERVAL_FLOOR <= v < float("inf"), f"{INTERVAL_FLOOR:g} s or more"
)


def add_prometheus(p: argparse.ArgumentParser, what: str) -> None:
    """``--prometheus-port`` and ``--prometheus-addr``: serve *what* for Prometheus."""
    p.add_argument(
        "--prometheus-port",
        type=port,
        metavar="PORT",
        help=f"also serve {what} for Prometheus on this port (0: any free one)",
    )
    p.add_argument(
        "--prometheus-addr",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to serve on, IPv4 or IPv6 (default 127.0.0.1)",
    )


def prometheus_of(args: argparse.Namespace) -> tuple[int, str] | None:
    """``(port, address)`` to serve on, if ``--prometheus-port`` was given."""
    if args.prometheus_port is None:
        return None
    return args.prometheus_port, args.prometheus_addr


def url(text: str) -> str:
    """An argparse ``type``: an http:// or https:// URL with a host."""
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.split("/")[0]:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text}")
    return text


def add_otlp(p: argparse.ArgumentParser, what: str) -> None:
    """``--otlp-endpoint`` and ``--otlp-interval``: push *what* to an OpenTelemetry receiver."""
    p.add_argument(
        "--otlp-endpoint",
        type=url,
        metavar="URL",
        help=f"also push {what} to this OpenTelemetry OTLP/HTTP endpoint, the full URL "
        "(http://HOST:4318/v1/metrics)",
    )
    p.add_argument(
        "--otlp-interval",
        type=interval,
        default=60.0,
        metavar="SECONDS",
        help=f"seconds between two OTLP exports (default 60, at least {INTERVAL_FLOOR:g})",
    )


def otlp_of(args: argparse.Namespace) -> tuple[str, float] | None:
    """``(url, interval)`` to push to, if ``--otlp-endpoint`` was given."""
    if args.otlp_endpoint is None:
        return None
    return args.otlp_endpoint, args.otlp_interval


def prog() -> str:
    """This program's name as it was called, for its messages and usage.

    ``pmem-metrics`` when run as the installed script (or whatever name a
    link gives it), ``python -m pmem_metrics`` when run as the module.
    """
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name == "-c" or name.endswith(".py"):
        return "python -m pmem_metrics"
    return name


def counted(n: int, noun: str) -> str:
    """*n* and *noun*, plural unless *n* is 1: ``1 device``, ``4 devices``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
