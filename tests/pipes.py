"""Reading a named pipe the way a metrics consumer does."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path


class FifoReader:
    """Reads a named pipe in a background thread, as a metrics consumer would.

    A line can be larger than the pipe's buffer, so the reader must drain it
    while the writer writes.  Open it before the writer, so the writer finds
    a reader.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # held while the thread reads
        self._paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._reading:
                ready = [] if self._paused else select.select([self.fd], [], [], 0.05)[0]
                chunk = os.read(self.fd, 1 << 16) if ready else b""
            if chunk:
                with self._lock:
                    self.data += chunk
            elif ready or self._paused:
                time.sleep(0.005)  # no writer (EOF) right now, or paused

    def pause(self) -> None:
        """Read nothing until :meth:`resume`, as a consumer that stalls: the pipe fills up."""
        self._paused = True
        with self._reading:  # a read under way is over
            pass

    def resume(self) -> None:
        """Read again."""
        self._paused = False

    def read_to_end(self) -> None:
        """Stop the thread's reading, then read what is left, up to the end of file (no writer)."""
        self.pause()
        while chunk := os.read(self.fd, 1 << 16):
            with self._lock:
                self.data += chunk

    def text(self) -> str:
        """What was read so far."""
        with self._lock:
            return bytes(self.data).decode("utf-8", "replace")

    def lines(self, n: int, timeout: float = 30) -> list[str]:
        """The first *n* complete lines that are not empty, waiting up to *timeout* seconds.

        Empty lines are skipped, as a metrics reader does: a writer's first
        line to a pipe starts with a newline, which ends any fragment a
        killed writer left.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                raw = bytes(self.data)
            # Only what ends in a newline: a read can stop inside a character of
            # a line still coming (ids are UTF-8).  A fragment closed off by a
            # writer may be cut inside one too: it decodes with U+FFFD.
            whole = raw[: raw.rfind(b"\n") + 1].decode("utf-8", "replace")
            lines = [x for x in whole.splitlines(keepends=True) if x != "\n"]
            if sum(x.endswith("\n") for x in lines) >= n:
                return lines[:n]
            time.sleep(0.005)
        raise AssertionError(f"fewer than {n} lines within {timeout} s: {bytes(self.data)[:200]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
