"""The metrics line writer (MetricsWriter / METRICS).

Periodic writing and the optional id and properties are in test_writer_periodic.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from pmem_metrics import (
    FIELDS,
    METRICS,
    FlushInProgressError,
    MetricsDestinationError,
    MetricsWriter,
    PmemMetricsPerDevice,
    flush_metrics,
)

from .helpers import assert_aggregate_is_sum
from .pipes import FifoReader


def parse_line(line: str) -> dict:
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert re.match(r'\{"utc_timestamp_ms":\d+,"pmem', line)
    obj = json.loads(line)
    assert next(iter(obj)) == "utc_timestamp_ms"
    assert_aggregate_is_sum({k: v for k, v in obj.items() if k != "utc_timestamp_ms"})
    assert line == json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
    return obj


def test_write_before_init_returns_false_and_flushes_nothing(uid: str) -> None:
    c = PmemMetricsPerDevice.alloc(uid + "w").activate_fails
    c.inc()
    assert MetricsWriter().write() is False
    assert c.fetch_diff() == 1


def test_the_global_writer_exists_and_init_twice_raises(run_python) -> None:
    out = run_python(
        """
        import io
        from pmem_metrics import METRICS, AlreadyInitializedError
        print(METRICS.write(), METRICS.initialized)
        buf = io.StringIO()
        METRICS.init(buf)
        try:
            METRICS.init(io.StringIO())
        except AlreadyInitializedError as e:
            assert isinstance(e, RuntimeError)
            print("second init:", e)
        print(METRICS.write(), buf.getvalue().count("\\n"))
        """
    )
    assert out.splitlines() == [
        "False False",
        "second init: metrics writer is already initialized",
        "True 1",
    ]
    assert METRICS is not None


def test_line_format_to_a_path(uid: str, tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    w = MetricsWriter()
    w.init(path)
    PmemMetricsPerDevice.alloc(uid + "a").activate_fails.inc()
    PmemMetricsPerDevice.alloc(uid + "b").queue_event_count.add(3)
    before = time.time_ns() // 1_000_000
    assert w.write() is True
    assert w.write() is True
    after = time.time_ns() // 1_000_000
    first, second = (parse_line(line) for line in path.read_text().splitlines(keepends=True))
    assert before <= first["utc_timestamp_ms"] <= second["utc_timestamp_ms"] <= after
    assert first[f"pmem_{uid}a"]["activate_fails"] == 1
    assert first[f"pmem_{uid}b"]["queue_event_count"] == 3
    assert second[f"pmem_{uid}b"]["queue_event_count"] == 0


def test_a_path_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_text("earlier\n")
    w = MetricsWriter()
    w.init(str(path))
    w.write()
    assert path.read_text().startswith("earlier\n{")


def test_text_and_binary_file_objects(uid: str) -> None:
    for buf in (io.StringIO(), io.BytesIO()):
        w = MetricsWriter()
        w.init(buf)
        PmemMetricsPerDevice.alloc(uid + "f").event_fails.inc()
        assert w.write()
        value = buf.getvalue()
        text = value.decode() if isinstance(value, bytes) else value
        assert parse_line(text)[f"pmem_{uid}f"]["event_fails"] == 1


def test_named_pipe(uid: str, tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    try:
        w = MetricsWriter()
        w.init(fifo)
        PmemMetricsPerDevice.alloc(uid + "p").cfg_fails.add(4)
        assert w.write()
        (line,) = reader.lines(1)
    finally:
        reader.close()
    assert parse_line(line)[f"pmem_{uid}p"]["cfg_fails"] == 4


def test_named_pipe_without_reader_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    w = MetricsWriter()
    with pytest.raises(MetricsDestinationError, match="no reader") as info:
        w.init(fifo)
    assert isinstance(info.value, OSError)
    assert not w.initialized


def test_bad_destinations() -> None:
    with pytest.raises(TypeError, match="path or a writable file object"):
        MetricsWriter().init(42)  # type: ignore[arg-type]
    with pytest.raises(MetricsDestinationError, match="cannot open"):
        MetricsWriter().init("/nonexistent-dir/metrics")


class FlakyFile(io.StringIO):
    """A file object whose write fails while ``failing`` is set."""

    failing = True

    def write(self, s: str) -> int:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(s)


def test_a_failed_write_loses_nothing(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid + "x")
    flush_metrics()
    f = FlakyFile()
    w = MetricsWriter()
    w.init(f)
    m.activate_fails.add(2)
    with pytest.raises(OSError, match="No space"):
        w.write()
    assert m.activate_fails.fetch_diff() == 2  # still to be reported
    m.activate_fails.inc()
    with pytest.raises(OSError):
        w.write()
    f.failing = False
    assert w.write()
    reported = parse_line(f.getvalue())[f"pmem_{uid}x"]
    assert reported == {**dict.fromkeys(FIELDS, 0), "activate_fails": 3}
    assert m.activate_fails.fetch_diff() == 0


def test_flushing_from_inside_a_write_is_refused_not_a_deadlock(uid: str) -> None:
    class Reentrant(io.StringIO):
        def write(self, s: str) -> int:
            flush_metrics()
            return 0

    c = PmemMetricsPerDevice.alloc(uid + "re").event_fails
    c.inc()
    w = MetricsWriter()
    w.init(Reentrant())
    with pytest.raises(FlushInProgressError) as info:
        w.write()
    assert isinstance(info.value, RuntimeError)
    assert c.fetch_diff() == 1
    assert flush_metrics()[f"pmem_{uid}re"]["event_fails"] == 1


class FlakyRaw(io.RawIOBase):
    """The raw file under a buffered stream (like sys.stdout's), failing while ``failing``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.failing = True

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        if self.failing:
            raise OSError(5, "Input/output error")
        self.data += b
        return len(b)


@pytest.mark.parametrize(
    ("buffer_size", "reported"),
    [
        # The line is bigger than the buffer: the failed flush drops it, and the
        # counts, kept, are all in the next line.
        (64, [3]),
        # The buffer keeps the line through the failed flush and emits it later;
        # the counts were kept too, so they come twice: the documented limit of
        # file objects without a descriptor (nothing lost, never).
        (1 << 20, [2, 3]),
    ],
)
def test_a_buffered_stream_without_descriptor_loses_nothing(
    uid: str, buffer_size: int, reported: list[int]
) -> None:
    raw = FlakyRaw()
    stream = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size), encoding="utf-8")
    m = PmemMetricsPerDevice.alloc(uid + "buf")
    flush_metrics()
    w = MetricsWriter()
    w.init(stream)
    m.activate_fails.add(2)
    with pytest.raises(OSError, match="Input/output"):
        w.write()
    assert m.activate_fails.fetch_diff() == 2
    raw.failing = False
    m.activate_fails.inc()
    assert w.write()
    lines = raw.data.decode().splitlines(keepends=True)
    assert [parse_line(line)[f"pmem_{uid}buf"]["activate_fails"] for line in lines] == reported
    assert m.activate_fails.fetch_diff() == 0


def test_a_file_object_with_a_descriptor_gets_whole_lines_in_order(
    uid: str, tmp_path: Path
) -> None:
    path = tmp_path / "out.txt"
    with open(path, "w", encoding="utf-8") as f:
        w = MetricsWriter()
        w.init(f)
        f.write("earlier text\n")  # still in f's buffer: must come out first
        PmemMetricsPerDevice.alloc(uid + "fd").event_fails.add(4)
        assert w.write()
        f.write("later text\n")
    first, line, last = path.read_text().splitlines(keepends=True)
    assert (first, last) == ("earlier text\n", "later text\n")
    assert parse_line(line)[f"pmem_{uid}fd"]["event_fails"] == 4


def test_a_full_device_as_a_file_object_keeps_every_count(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid + "fullobj")
    m.event_fails.add(3)
    with open("/dev/full", "w") as f:
        w = MetricsWriter()
        w.init(f)
        with pytest.raises(OSError) as info:
            w.write()
    assert info.value.errno == errno.ENOSPC
    assert m.event_fails.fetch_diff() == 3


def test_a_full_device_keeps_every_count(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid + "full")
    m.event_fails.add(3)
    w = MetricsWriter()
    w.init("/dev/full")
    with pytest.raises(OSError, match="No space left on device: '/dev/full'") as info:
        w.write()
    assert info.value.errno == errno.ENOSPC
    assert m.event_fails.fetch_diff() == 3


def test_a_partial_write_leaves_no_torn_line(run_python, tmp_path: Path) -> None:
    """A file size limit cuts a line part way; the fragment is removed, then all is re-sent."""
    out = run_python(
        """
        import os, resource
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        w = MetricsWriter()
        w.init("m.json")
        m = PmemMetricsPerDevice.alloc("drv0")
        m.activate_fails.add(1)
        w.write()
        size = os.path.getsize("m.json")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))  # 20 bytes more fit
        m.activate_fails.add(2)
        try:
            w.write()
        except OSError as e:
            print("refused", e.errno, os.path.getsize("m.json") - size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        m.activate_fails.add(4)
        w.write()
        """
    )
    assert out == f"refused {errno.EFBIG} 0\n"
    lines = (tmp_path / "m.json").read_text().splitlines(keepends=True)
    assert [parse_line(line)["pmem_drv0"]["activate_fails"] for line in lines] == [1, 6]


def test_a_named_pipe_whose_reader_left(uid: str, tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    m = PmemMetricsPerDevice.alloc(uid + "pipe")
    flush_metrics()
    reader = FifoReader(fifo)
    w = MetricsWriter()
    w.init(fifo)
    m.cfg_fails.add(1)
    try:
        assert w.write()
        (line,) = reader.lines(1)
    finally:
        reader.close()
    assert parse_line(line)[f"pmem_{uid}pipe"]["cfg_fails"] == 1
    m.cfg_fails.add(2)
    with pytest.raises(BrokenPipeError):  # EPIPE, and SIGPIPE did not kill us
        w.write()
    assert m.cfg_fails.fetch_diff() == 2
    reader = FifoReader(fifo)  # a new reader comes
    try:
        m.cfg_fails.add(4)
        assert w.write()
        (line,) = reader.lines(1)
    finally:
        reader.close()
    assert parse_line(line)[f"pmem_{uid}pipe"]["cfg_fails"] == 6


# Prepended to the subprocess scripts below (indented like them):
# big_line_fifo() makes lines of ~280 KB, far beyond the 64 KiB pipe buffer,
# and a writer to a named pipe with a reader that reads nothing yet;
# drain_and_parse() runs *write* in a thread while draining the pipe *fd*,
# then gives drive-0000's cfg_fails per line, "fragment" for one not JSON.
PIPE_HELPERS = textwrap.indent(
    """
import json, os, select, threading
from pmem_metrics import MetricsWriter, PmemMetricsPerDevice

def big_line_fifo():
    for i in range(3000):
        PmemMetricsPerDevice.alloc(f"drive-{i:04d}")
    os.mkfifo("fifo")
    reader = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = MetricsWriter()
    w.init("fifo")
    return PmemMetricsPerDevice.alloc("drive-0000"), w, reader

def drain_and_parse(fd, write):
    data = bytearray()
    t = threading.Thread(target=write)
    t.start()
    while t.is_alive() or select.select([fd], [], [], 0)[0]:
        if select.select([fd], [], [], 0.05)[0]:
            data += os.read(fd, 1 << 16)
    t.join()
    lines = data.decode().split("\\n")
    assert lines[-1] == ""
    parsed = []
    for line in lines[:-1]:
        if not line:
            continue  # empty: the newline a writer's first line to a pipe starts with
        try:
            parsed.append(json.loads(line)["pmem_drive-0000"]["cfg_fails"])
        except ValueError:
            parsed.append("fragment")
    return parsed
""",
    " " * 8,
)


def test_a_reader_leaving_mid_line_leaves_no_torn_line_for_the_next(run_python) -> None:
    """A line bigger than the pipe buffer is cut when its reader leaves; the next reader
    finds the cut-off part as a line of its own, then whole lines."""
    out = run_python(
        PIPE_HELPERS
        + """
        m, w, first = big_line_fifo()
        m.cfg_fails.add(5)
        errors = []
        def write():
            try:
                w.write()
            except OSError as e:
                errors.append(type(e).__name__)
        t = threading.Thread(target=write)
        t.start()
        select.select([first], [], [])
        os.read(first, 1000)  # the reader takes a little of the line, then goes away
        os.close(first)
        t.join()
        second = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
        print(errors, drain_and_parse(second, write))
        """
    )
    assert out == "['BrokenPipeError'] ['fragment', 5]\n"


def test_a_partial_write_to_a_file_object_not_in_append_mode(run_python, tmp_path: Path) -> None:
    """open(path, "w"): the fragment is cut off and the position moved back, so no gap."""
    out = run_python(
        """
        import os, resource
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        f = open("m.json", "w")
        w = MetricsWriter()
        w.init(f)
        m = PmemMetricsPerDevice.alloc("drv0")
        m.activate_fails.add(1)
        w.write()
        size = os.path.getsize("m.json")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))
        m.activate_fails.add(2)
        try:
            w.write()
        except OSError as e:
            print("refused", e.errno, os.path.getsize("m.json") - size, f.tell() - size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        m.activate_fails.add(4)
        w.write()
        """
    )
    assert out == f"refused {errno.EFBIG} 0 0\n"
    text = (tmp_path / "m.json").read_text()
    assert "\0" not in text
    lines = text.splitlines(keepends=True)
    assert [parse_line(line)["pmem_drv0"]["activate_fails"] for line in lines] == [1, 6]


def test_an_exception_from_a_signal_handler_mid_line_leaves_no_torn_line(run_python) -> None:
    """A blocked write to a pipe, interrupted by a handler that raises after part went out."""
    out = run_python(
        PIPE_HELPERS
        + """
        import signal
        m, w, reader = big_line_fifo()
        class Interrupted(Exception):
            pass
        def handler(signum, frame):
            raise Interrupted
        signal.signal(signal.SIGALRM, handler)
        m.cfg_fails.add(5)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # nobody reads: the write is stuck
        try:
            w.write()
        except Interrupted:
            print("interrupted")
        print(drain_and_parse(reader, w.write))
        """
    )
    assert out == "interrupted\n['fragment', 5]\n"


def test_a_reader_leaving_is_epipe_even_where_sigpipe_would_kill(run_python, tmp_path) -> None:
    out = run_python(
        """
        import os, signal
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a C application might have it
        os.mkfifo("fifo")
        reader = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
        w = MetricsWriter()
        w.init("fifo")
        m = PmemMetricsPerDevice.alloc("drv0")
        os.close(reader)
        m.cfg_fails.inc()
        try:
            w.write()
        except BrokenPipeError:
            print("EPIPE, still alive, diff", m.cfg_fails.fetch_diff())
        print("pending", signal.sigpending())
        """
    )
    assert out.splitlines() == ["EPIPE, still alive, diff 1", "pending set()"]


def test_no_sigpipe_death_when_the_streams_own_text_hits_a_gone_reader(run_python) -> None:
    out = run_python(
        """
        import os, signal
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.mkfifo("fifo")
        reader = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
        stream = os.fdopen(os.open("fifo", os.O_WRONLY), "w")
        w = MetricsWriter()
        w.init(stream)
        stream.write("the application's own text, still buffered\\n")
        os.close(reader)
        m = PmemMetricsPerDevice.alloc("drv0")
        m.event_fails.inc()
        try:
            w.write()
        except BrokenPipeError:
            print("EPIPE, alive, diff", m.event_fails.fetch_diff(), signal.sigpending(), flush=True)
        os._exit(0)  # not via the stream's close at exit: its text would still meet SIGPIPE
        """
    )
    assert out == "EPIPE, alive, diff 1 set()\n"


def test_destinations_that_cannot_take_lines_are_refused_at_init(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("")
    closed = open(path, "w")
    closed.close()
    read_only_fd = os.open(path, os.O_RDONLY)

    class BogusDescriptor(io.StringIO):
        def fileno(self) -> int:
            return 987_654

    class ReadOnlyDescriptor(io.StringIO):  # says nothing of writable(); its fd is read-only
        def writable(self) -> bool:
            return True

        def fileno(self) -> int:
            return read_only_fd

    try:
        with open(path) as for_reading:
            cases = [
                (closed, "is closed"),
                (for_reading, "not open for writing"),
                (BogusDescriptor(), "file descriptor 987654 is not open"),
                (ReadOnlyDescriptor(), "not open for writing"),
            ]
            for dest, message in cases:
                w = MetricsWriter()
                with pytest.raises(MetricsDestinationError, match=message):
                    w.init(dest)
                assert not w.initialized
    finally:
        os.close(read_only_fd)


def test_bad_timeouts_and_intervals_name_the_limit() -> None:
    w = MetricsWriter()
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            w.init(io.StringIO(), timeout=bad)
    with pytest.raises(TypeError):
        w.init(io.StringIO(), timeout="1")  # type: ignore[arg-type]
    assert not w.initialized
    w.init(io.StringIO())
    with pytest.raises(ValueError, match=r"at most threading\.TIMEOUT_MAX \(\d"):
        w.start_periodic(1e12)
    assert not w.periodic


def test_a_non_blocking_descriptor_gets_whole_lines(run_python) -> None:
    """A line far bigger than the pipe buffer, to a pipe in non-blocking mode."""
    out = run_python(
        PIPE_HELPERS
        + """
        r, wfd = os.pipe()
        os.set_blocking(wfd, False)
        for i in range(3000):
            PmemMetricsPerDevice.alloc(f"drive-{i:04d}")
        m = PmemMetricsPerDevice.alloc("drive-0000")
        w = MetricsWriter()
        w.init(os.fdopen(wfd, "w"))
        m.cfg_fails.add(3)
        print(drain_and_parse(r, w.write))
        """
    )
    assert out.splitlines() == ["[3]"]


def test_a_destination_that_never_drains_times_out_and_keeps_the_counts(run_python) -> None:
    out = run_python(
        PIPE_HELPERS
        + """
        m, _, reader = big_line_fifo()
        w = MetricsWriter()
        w.init("fifo", timeout=0.3)
        m.cfg_fails.add(5)
        try:
            w.write()
        except TimeoutError as e:
            print("timed out:", e.filename, m.cfg_fails.fetch_diff())
        m.cfg_fails.add(1)
        # The reader comes back: the cut line is closed off, the next one is whole.
        print(drain_and_parse(reader, w.write))
        """
    )
    assert out.splitlines() == ["timed out: fifo 5", "['fragment', 6]"]


def test_a_file_left_mid_line_gets_the_fragment_closed_off(uid: str, tmp_path: Path) -> None:
    """A writer killed mid-line leaves a fragment: the next writer's first line stays whole."""
    path = tmp_path / "m.json"
    path.write_text('{"utc_timestamp_ms":1,"pmem_dr')  # what a killed writer left
    m = PmemMetricsPerDevice.alloc(uid + "frag")
    flush_metrics()
    m.cfg_fails.add(2)
    w = MetricsWriter()
    w.init(str(path))
    assert w.write()
    fragment, line = path.read_text().splitlines(keepends=True)
    assert fragment.endswith("\x18\n")
    assert parse_line(line)[f"pmem_{uid}frag"]["cfg_fails"] == 2
