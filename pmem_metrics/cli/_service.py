"""What every command that runs as a service shares: its signals, its beat, its endpoint.

:class:`Signals` turns SIGINT, SIGTERM and SIGHUP into steps of the
command's own loop, never into a line cut short; :func:`write_lines` writes
a line per beat; :func:`serve_prometheus` serves the counters while the
command runs; :func:`endpoint` writes an address as a URL does;
:func:`raise_open_files` makes room for the descriptors of many segments.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from ..registry import Registry
from ._args import prog

_MAX_WAIT = 60.0  # seconds one select() may wait (a deadline may be inf: --duration inf)

_STOPS = (signal.SIGINT, signal.SIGTERM)


class Abandoned(KeyboardInterrupt):
    """A second stop signal: what the command still waited for (a line that hangs) is abandoned.

    A ``KeyboardInterrupt``, so that it interrupts whatever waits, a metrics
    line included (which withdraws its flush); :attr:`status` is the exit
    status: 130 if a Ctrl-C came, else 0 (two SIGTERMs are still a stop).
    """

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status


class Signals:
    """While entered, SIGINT and SIGTERM ask the command to stop, and SIGHUP to reopen its output.

    The first SIGINT (Ctrl-C) or SIGTERM (what service managers send) only
    sets :attr:`caught` and wakes :meth:`sleep_until`, so a metrics line is
    never cut short: the command stops at its next step and ends as usual,
    with its final line and summary.  A second one raises :class:`Abandoned`
    (to abandon a line that hangs, at once); from then on, or once the
    command is done, both are ignored: the process is on its way out, and a
    further one would only interrupt its exit with a traceback.
    SIGHUP calls *on_hup* from :meth:`sleep_until` (never from the handler),
    as daemons reopen their log files.  The signal wakeup fd wakes the sleep
    even when the signal lands just before ``select()`` blocks.

    A daemon's handlers do not depend on what it inherited: SIGTERM and
    SIGHUP are taken even when the parent ignored them (``nohup`` ignores
    SIGHUP, so log rotation would silently stop).  SIGINT is taken unless
    ignored: a shell ignores it for the commands it starts in the background,
    and Ctrl-C is not theirs.  Outside the main thread nothing is installed.
    """

    def __init__(self, on_hup: Callable[[], object] | None = None) -> None:
        self.caught: int | None = None  # the stop signal that came, if any
        self._interrupted = False  # a Ctrl-C came, first or second
        self._hup = False
        self._on_hup = on_hup
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._installed: dict[int, object] = {}

    @property
    def status(self) -> int:
        """The exit status for how the command ended: 130 after a Ctrl-C, else 0 (SIGTERM too)."""
        return 130 if self._interrupted else 0

    def __enter__(self) -> Signals:
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGTERM]
        if self._on_hup is not None:
            wanted.append(signal.SIGHUP)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            wanted.append(signal.SIGINT)
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in wanted:
            self._installed[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
            return
        self.caught = signum
        self._interrupted = signum == signal.SIGINT
        for sig in _STOPS:
            if sig in self._installed:
                signal.signal(sig, self._abort)

    def _abort(self, signum: int, frame: FrameType | None) -> None:
        """A second stop signal: ignore any further one, and raise :class:`Abandoned`."""
        for sig in _STOPS:
            signal.signal(sig, signal.SIG_IGN)
        self._interrupted |= signum == signal.SIGINT
        raise Abandoned(self.status)

    def __exit__(self, *exc_info: object) -> None:
        if self._pipe is None:
            return
        for sig, old in self._installed.items():
            if sig in _STOPS and self.caught is not None:
                signal.signal(sig, signal.SIG_IGN)  # on the way out: see the class doc
            else:
                signal.signal(sig, old)  # type: ignore[arg-type]  # what getsignal gave
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None

    def sleep_until(self, deadline: float) -> bool:
        """Sleep until ``time.monotonic()`` reaches *deadline*; ``True`` at once on a stop signal.

        A SIGHUP meanwhile calls *on_hup* and goes back to sleep.
        """
        while self.caught is None:
            if self._hup:
                self._hup = False
                if self._on_hup is not None:
                    self._on_hup()
            left = min(deadline - time.monotonic(), _MAX_WAIT)
            if left <= 0:
                return False
            if self._pipe is None:
                time.sleep(left)
            elif select.select([self._pipe[0]], [], [], left)[0]:
                try:  # a signal came: empty the pipe, then look at the flags
                    while os.read(self._pipe[0], 512):
                        pass
                except BlockingIOError:
                    pass
        return True


def write_lines(
    signals: Signals, start: float, interval: float, duration: float, write: Callable[[], int]
) -> int:
    """*write* writes lines (returning how many) at each multiple of *interval* before *duration*.

    A beat missed (a write that ran long, a stopped process) is skipped, not
    written in a burst: the next line is due at the next multiple still
    ahead.  Then it waits out *duration*.  A stop signal ends it at once.
    Returns the lines written.
    """
    lines = 0
    beat = 1
    while beat * interval < duration:
        if signals.sleep_until(start + beat * interval):
            break
        lines += write()
        beat = max(beat + 1, int((time.monotonic() - start) // interval) + 1)
    signals.sleep_until(start + duration)
    return lines


def raise_open_files() -> None:
    """The open-file soft limit raised to the hard one: a segment takes two descriptors
    when read-write, one read-only (a fleet of VMs is many segments)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit the kernel caps lower: keep the soft one
            pass


def endpoint(host: str, port: int) -> str:
    """*host* and *port* as a URL writes them: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_prometheus(
    port: int,
    addr: str,
    who: str,
    segments: Mapping[str, Registry] | None = None,
    reopen: bool = False,
    patterns: Sequence[str] | None = None,
) -> None:
    """Serve the counters (of *segments*, if given) for Prometheus on addr:port while *who* runs.

    *reopen*: as for :class:`pmem_metrics.prometheus.PmemCollector`.  The
    page is :mod:`pmem_metrics.exposition`'s (no prometheus_client needed),
    from a daemon thread.  A failure to serve raises ``SystemExit`` with one
    line naming the address.
    """
    from ..exposition import Exposition  # http.server and zlib only for the commands that serve

    try:
        server = Exposition(segments, patterns=patterns, reopen=reopen).serve(port, addr)
    except OSError as e:
        why = e.strerror or str(e)
        raise SystemExit(
            f"{prog()} {who}: cannot serve Prometheus on {endpoint(addr, port)} "
            f"(--prometheus-addr, --prometheus-port): {why}"
        ) from None
    bound = server.server_address[1]
    print(
        f"{who}: Prometheus metrics at http://{endpoint(addr, bound)}/metrics",
        file=sys.stderr,
        flush=True,
    )
