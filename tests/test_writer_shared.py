"""Several writers on one metrics file or pipe (README: "One metrics file, several writers").

What is checked: a writer's committed line is never removed or glued onto
another writer's fragment, so every count it committed can be read back; a
fragment (a line cut short) is always closed off, a line of its own that
does not parse.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from pmem_metrics import FIELDS, MetricsWriter, PmemMetricsPerDevice

from .helpers import assert_aggregate_is_sum

CAN = b"\x18"
HEAD = ("utc_timestamp_ms", "id")  # what a line has before its devices


def read_lines(path: Path) -> tuple[list[dict], list[bytes]]:
    """The lines of *path* that parse, and those that do not (each must be a closed fragment)."""
    parsed, fragments = [], []
    data = path.read_bytes()
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError:
            if line:  # a lone newline (an empty line) is one readers skip
                fragments.append(line)
                # Closed off by CAN, unless it is the file's unfinished end.
                assert line.endswith(CAN) or i == len(lines) - 1, (i, line[:80], line[-80:])
            continue
        assert_aggregate_is_sum({k: v for k, v in obj.items() if k not in HEAD})
        parsed.append(obj)
    return parsed, fragments


def totals(lines: list[dict]) -> dict[str, dict[str, int]]:
    """Per writer id, the sum of each field of its aggregate over its lines."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for obj in lines:
        for f in FIELDS:
            out[obj["id"]][f] += obj["pmem"][f]
    return out


# Writer A, in a process of its own, whose line a file size limit cuts short.
# Its cut is held back (by wrapping the library call) until writer B, in
# the parent, has appended a line: the order in which two processes can
# meet, made certain.
PARTIAL_WRITER = """
import os, resource, signal, sys
import pmem_metrics._fdsink as sink
from pmem_metrics import MetricsWriter, PmemMetricsPerDevice

go, done = int(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

class HeldCut:
    def __init__(self, lib):
        self.lib = lib
    def __getattr__(self, name):
        real = getattr(self.lib, name)
        if not name.endswith("line_cut"):
            return real
        def cut(*args):
            os.write(go, b"g")  # A's line is partly out: B, write now
            os.read(done, 1)
            return real(*args)
        return cut

sink.lib = HeldCut(sink.lib)
w = MetricsWriter()
w.init("m.json", id="A")
m = PmemMetricsPerDevice.alloc("a0")
m.activate_fails.add(3)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize("m.json") + 20, hard))
try:
    w.write()
except OSError as e:
    print("A refused", e.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
os.write(go, b"g")  # the last wait of B: never held
m.activate_fails.add(4)
w.write()
"""


def test_a_cut_never_removes_a_line_another_writer_appended(run_python, tmp_path: Path) -> None:
    """A's line is cut short by RLIMIT_FSIZE; B appends a line before A cuts: B's line stands."""
    (tmp_path / "partial_writer.py").write_text(PARTIAL_WRITER)
    out = run_python(
        """
        import errno, os, subprocess, sys
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        w = MetricsWriter()
        w.init("m.json", id="B")
        m = PmemMetricsPerDevice.alloc("b0")
        m.cfg_fails.add(1)
        w.write()
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        a = subprocess.Popen(
            [sys.executable, "partial_writer.py", str(go_w), str(done_r)],
            pass_fds=(go_w, done_r),
        )
        os.close(go_w)
        os.close(done_r)
        assert os.read(go_r, 1) == b"g"
        m.cfg_fails.add(2)
        w.write()
        os.write(done_w, b"d")
        os.read(go_r, 1)
        m.cfg_fails.add(4)
        w.write()
        print("A exit", a.wait())
        """
    )
    assert out == f"A refused {errno.EFBIG}\nA exit 0\n"
    lines, fragments = read_lines(tmp_path / "m.json")
    got = totals(lines)
    assert got["B"]["cfg_fails"] == 7  # B's three lines: 1, 2, 4
    assert got["A"]["activate_fails"] == 7  # A's line cut short came again, with 4 more
    # A's 20 bytes, closed off by B's line; A's next line closes them off
    # again (A cannot know B did): a lone CAN, one more line that does not parse.
    assert [len(f) for f in fragments] == [20 + 1, 1]


def test_a_fragment_left_on_a_named_pipe_does_not_spoil_the_next_writers_line(
    run_python,
) -> None:
    """A writer killed mid-line left a fragment in the pipe; the next one's line still parses."""
    out = run_python(
        """
        import json, os
        from pmem_metrics import MetricsWriter, PmemMetricsPerDevice
        os.mkfifo("fifo")
        reader = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
        killed = os.open("fifo", os.O_WRONLY)
        os.write(killed, b'{"utc_timestamp_ms":1,"pmem_drv0":{"activate_fa')
        os.close(killed)
        w = MetricsWriter()
        w.init("fifo")
        PmemMetricsPerDevice.alloc("drv0").event_fails.add(5)
        w.write()
        data = os.read(reader, 1 << 16).decode()
        lines = data.split("\\n")
        print(repr(lines[0]))
        print(json.loads(lines[-2])["pmem_drv0"]["event_fails"], repr(lines[-1]))
        """
    )
    assert out.splitlines() == [
        repr('{"utc_timestamp_ms":1,"pmem_drv0":{"activate_fa'),
        "5 ''",
    ]


# Flushers appending to one shared file, each process with its own registry
# (a fork of a process that has allocated the devices and counted nothing).
# Keepers count and write KEEPER_ROUNDS rounds; victims write at most
# VICTIM_ROUNDS and are SIGKILLed at random instants (while writing, or after)
# and replaced, KILLS times.  Lines are some 50 kB (600 devices), many
# pages: a kill can land in the middle of one.  A round adds 1 to every
# device's queue_event_count, then writes a line.  Bounded by work, not time:
# a faster machine writes the same lines (at most some 30 MB), not more.
SIGKILLED_FLUSHERS = """
import json, os, random, signal, sys, time
from pmem_metrics import MetricsWriter, PmemMetricsPerDevice

KEEPER_ROUNDS, VICTIM_ROUNDS, KILLS = 60, 10, 60
DEVICES = [PmemMetricsPerDevice.alloc(f"d{i:04d}") for i in range(600)]

def flusher(name, rounds):
    w = MetricsWriter()
    w.init("m.json", id=name)
    for _ in range(rounds):
        for m in DEVICES:
            m.queue_event_count.inc()
        w.write()

def spawn(name, rounds):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            flusher(name, rounds)
            code = 0
            if rounds == VICTIM_ROUNDS:
                signal.pause()  # a victim waits for its kill
        finally:
            os._exit(code)
    return pid

keepers = {spawn(f"keeper{i}", KEEPER_ROUNDS): f"keeper{i}" for i in range(3)}
victims = [spawn(f"victim{i}", VICTIM_ROUNDS) for i in range(3)]
kills = 0
while kills < KILLS:
    time.sleep(random.uniform(0, 0.005))
    pid = victims.pop(random.randrange(len(victims)))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    kills += 1
    victims.append(spawn(f"victim{kills + 2}", VICTIM_ROUNDS))
for pid in victims:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
statuses = [os.waitpid(pid, 0)[1] for pid in keepers]
assert statuses == [0, 0, 0], statuses
print(json.dumps({"kills": kills, "keepers": list(keepers.values())}))
"""


def test_flushers_sigkilled_mid_line_lose_no_other_writers_counts(run_python, tmp_path) -> None:
    """Every line that parses is whole; every count a surviving flusher committed is read back."""
    out = json.loads(run_python(SIGKILLED_FLUSHERS, timeout=120))
    assert out["kills"] > 0
    lines, _fragments = read_lines(tmp_path / "m.json")
    got = totals(lines)
    for name in out["keepers"]:
        assert got[name]["queue_event_count"] == 600 * 60, name
        per_device: dict[str, int] = defaultdict(int)
        for obj in lines:
            if obj["id"] == name:
                for k, v in obj.items():
                    if k.startswith("pmem_"):
                        per_device[k] += v["queue_event_count"]
        assert per_device == {f"pmem_d{i:04d}": 60 for i in range(600)}, name


def test_a_writer_holding_the_files_lock_delays_a_line_until_the_timeout(
    uid: str, tmp_path: Path
) -> None:
    """The lock that keeps writers apart is never waited on past the writer's timeout."""
    path = tmp_path / "m.json"
    m = PmemMetricsPerDevice.alloc(uid + "lock")
    w = MetricsWriter()
    w.init(path, timeout=0.2)
    holder = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another writer, stopped mid-line, say
        m.cfg_fails.add(3)
        with pytest.raises(TimeoutError, match="lock"):
            w.write()
        assert m.cfg_fails.fetch_diff() == 3  # kept for the next line
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert w.write()
    finally:
        os.close(holder)
    (line,) = path.read_text().splitlines()
    assert json.loads(line)[f"pmem_{uid}lock"]["cfg_fails"] == 3
