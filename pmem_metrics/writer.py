"""The metrics line writer: :class:`MetricsWriter` and the process-wide :data:`METRICS`.

Like Firecracker's ``--metrics-path``: initialised once with a destination, it
writes one line per :meth:`~MetricsWriter.write`, or one per interval from a
daemon thread (:meth:`~MetricsWriter.start_periodic`), and a final line at exit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Mapping
from types import FrameType

from ._fdsink import FdSink, Progress
from ._periodic import Periodic, PeriodicWriting, seconds
from ._sink import Destination, FileSink, sink_for
from ._snapshot import dispose, new_slot, publish, take
from .errors import AlreadyInitializedError, WriterStateError
from .flush import as_json, labels_json, line_head
from .registry import Registry

_log = logging.getLogger("pmem_metrics")

DEFAULT_TIMEOUT = 10.0
"""Seconds a line may wait for a destination that does not drain (:meth:`MetricsWriter.init`)."""


class MetricsWriter(PeriodicWriting):
    """Writes metrics lines to one destination, like Firecracker's ``--metrics-path``.

    Call :meth:`init` once, then :meth:`write` whenever a line is due, or let
    :meth:`start_periodic` do it.  The process-wide instance is :data:`METRICS`.
    Each line flushes *registry* (a :class:`~pmem_metrics.Registry`; ``None``:
    the process's default registry, the one :data:`METRICS` flushes).
    """

    def __init__(self, registry: Registry | None = None) -> None:
        if registry is not None and not isinstance(registry, Registry):
            what = type(registry).__name__
            raise TypeError(f"registry must be a pmem_metrics.Registry, not {what}")
        # What each line flushes, and its labels: read once per line, by _write.
        self._flushed = (Registry.default() if registry is None else registry, "")
        self._sink: FdSink | FileSink | None = None
        self._path: str | os.PathLike[str] | None = None  # what init() opened, for reopen()
        self._hup = False  # a SIGHUP asked for reopen() before the next line
        self._head = line_head(None, None)
        self._timeout = DEFAULT_TIMEOUT
        # Guards init and the periodic thread's start/stop.  Reentrant: a
        # signal handler may stop periodic writing while the same thread is
        # in the middle of starting it.
        self._lock = threading.RLock()
        self._periodic: Periodic | None = None
        self._exit_hook = False  # _stop_at_exit is registered with atexit
        _WRITERS.add(self)

    def set_registry(self, registry: Registry, labels: Mapping[str, str] | None = None) -> None:
        """Flush *registry* for every line from now on, instead of the one flushed so far.

        For a writer that follows a segment's path: when the segment was
        replaced (a line failed with :class:`~pmem_metrics.SegmentReplacedError`),
        the exporter writes a final line from the old one, closes it, opens
        the path again and hands the new one here
        (:class:`~pmem_metrics.follow.Followed`).  A line being written
        meanwhile (by the periodic thread) flushes one or the other, whole.
        *labels*: each line says them, as ``"labels":{...}`` after its head
        (:func:`pmem_metrics.flush.labels_json`): which segment it is from,
        for lines of several segments in one destination.  Raises
        ``TypeError`` for what is not a ``Registry``, or *labels* that do not
        map ``str`` to ``str``.
        """
        if not isinstance(registry, Registry):
            what = type(registry).__name__
            raise TypeError(f"registry must be a pmem_metrics.Registry, not {what}")
        self._flushed = (registry, labels_json(labels))

    @property
    def registry(self) -> Registry:
        """The registry each line flushes."""
        return self._flushed[0]

    @property
    def initialized(self) -> bool:
        """Whether :meth:`init` has succeeded."""
        return self._sink is not None

    def init(
        self,
        destination: Destination,
        *,
        id: str | None = None,  # named as the field of the line it fills
        properties: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Set the destination: a path (regular file, appended to, or named pipe) or a file object.

        Lines are UTF-8.  A file object with a file descriptor is flushed
        before each line, which then goes straight to the descriptor.  *id*
        and *properties*, if given, go into every line after the timestamp,
        as newer Firecracker versions write them.  *timeout* (seconds) bounds
        how long one line waits for a destination that does not take it (a
        pipe whose reader stopped reading, a non-blocking descriptor): the
        line then fails with ``TimeoutError``, its counts kept for the next.
        It also bounds the final line at interpreter exit.

        Raises :class:`AlreadyInitializedError` on a second call,
        ``TypeError`` for a destination that is neither a path nor writable,
        an *id* that is not a ``str`` or *properties* that do not map ``str``
        to ``str``, ``ValueError`` for text with lone surrogates or a bad
        *timeout*, and :class:`MetricsDestinationError` (an ``OSError``) for a
        destination that cannot take lines: a path that cannot be opened
        (including a named pipe with no reader yet), a closed file object or
        one not open for writing, a ``fileno()`` that is no open descriptor.
        A refused call leaves the writer uninitialised.
        """
        with self._lock:
            if self._sink is not None:
                raise AlreadyInitializedError("metrics writer is already initialized")
            head = line_head(id, properties)
            timeout = seconds("timeout", timeout)
            self._sink = sink_for(destination)
            self._head = head
            self._timeout = timeout
            if isinstance(destination, (str, os.PathLike)):
                self._path = destination

    def reopen(self) -> bool:
        """Open the path given to :meth:`init` again: later lines go to the file there now.

        For log rotation: move the file away, call this (or send SIGHUP, see
        :meth:`handle_signals`), and the next line starts the new file.  A
        line on its way meanwhile finishes in the old one.  Returns ``False``
        (and changes nothing) when the destination is a file object, which
        has no path to reopen.  Raises :class:`WriterStateError` before
        :meth:`init`, and :class:`MetricsDestinationError` when the path
        cannot be opened: lines then keep going where they went.
        """
        with self._lock:
            if self._sink is None:
                raise WriterStateError("init() the metrics writer before reopen()")
            if self._path is None:
                return False
            self._sink = sink_for(self._path)  # the old one closes once no line uses it
            return True

    def handle_signals(self) -> None:
        """Run as a service: SIGTERM ends the process cleanly, SIGHUP reopens the path.

        Installs two handlers (from the main thread; nothing is installed
        unless this is called): SIGTERM raises ``SystemExit(0)`` in the main
        thread, so ``finally`` blocks run and a periodic writer started with
        ``at_exit`` writes its final line, as on a Ctrl-C, and the exit
        status is 0, what a service manager expects of a stop; SIGHUP makes
        the next line :meth:`reopen` the path first (a failure to reopen is
        logged, and lines go on where they went).  Raises ``ValueError``
        outside the main thread, as ``signal.signal`` does.
        """
        signal.signal(signal.SIGTERM, _exit_cleanly)
        signal.signal(signal.SIGHUP, self._request_reopen)

    def _request_reopen(self, signum: int, frame: FrameType | None) -> None:
        self._hup = True  # the next line reopens: nothing heavier happens in a handler

    def write(self) -> bool:
        """Flush and write one metrics line; ``False`` (writing nothing) before :meth:`init`.

        If the destination fails, its exception propagates and no count is
        lost: the next successful write reports them.  A regular file gets
        each line whole or not at all, whatever interrupts the write (a
        ``KeyboardInterrupt`` included).  On a pipe, a line cut short stays
        a line of its own (closed off by a newline) and its counts come again
        in the next whole line.  A file object without a descriptor gets
        ``write()`` and ``flush()``; if either fails, the line counts as
        undelivered.
        """
        return self._write(None)

    def _write(self, deadline: float | None) -> bool:
        """:meth:`write`; *deadline* (monotonic) also bounds the wait for other flushes."""
        if self._hup:
            self._hup = False
            try:
                self.reopen()
            except OSError as e:
                _log.error("pmem_metrics: SIGHUP: %s; lines go on where they went", e)
        sink = self._sink
        if sink is None:
            return False
        registry, labels = self._flushed
        slot = new_slot()
        progress = Progress()
        try:
            body = as_json(take(slot, deadline, registry._r))  # ValueError once closed
            line = self._head % (time.time_ns() // 1_000_000) + labels + body[1:] + "\n"
            until = time.monotonic() + self._timeout
            sink.write(line, until if deadline is None else min(deadline, until), progress)
            publish(slot)
        except:  # bare: nothing to evaluate before the cleanup starts
            # A line that went out whole stands: publish it, if that was not
            # done yet.  Any other is cut back from a regular file while the
            # flush is still held, then the flush is aborted.  Each is one C
            # call reached with no Python frame on the way, on counts that C
            # recorded before returning, so a second interrupt cannot leave a
            # delivered line unpublished or a cut one in the file.
            try:
                if progress.sent[0] == progress.length:
                    publish(slot)
                elif sink.cut is not None:
                    sink.cut(progress.start[0], progress.sent)
            finally:
                dispose(slot)
            raise
        return True

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a thread that does not
        # exist here; nothing else of the writer waits on the parent.
        self._lock = threading.RLock()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """SIGTERM, as :meth:`MetricsWriter.handle_signals` installs it: exit with status 0."""
    raise SystemExit(0)


_WRITERS: weakref.WeakSet[MetricsWriter] = weakref.WeakSet()


def _reset_writers_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_writers_in_child)

METRICS = MetricsWriter()
"""The process-wide metrics writer."""
