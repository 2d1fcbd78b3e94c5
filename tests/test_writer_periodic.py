"""MetricsWriter: periodic writing (start_periodic / stop_periodic) and the optional id and
properties; its other tests are in test_writer.py.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from pmem_metrics import FIELDS, MetricsWriter, PmemMetricsPerDevice, WriterStateError


def wait_for(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def lines_of(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_periodic_lines_then_a_final_one_and_nothing_lost(uid: str) -> None:
    buf = io.StringIO()
    w = MetricsWriter()
    w.init(buf)
    m = PmemMetricsPerDevice.alloc(uid + "p")
    w.write()  # start from zero diffs for m
    w.start_periodic(0.02, at_exit=False)
    assert w.periodic
    for _ in range(200):
        m.event_fails.inc()
        time.sleep(0.0005)
    wait_for(lambda: len(lines_of(buf)) >= 4)
    w.stop_periodic()
    assert not w.periodic
    lines = lines_of(buf)
    time.sleep(0.1)
    assert len(lines_of(buf)) == len(lines)  # stopped: no more lines
    assert sum(line.get(f"pmem_{uid}p", {}).get("event_fails", 0) for line in lines) == 200
    assert m.event_fails.fetch_diff() == 0
    w.stop_periodic()  # not running: nothing happens
    assert len(lines_of(buf)) == len(lines)


def test_periodic_needs_init_and_runs_once(uid: str) -> None:
    w = MetricsWriter()
    with pytest.raises(WriterStateError, match="init"):
        w.start_periodic(1)
    w.init(io.StringIO())
    for bad, error in ((0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                       ("1", TypeError), (True, TypeError)):  # fmt: skip
        with pytest.raises(error):
            w.start_periodic(bad)  # type: ignore[arg-type]
        assert not w.periodic
    w.start_periodic(3600, at_exit=False)
    with pytest.raises(WriterStateError, match="already"):
        w.start_periodic(1)
    w.stop_periodic()


class Failing(io.StringIO):
    """Fails its first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(self, s: str) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        return super().write(s)


def test_errors_in_the_thread_are_logged_and_lose_nothing(
    uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    dest = Failing(0)
    w = MetricsWriter()
    w.init(dest)
    m = PmemMetricsPerDevice.alloc(uid + "e")
    w.write()
    dest.failures = 3
    m.cfg_fails.add(9)
    with caplog.at_level(logging.DEBUG, logger="pmem_metrics"):
        w.start_periodic(0.01, at_exit=False)
        wait_for(lambda: dest.failures == 0 and len(lines_of(dest)) >= 2)
        w.stop_periodic()
    # One line per failure, with the reason and no traceback; the traceback at debug level.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().count("\n") for r in errors] == [0, 0, 0]
    assert all("Input/output error" in r.getMessage() and r.exc_info is None for r in errors)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 3 and all(r.exc_info is not None for r in debug)
    reported = sum(line.get(f"pmem_{uid}e", {}).get("cfg_fails", 0) for line in lines_of(dest))
    assert reported == 9


def test_a_final_line_at_interpreter_exit(run_python, tmp_path: Path) -> None:
    run_python(
        """
        from pmem_metrics import METRICS, PmemMetricsPerDevice
        METRICS.init("m.json")
        METRICS.start_periodic(3600)  # the timer never fires: only the exit writes
        PmemMetricsPerDevice.alloc("drv0").activate_fails.add(3)
        """
    )
    (line,) = (tmp_path / "m.json").read_text().splitlines()
    assert json.loads(line)["pmem_drv0"]["activate_fails"] == 3


def test_id_and_properties_follow_the_timestamp(uid: str) -> None:
    buf = io.StringIO()
    w = MetricsWriter()
    w.init(buf, id='vm-ü"1%d', properties={"region": "eu", "k%s": "v\n"})
    PmemMetricsPerDevice.alloc(uid + "i").activate_fails.inc()
    w.write()
    line = buf.getvalue()
    obj = json.loads(line)
    assert list(obj)[:3] == ["utc_timestamp_ms", "id", "properties"]
    assert obj["id"] == 'vm-ü"1%d' and obj["properties"] == {"region": "eu", "k%s": "v\n"}
    head = f'{{"utc_timestamp_ms":{obj["utc_timestamp_ms"]},"id":"vm-ü\\"1%d",'
    assert line.startswith(head + '"properties":{"region":"eu","k%s":"v\\n"},"pmem')
    assert line == json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
    assert set(obj[f"pmem_{uid}i"]) == set(FIELDS)


@pytest.mark.parametrize(
    "kwargs", [{"id": 5}, {"properties": {"a": 1}}, {"properties": [("a", "b")]}, {"id": b"x"}]
)
def test_bad_id_or_properties_are_refused_and_change_nothing(kwargs: dict) -> None:
    w = MetricsWriter()
    with pytest.raises(TypeError):
        w.init(io.StringIO(), **kwargs)
    assert not w.initialized
    w.init(io.StringIO())  # the writer is still free to be initialised
    assert w.initialized


def test_late_beats_are_skipped_not_burst() -> None:
    from pmem_metrics._periodic import _next_beat

    assert _next_beat(10.0, 1.0, now=10.2) == 11.0  # on time: the next beat
    assert _next_beat(10.0, 1.0, now=13.5) == 14.5  # three beats late: one, an interval on


def test_bad_intervals_and_a_huge_one(uid: str) -> None:
    w = MetricsWriter()
    w.init(io.StringIO())
    for bad in (float("inf"), threading.TIMEOUT_MAX * 2):
        with pytest.raises(ValueError):
            w.start_periodic(bad)
        assert not w.periodic


def test_a_forked_child_writes_no_final_line_of_its_parent(run_python, tmp_path: Path) -> None:
    run_python(
        """
        import os, sys
        from pmem_metrics import METRICS, PmemMetricsPerDevice
        METRICS.init("m.json")
        PmemMetricsPerDevice.alloc("drv0").cfg_fails.add(5)
        METRICS.start_periodic(3600)
        pid = os.fork()
        if pid == 0:
            assert not METRICS.periodic  # the parent's thread is not here
            sys.exit(0)  # a normal exit: atexit handlers run in the child too
        os.waitpid(pid, 0)
        METRICS.stop_periodic()
        """
    )
    lines = [json.loads(line) for line in (tmp_path / "m.json").read_text().splitlines()]
    assert [line["pmem_drv0"]["cfg_fails"] for line in lines] == [5]


def test_the_exit_hook_follows_the_latest_start(run_python, tmp_path: Path) -> None:
    run_python(
        """
        from pmem_metrics import METRICS, PmemMetricsPerDevice
        METRICS.init("m.json")
        m = PmemMetricsPerDevice.alloc("drv0")
        METRICS.start_periodic(3600)  # at_exit=True
        METRICS.stop_periodic()  # the first line
        METRICS.start_periodic(3600, at_exit=False)
        m.event_fails.inc()  # stays unwritten: no final line at exit was asked for
        """
    )
    assert len((tmp_path / "m.json").read_text().splitlines()) == 1


@pytest.mark.parametrize("kwargs", [{"id": "vm\ud800"}, {"properties": {"k": "v\udfff"}}])
def test_ids_and_properties_that_are_not_unicode_are_refused(kwargs: dict) -> None:
    w = MetricsWriter()
    with pytest.raises(ValueError, match="surrogates"):
        w.init(io.StringIO(), **kwargs)
    assert not w.initialized
