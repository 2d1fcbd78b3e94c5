"""A registry in a shared segment: one set of counters across processes.

Attaching changes a process for good, so every case runs in fresh processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pmem_metrics import open_segment
from pmem_metrics.prometheus import register

from .helpers import c_flags, fault_library


def py(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_processes_share_counters_and_a_flush_reports_them_once(tmp_path: Path) -> None:
    seg = str(tmp_path / "seg")
    bump = (
        "import pmem_metrics as p; p.attach({seg!r}); "
        "p.PmemMetricsPerDevice.alloc('drv0').cfg_fails.add({n}); print(p.is_shared())"
    )
    assert py(bump.format(seg=seg, n=5), tmp_path) == "True\n"
    assert py(bump.format(seg=seg, n=7), tmp_path) == "True\n"
    flush = (
        "import json, pmem_metrics as p; p.attach({seg!r}); print(json.dumps(p.flush_metrics()))"
    )
    first = json.loads(py(flush.format(seg=seg), tmp_path))
    again = json.loads(py(flush.format(seg=seg), tmp_path))
    assert first["pmem_drv0"]["cfg_fails"] == 12  # both processes' counts, in one device
    assert again["pmem_drv0"]["cfg_fails"] == 0  # flushed once, across processes


def test_a_c_program_and_python_share_one_segment(tmp_path: Path) -> None:
    (tmp_path / "bump.c").write_text(
        """
        #include <stdio.h>
        #include <pmem_metrics.h>
        int main(int argc, char **argv)
        {
            struct pmem_metrics *m;
            if (argc < 2 || pmem_metrics_attach(argv[1], 0) != 0)
                return 1;
            if (!(m = pmem_metrics_alloc("drv0")))
                return 1;
            for (int i = 0; i < 1000; i++)
                pmem_metrics_inc(&m->queue_event_count);
            return 0;
        }
        """
    )
    subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "bump.c", *c_flags(), "-o", "bump"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    seg = str(tmp_path / "seg")
    subprocess.run([str(tmp_path / "bump"), seg], check=True)
    out = py(
        "import pmem_metrics as p; "
        "m = p.PmemMetricsPerDevice.alloc('drv0'); m.queue_event_count.add(1);"
        "print(p.flush_metrics()['pmem_drv0']['queue_event_count'], p.is_shared())",
        tmp_path,
        env={"PMEM_METRICS_SHM": seg},  # attached at the first registry call
    )
    assert out == "1001 True\n"


def test_a_full_segment_is_enospc_and_the_rest_works(tmp_path: Path) -> None:
    out = py(
        f"""
import errno, pmem_metrics as p
p.attach({str(tmp_path / "seg")!r}, capacity=2)
p.PmemMetricsPerDevice.alloc("a"), p.PmemMetricsPerDevice.alloc("b")
try:
    p.PmemMetricsPerDevice.alloc("c")
except OSError as e:
    print(type(e).__name__, e.errno == errno.ENOSPC)
p.PmemMetricsPerDevice.alloc("a").cfg_fails.inc()
print(p.flush_metrics()["pmem"]["cfg_fails"], p.device_count())
""",
        tmp_path,
    )
    assert out.splitlines() == ["SegmentFullError True", "1 2"]


def test_files_that_are_no_segment_are_refused_naming_path_and_reason(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"x" * 8192)
    (tmp_path / "short").write_bytes(b"")
    os.symlink(tmp_path / "junk", tmp_path / "link")
    out = py(
        """
import pmem_metrics as p
for name in ("junk", "short", "link"):
    try:
        p.attach(name)
    except p.SegmentError as e:
        print(name, type(e).__name__, isinstance(e, ValueError), e.filename, e.strerror)
p.PmemMetricsPerDevice.alloc("private")  # still usable, privately
print(p.is_shared())
""",
        tmp_path,
    )
    assert out.splitlines() == [
        "junk InvalidSegmentError True junk cannot attach the metrics segment: "
        "not a pmem_metrics segment (or not a regular file)",
        "short InvalidSegmentError True short cannot attach the metrics segment: "
        "a truncated or corrupt segment",
        "link SegmentError False link cannot attach the metrics segment: "
        "a symbolic link (never followed)",
        "False",
    ]


def test_a_bad_segment_in_the_environment_fails_every_call_never_falls_back(
    tmp_path: Path,
) -> None:
    (tmp_path / "junk").write_bytes(b"x" * 8192)
    out = py(
        """
import pmem_metrics as p
for call in (lambda: p.PmemMetricsPerDevice.alloc("drv0"), p.flush_metrics, p.device_count):
    try:
        call()
    except p.InvalidSegmentError as e:
        print(e.filename, e.strerror)
print(p.is_shared())
""",
        tmp_path,
        env={"PMEM_METRICS_SHM": str(tmp_path / "junk")},
    )
    reason = "cannot attach the metrics segment: not a pmem_metrics segment (or not a regular file)"
    junk = str(tmp_path / "junk")
    assert out.splitlines() == [f"{junk} {reason}"] * 3 + ["False"]


def test_a_forked_child_stays_attached_and_attach_comes_first(tmp_path: Path) -> None:
    out = py(
        f"""
import errno, os, pmem_metrics as p
p.attach({str(tmp_path / "seg")!r})
m = p.PmemMetricsPerDevice.alloc("drv0")
pid = os.fork()
if pid == 0:
    m.event_fails.add(4)  # the child's increments land in the same counters
    os._exit(0)
os.waitpid(pid, 0)
print(m.event_fails.count())
try:
    p.attach({str(tmp_path / "other")!r})
except p.SegmentError as e:
    print(e.errno == errno.EBUSY)
""",
        tmp_path,
    )
    assert out.splitlines() == ["4", "True"]


def bump_in_processes(seg: Path, cwd: Path) -> None:
    """Two processes, each attached to *seg*, count into a device of their own."""
    for n in (3, 4):
        py(
            f"import pmem_metrics as p; p.attach({str(seg)!r}); "
            f"p.PmemMetricsPerDevice.alloc('drv{n}').cfg_fails.add({n})",
            cwd,
        )


def test_the_exporter_writes_lines_for_every_process(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    bump_in_processes(seg, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(seg), "--interval", "0.2",
         "--duration", "0.5", "--metrics-path", "lines.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in (tmp_path / "lines.json").read_text().splitlines()]
    assert len(lines) == 3  # at 0.2 and 0.4 s, and the final one
    assert all(list(line)[1:] == ["pmem_drv3", "pmem_drv4", "pmem"] for line in lines)
    assert [sum(line["pmem"].values()) for line in lines] == [7, 0, 0]


def test_the_exporter_serves_several_segments_to_prometheus_until_ctrl_c(
    tmp_path: Path,
) -> None:
    import urllib.request

    seg, other = tmp_path / "seg", tmp_path / "other"
    bump_in_processes(seg, tmp_path)
    py(f"import pmem_metrics as p; p.open_segment({str(other)!r}).alloc('drv3').cfg_fails.add(9)",
       tmp_path)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(seg), "--shm", str(other),
         "--prometheus-port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().split(" at ")[1].strip()
        text = urllib.request.urlopen(url, timeout=30).read().decode()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # One device id in two segments: two series, told apart by the segment label.
    assert f'pmem_cfg_fails_total{{drive_id="drv3",segment="{seg}"}} 3.0' in text
    assert f'pmem_cfg_fails_total{{drive_id="drv4",segment="{seg}"}} 4.0' in text
    assert f'pmem_cfg_fails_total{{drive_id="drv3",segment="{other}"}} 9.0' in text
    assert text.count("pmem_cfg_fails_total{") == 3
    assert proc.returncode == 130, err
    assert out == ""  # Prometheus only: no lines
    # Reading flushed nothing: a flush of each segment still reports every count.
    flush = "import json, pmem_metrics as p; print(p.open_segment({!r}).flush_metrics_json())"
    assert json.loads(py(flush.format(str(seg)), tmp_path))["pmem"]["cfg_fails"] == 7
    assert json.loads(py(flush.format(str(other)), tmp_path))["pmem"]["cfg_fails"] == 9


def export_fails(tmp_path: Path, *args: str) -> str:
    """Run the exporter with *args*: it must fail with a message, no traceback; its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", *args, "--duration", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("python -m pmem_metrics")
    return proc.stderr


def test_the_exporter_refuses_what_it_cannot_read_and_creates_nothing(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert f"no segment at {a!r}" in export_fails(tmp_path, "--shm", a, "--shm", b)
    assert "no segment at" in export_fails(tmp_path, "--shm", a)  # a typo is not a new file
    assert "no segment at ''" in export_fails(tmp_path, "--shm", "")
    (tmp_path / "junk").write_bytes(b"x" * 4096)
    err = export_fails(tmp_path, "--shm", str(tmp_path / "junk"), "--prometheus-port", "0")
    assert "not a pmem_metrics segment" in err and "junk" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_exporter_attaches_to_no_segment_pmem_metrics_shm_names(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    bump_in_processes(seg, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(seg), "--duration", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PMEM_METRICS_SHM": str(tmp_path / "typo")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pmem"]["cfg_fails"] == 7
    assert not (tmp_path / "typo").exists()


def test_the_exporter_reads_a_segment_named_twice_once(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    bump_in_processes(seg, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pmem_metrics", "export", "--shm", str(seg), "--shm", str(seg),
         "--duration", "0", "--metrics-path", "lines.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "lines.json").read_text().splitlines()
    assert [json.loads(line)["pmem"]["cfg_fails"] for line in lines] == [7]


def test_a_segment_open_as_a_registry_cannot_be_attached_too(tmp_path: Path) -> None:
    out = py(
        f"""
import errno, pmem_metrics as p
seg = p.open_segment({str(tmp_path / "seg")!r})
try:
    p.attach({str(tmp_path / "seg")!r})
except p.SegmentError as e:
    print(e.errno == errno.EBUSY, "open_segment" in str(e))
print(p.is_shared())
""",
        tmp_path,
    )
    assert out.split() == ["True", "True", "False"]
    out = py(
        f"import pmem_metrics as p; print(p.open_segment({str(tmp_path / 'seg')!r}) == "
        "p.Registry.default())",
        tmp_path,
        env={"PMEM_METRICS_SHM": str(tmp_path / "seg")},
    )
    assert out == "True\n"  # attached by the environment first: the very same registry


WORKER = """
import json, sys, threading
import pmem_metrics as p
p.attach(sys.argv[1])
flusher = sys.argv[2] == "flush"
devices = [p.PmemMetricsPerDevice.alloc(f"d{i}") for i in range(5)]

def bump(t):
    for i in range(4000):
        devices[(i + t) % 5].queue_event_count.inc()

threads = [threading.Thread(target=bump, args=(t,)) for t in range(2)]
for t in threads:
    t.start()
reported = 0
while flusher and any(t.is_alive() for t in threads):
    out = p.flush_metrics()
    assert out["pmem"]["queue_event_count"] == sum(
        v["queue_event_count"] for k, v in out.items() if k != "pmem")
    reported += out["pmem"]["queue_event_count"]
for t in threads:
    t.join()
print(json.dumps(reported))
"""


def test_processes_and_threads_with_two_flushers_report_every_count_once(tmp_path: Path) -> None:
    """3 processes x 2 threads on the same ids, two of them flushing all along."""
    seg = str(tmp_path / "seg")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, seg, role],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in ("flush", "flush", "bump")
    ]
    reported = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reported += json.loads(out)
    rest = py(
        f"import pmem_metrics as p; p.attach({seg!r}); "
        "print(p.flush_metrics()['pmem']['queue_event_count'])",
        tmp_path,
    )
    assert reported + int(rest) == 3 * 2 * 4000


def test_processes_creating_one_segment_at_once_end_up_sharing_it(tmp_path: Path) -> None:
    seg = str(tmp_path / "fresh")
    code = "import pmem_metrics as p, sys; p.attach(sys.argv[1]); p.PmemMetricsPerDevice.alloc('x').cfg_fails.inc()"  # noqa: E501
    procs = [
        subprocess.Popen([sys.executable, "-c", code, seg], cwd=tmp_path, stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    out = py(
        f"import pmem_metrics as p; p.attach({seg!r}); "
        "print(p.PmemMetricsPerDevice.alloc('x').cfg_fails.count(), p.device_count())",
        tmp_path,
    )
    assert out == "6 1\n"
    # No temporary file left behind: the segment and its writers' lock file.
    assert sorted(os.listdir(tmp_path)) == ["fresh", "fresh.lock"]


KILLED_WRITER = """
import sys, pmem_metrics as p
p.attach(sys.argv[1])
m = p.PmemMetricsPerDevice.alloc("w" + sys.argv[2])
print("ready", flush=True)
while True:
    m.queue_event_count.inc()
"""

KILLED_FLUSHER = """
import sys, pmem_metrics as p
p.attach(sys.argv[1])
p.METRICS.init(sys.argv[2])
print("ready", flush=True)
while True:
    p.METRICS.write()
"""


@pytest.mark.heavy
def test_processes_killed_at_random_instants_lose_nothing_and_wedge_nobody(
    tmp_path: Path,
) -> None:
    """SIGKILL for two writers and a flusher, at random instants, six times over."""
    import random
    import time

    seg, lines = str(tmp_path / "seg"), str(tmp_path / "lines.json")
    rng = random.Random(5)
    for _ in range(6):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, seg, arg], stdout=subprocess.PIPE, text=True
            )
            for code, arg in ((KILLED_WRITER, "0"), (KILLED_WRITER, "1"), (KILLED_FLUSHER, lines))
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.01, 0.2))
        for proc in rng.sample(procs, len(procs)):
            proc.kill()
            proc.wait()
    # A last flush goes through (nothing is wedged) and reports what is left.
    counted = json.loads(
        py(
            f"import json, pmem_metrics as p; p.attach({seg!r}); p.METRICS.init({lines!r});"
            "p.METRICS.write();"
            "ms = [p.PmemMetricsPerDevice.alloc(w) for w in ('w0', 'w1')];"
            "print(json.dumps([sum(m.queue_event_count.count() for m in ms),"
            " sum(m.queue_event_count.fetch_diff() for m in ms)]))",
            tmp_path,
        )
    )
    written = fragments = 0
    for line in (tmp_path / "lines.json").read_text().splitlines(keepends=True):
        try:
            written += json.loads(line)["pmem"]["queue_event_count"]
        except ValueError:
            assert line.endswith("\x18\n"), line[-40:]  # a killed write, closed off
            fragments += 1
    assert counted[0] > 0 and counted[1] == 0
    # Never lost.  (A flusher killed after writing its line, before committing,
    # makes the next line report those counts again: at least, not exactly.)
    assert written >= counted[0], (written, counted, fragments)


HOLDER = """
import os, signal, sys, cffi
import pmem_metrics as p
ffi = cffi.FFI()
ffi.cdef("void pmem_metrics_fault_pause_hook(void (*hook)(const char *where));")
fault = ffi.dlopen(sys.argv[2])

@ffi.callback("void(const char *)")
def stop_inside_the_insert(where):
    if ffi.string(where) == b"insert":  # the segment's insert lock is held right here
        print("holding", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

seg = p.open_segment(sys.argv[1])
fault.pmem_metrics_fault_pause_hook(stop_inside_the_insert)
seg.alloc("late").cfg_fails.inc()
print("inserted", flush=True)
"""


def start_holder(seg_path: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """HOLDER on the segment at *seg_path*, with the fault build: it stops inside an insert."""
    lib = fault_library(tmp_path) / "libpmemmetrics.so"
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(seg_path), str(lib)], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, env={**os.environ, "LD_LIBRARY_PATH": str(lib.parent)},
    )  # fmt: skip


@pytest.mark.heavy
def test_a_process_stopped_holding_the_lock_stalls_no_scrape_flush_or_ctrl_c(
    tmp_path: Path,
) -> None:
    seg_path = tmp_path / "seg"
    seg = open_segment(seg_path)
    seg.alloc("early").cfg_fails.add(2)
    holder = start_holder(seg_path, tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        # Scrapes and flushes take no insert lock: the stopped process holds them up not at all.
        registry = CollectorRegistry()
        register(registry, {"stuck": seg}, timeout=0.2)
        text = generate_latest(registry).decode()
        assert 'pmem_segment_up{segment="stuck"} 1.0' in text
        assert 'pmem_cfg_fails_total{drive_id="early",segment="stuck"} 2.0' in text
        assert seg.flush_metrics()["pmem_early"]["cfg_fails"] == 2
        assert seg.alloc("early").cfg_fails.count() == 2  # an id that exists: found unlocked

        # A new id waits for the insert lock, but in slices: Ctrl-C gets in.
        class Interrupted(Exception):
            pass

        def interrupt(signum: int, frame: object) -> None:
            raise Interrupted

        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                seg.alloc("new")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        holder.send_signal(signal.SIGCONT)
        assert holder.stdout.readline() == "inserted\n"
        assert holder.wait(60) == 0
    finally:
        holder.kill()
    seg.alloc("new").cfg_fails.add(3)
    flushed = seg.flush_metrics()  # nothing was held or lost on the way
    assert flushed["pmem_early"]["cfg_fails"] == 0 and flushed["pmem_late"]["cfg_fails"] == 1
    assert flushed["pmem_new"]["cfg_fails"] == 3


@pytest.mark.heavy
def test_a_stopped_inserter_times_out_a_new_id_within_the_bound(tmp_path: Path) -> None:
    seg_path = tmp_path / "seg"
    open_segment(seg_path).alloc("early")
    holder = start_holder(seg_path, tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        out = py(
            f"""
import pmem_metrics as p
seg = p.open_segment({str(seg_path)!r})
try:
    seg.alloc("new")
except p.SegmentTimeoutError as e:
    print(isinstance(e, TimeoutError), e.filename == {str(seg_path)!r}, e.strerror)
""",
            tmp_path,
            env={"PMEM_METRICS_SEGMENT_WAIT_MS": "300"},
        )
    finally:
        holder.kill()
    assert out == (
        "True True cannot allocate 'new' in the metrics segment: another process held its lock "
        "past the bound (stopped, or stuck?)\n"
    )


STUCK_WRITER = """
import sys, pmem_metrics as p
seg = p.open_segment(sys.argv[1])
seg.alloc("stuck").cfg_fails.add(5)
w = p.MetricsWriter(seg)
w.init(sys.argv[2], timeout=120)  # a pipe whose reader reads nothing
print("writing", flush=True)
w.write()  # takes the flush, then blocks in the pipe
print("wrote", flush=True)
"""


def test_a_writer_stuck_on_its_pipe_holds_up_no_other_process(tmp_path: Path) -> None:
    """One process's line blocked on a full pipe: another process's lines go out meanwhile,
    and every count is in exactly one line once the pipe drains."""
    import select
    import time

    seg_path, fifo = tmp_path / "seg", tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:  # fill the pipe: the stuck writer's line cannot go in
            os.write(filler, b"\n" * 4096)
    except BlockingIOError:
        pass
    seg = open_segment(seg_path)
    stuck = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITER, str(seg_path), str(fifo)],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stuck.stdout is not None and stuck.stdout.readline() == "writing\n"
        # Wait until its flush is taken (its claim moved the 5 away), without a timing guess.
        other = seg.alloc("other")
        deadline = time.monotonic() + 60
        while seg.alloc("stuck").cfg_fails.fetch_diff() != 0:
            assert time.monotonic() < deadline and stuck.poll() is None
            time.sleep(0.01)
        other.cfg_fails.add(3)
        out = py(
            f"""
import pmem_metrics as p
w = p.MetricsWriter(p.open_segment({str(seg_path)!r}))
w.init({str(tmp_path / "lines")!r}, timeout=5)
print(w.write())
""",
            tmp_path,
        )
        assert out == "True\n"  # went out while the other line was still stuck
        assert stuck.poll() is None
        written = [json.loads(line) for line in (tmp_path / "lines").read_text().splitlines()]
        assert [line["pmem_other"]["cfg_fails"] for line in written] == [3]
        assert written[0]["pmem_stuck"]["cfg_fails"] == 0  # the stuck line has it
        # Drain the pipe: the stuck line goes out, with its 5.
        os.close(filler)
        data = b""
        while True:  # until every writer is gone (end of file)
            assert time.monotonic() < deadline + 60
            if select.select([reader], [], [], 0.1)[0]:
                chunk = os.read(reader, 1 << 16)
                if not chunk:
                    break
                data += chunk
        assert stuck.wait(60) == 0
    finally:
        stuck.kill()
        os.close(reader)
    lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    assert [line["pmem_stuck"]["cfg_fails"] for line in lines] == [5]
    assert seg.flush_metrics()["pmem"]["cfg_fails"] == 0  # nothing left, nothing twice
