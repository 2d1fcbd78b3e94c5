"""Shared segments under hostile conditions: scribblers, other users, races, removal, truncation.

A segment is a file any process with write access can change, so the library
must survive whatever is in it: every error a SegmentError, never a signal,
never a hang, never a count reported twice or under another segment's name.
Processes that attach run in fresh interpreters (attaching is for good).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import pmem_metrics as p
from pmem_metrics import open_segment
from pmem_metrics.prometheus import register
from pmem_metrics.segment import segment_offset

# The segment's layout, as the library says (docs/segment-format.md): never a literal.
HEADER_SIZE = segment_offset("header.end")
OFF_USED = segment_offset("header.used")
SLOT_SIZE = segment_offset("slot_size")
SLOT_ID = segment_offset("slot.id")  # from a slot's start
MAX_CAPACITY = segment_offset("max_capacity")
HEADER_WORDS = ("capacity", "slot_size", "index_off", "slots_off", "size", "seq", "used")

BOUND_S = 60
"""How long a child may take before it counts as hung (a bound, not a timing expectation)."""

NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (to act as another user)"
)


def lock_file(seg: Path) -> Path:
    """The lock file beside the segment *seg*: its writers' locks."""
    return seg.with_name(seg.name + ".lock")


def header(path: Path) -> dict[str, int]:
    """The layout fields of the segment at *path*."""
    raw = path.read_bytes()[:HEADER_SIZE]
    return {
        k: struct.unpack_from("=Q", raw, segment_offset(f"header.{k}"))[0] for k in HEADER_WORDS
    }


def py(code: str, cwd: Path, *args: str, user: int | None = None) -> str:
    """Run *code* in a fresh interpreter (as *user*, if given); its stdout. It must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd, capture_output=True, text=True, timeout=BOUND_S,
        env={**os.environ, **user_env(user)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def user_env(user: int | None) -> dict[str, str]:
    """Environment for a Python child that is to run as *user* (group the same, no other group).

    The child starts as root and becomes *user* in :data:`DROP`, after its
    imports: the interpreter, under /root, could not be started as another
    user, nor its standard library imported.
    """
    return {} if user is None else {"PMEM_HOSTILE_USER": str(user)}


DROP = """
import os
if os.environ.get("PMEM_HOSTILE_USER"):
    _user = int(os.environ["PMEM_HOSTILE_USER"])
    os.setgroups([])
    os.setgid(_user)
    os.setuid(_user)
"""


def dropping(code: str) -> str:
    """*code* with its line ``# DROP`` (after its imports) making it its :func:`user_env` user."""
    assert "\n# DROP\n" in code
    return code.replace("\n# DROP\n", DROP)


def make(
    path: Path, devices: int, capacity: int, *, add: int = 0, name: str = "d", first: int = 0
) -> None:
    """A segment at *path*, made by another process: devices *name*0, *name*1, ...

    Device *k* (counting from *first*) has ``cfg_fails`` *add*, or *k* + 1 if *add* is 0.
    """
    py(
        "import sys, pmem_metrics as p\n"
        "s = p.open_segment(sys.argv[1], capacity=int(sys.argv[2]))\n"
        "a, name, first = int(sys.argv[3]), sys.argv[4], int(sys.argv[5])\n"
        "for k in range(first, first + int(sys.argv[6])):\n"
        "    s.alloc(f'{name}{k}').cfg_fails.add(a or k + 1)\n",
        path.parent,
        str(path),
        str(capacity),
        str(add),
        name,
        str(first),
        str(devices),
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="pmem-hostile-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def strict_json(text: str) -> dict[str, dict[str, int]]:
    """A flushed line, parsed; AssertionError if it names a key twice."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in items]
        assert len(keys) == len(set(keys)), f"a key twice: {keys}"
        return dict(items)

    result: dict[str, dict[str, int]] = json.loads(text, object_pairs_hook=pairs)
    return result


# ---- 1. A scribbler and its victims ----------------------------------------------------

SCRIBBLER = """
import mmap, os, random, struct, sys, time
from pmem_metrics.segment import segment_offset
path, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size)
whole = m[:]  # twelve devices: each burst of damage starts from here
index_off = struct.unpack_from("=Q", m, segment_offset("header.index_off"))[0]
slots_off = struct.unpack_from("=Q", m, segment_offset("header.slots_off"))[0]
slot_size, end = segment_offset("slot_size"), segment_offset("header.end")
used = 16  # the victims' devices, and a few more: where damage matters
regions = [(0, end), (index_off, index_off + 4 * used), (slots_off, slots_off + slot_size * used)]
writes = bursts = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    m[:] = whole
    bursts += 1
    for _ in range(rng.randrange(1, 6)):
        lo, hi = rng.choice(regions)
        at = rng.randrange(lo, hi - 7)
        kind = rng.randrange(4)
        if kind == 0:
            word = rng.getrandbits(64)  # anything
        elif kind == 1:
            word = rng.randrange(40)  # a plausible slot number, length, or count
        elif kind == 2:
            word = struct.unpack_from("<Q", m, rng.randrange(0, size - 7))[0]  # a copy
        else:
            word = rng.randrange(40) | rng.getrandbits(32) << 32  # a plausible low half
        struct.pack_into("<Q", m, at, word)
        writes += 1
        time.sleep(rng.random() / 500)  # the victims see each state a while
print(writes, bursts)
"""

VICTIM = dropping("""
import json, logging, os, random, sys, traceback
import pmem_metrics as p
from prometheus_client import CollectorRegistry, generate_latest
from pmem_metrics.prometheus import register

generate_latest(CollectorRegistry())  # whatever a scrape imports, imported
# DROP
logging.getLogger("pmem_metrics").setLevel(logging.CRITICAL)  # a segment down is expected
path, kind, stop = sys.argv[1], sys.argv[2], sys.argv[4]
seed, trust = int(sys.argv[3]), sys.argv[5] == "True"
rng = random.Random(seed)
IDS = [f"d{i}" for i in range(12)]
errors, unexpected = {}, {}
ops = downs = 0

def failed(e):
    name = type(e).__name__
    errors[name] = errors.get(name, 0) + 1
    if not isinstance(e, p.SegmentError) or isinstance(e, p.InvalidDriveIdError):
        unexpected.setdefault(name, traceback.format_exc())

if kind == "attach":
    p.attach(path, trust=trust)
    seg = p.Registry.default()
    prom = CollectorRegistry()
    register(prom)  # the default registry's collector: a failed read fails the scrape
else:
    seg = p.open_segment(path, readonly=kind == "readonly", create=False, trust=trust)
    prom = CollectorRegistry()
    register(prom, {"s": seg})  # a failed read marks the segment down
print("ready", flush=True)
while not os.path.exists(stop):
    ops += 1
    try:
        op = rng.randrange(4)
        if op == 0 and kind != "readonly":
            m = seg.alloc(rng.choice(IDS) if rng.randrange(20) else f"n{rng.randrange(99)}")
            m.cfg_fails.inc()
            m.queue_event_count.add(rng.randrange(1000))
        elif op == 1:
            seg.flush_metrics()
        elif op == 2:
            text = generate_latest(prom).decode()
            downs += 'pmem_segment_up{segment="s"} 0.0' in text
        else:
            seg.device_count()
    except Exception as e:
        failed(e)
print(json.dumps({"ops": ops, "downs": downs, "errors": errors, "unexpected": unexpected,
                  "uid": os.geteuid()}))
""")


def scribble_under_victims(seg: Path, trust: bool, user: int | None, seed: int) -> None:
    """Victims of every kind use *seg* while a scribbler writes words all over it."""
    stop = seg.parent / "stop"
    kinds = ["attach", "open", "open", "readonly"]
    victims = [
        subprocess.Popen(
            [sys.executable, "-c", VICTIM, str(seg), kind, str(seed + i), str(stop), str(trust)],
            cwd=seg.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PMEM_METRICS_SEGMENT_WAIT_MS": "2000", **user_env(user)},
        )
        for i, kind in enumerate(kinds)
    ]
    results = []
    try:
        for v in victims:  # each has its segment open before the first scribble
            assert v.stdout is not None
            assert v.stdout.readline() == "ready\n", v.communicate(timeout=BOUND_S)[1]
        scribbler = subprocess.run(
            [sys.executable, "-c", SCRIBBLER, str(seg), "3", str(seed)],
            capture_output=True, text=True, timeout=BOUND_S,
        )  # fmt: skip
        assert scribbler.returncode == 0, scribbler.stderr
        assert int(scribbler.stdout.split()[0]) > 0
        stop.touch()
        for kind, v in zip(kinds, victims):
            try:
                out, err = v.communicate(timeout=BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a victim ({kind}) hung: still running {BOUND_S} s after the stop")
            assert v.returncode >= 0, f"{kind} killed by {signal.Signals(-v.returncode).name}"
            assert v.returncode == 0, f"{kind}: {err}"
            results.append((kind, json.loads(out)))
    finally:
        for v in victims:
            v.kill()
            v.wait()
    for kind, r in results:
        assert r["uid"] == (os.geteuid() if user is None else user), r
        # Every error a SegmentError (InvalidDriveIdError never: every id is valid).
        assert r["unexpected"] == {}, (kind, r["errors"], *r["unexpected"].values())
        assert r["ops"] > 0, (kind, r)
        allowed = {
            "InvalidSegmentError", "SegmentFullError", "SegmentTimeoutError",
            "ReadOnlySegmentError",
        }  # fmt: skip
        assert set(r["errors"]) <= allowed, (kind, r["errors"])
        if kind == "readonly":  # a read-only segment refuses every flush, whatever its state
            assert r["errors"].get("ReadOnlySegmentError", 0) > 0, r


@pytest.mark.heavy
def test_victims_survive_a_scribbler_with_segment_errors_only(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    made = open_segment(seg, capacity=64)
    for i in range(12):
        made.alloc(f"d{i}")
    scribble_under_victims(seg, trust=False, user=None, seed=1)


@pytest.mark.heavy
@as_root
def test_victims_of_another_user_survive_a_root_scribbler(shared_dir: Path) -> None:
    seg = shared_dir / "seg"
    make(seg, 12, 64)
    for f in (seg, lock_file(seg)):  # its writers need its lock file too
        os.chown(f, 0, NOBODY)
        f.chmod(0o660)  # the victims' group may write it; it is root's, so they must trust it
    scribble_under_victims(seg, trust=True, user=NOBODY, seed=2)


# ---- 2. Whose segment ------------------------------------------------------------------


@as_root
def test_another_users_segment_is_refused_unless_trusted(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    make(seg, 1, 16, add=3, name="theirs")
    for f in (seg, lock_file(seg)):
        os.chown(f, NOBODY, NOBODY)
    with pytest.raises(p.UntrustedSegmentError) as e:
        open_segment(seg)
    assert e.value.errno == errno.EPERM and e.value.filename == str(seg)
    assert isinstance(e.value, PermissionError)
    out = py(
        """
import sys, pmem_metrics as p
try:
    p.attach(sys.argv[1])
except p.UntrustedSegmentError as e:
    print(e.filename == sys.argv[1], p.is_shared())
p2 = p.open_segment(sys.argv[1], trust=True)
print(p2.alloc("theirs0").cfg_fails.count())
""",
        tmp_path,
        str(seg),
    )
    assert out.split() == ["True", "False", "3"]
    out = py(
        "import sys, pmem_metrics as p; p.attach(sys.argv[1], trust=True);"
        "print(p.PmemMetricsPerDevice.alloc('theirs0').cfg_fails.count(), p.is_shared())",
        tmp_path,
        str(seg),
    )
    assert out.split() == ["3", "True"]
    # A read-only open is not refused another user's segment: it cannot be harmed by it.
    assert open_segment(seg, readonly=True).device_count() == 1


def test_a_segment_others_may_write_is_refused_even_to_its_owner(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    make(seg, 1, 16, add=2, name="x")
    seg.chmod(0o666)
    for readonly in (False, True):
        with pytest.raises(p.UntrustedSegmentError) as e:
            open_segment(seg, readonly=readonly)
        assert e.value.errno == errno.EPERM and e.value.filename == str(seg)
    out = py(
        """
import sys, pmem_metrics as p
try:
    p.attach(sys.argv[1])
except p.UntrustedSegmentError as e:
    print(e.filename == sys.argv[1])
""",
        tmp_path,
        str(seg),
    )
    assert out == "True\n"
    assert open_segment(seg, trust=True).alloc("x0").cfg_fails.count() == 2


def test_a_segment_created_for_others_to_write_is_refused_before_it_exists(
    tmp_path: Path,
) -> None:
    """Creating a segment that opening would refuse is refused first: nothing left behind."""
    seg = tmp_path / "seg"
    out = py(
        """
import os, sys, pmem_metrics as p
for call in (p.open_segment, p.attach):
    try:
        call(sys.argv[1], mode=0o666)
    except ValueError as e:
        print(type(e).__name__, os.path.exists(sys.argv[1]))
print(p.is_shared())
""",
        tmp_path,
        str(seg),
    )
    assert out.splitlines() == ["ValueError False", "ValueError False", "False"]
    trusted = open_segment(seg, mode=0o666, trust=True)  # said so: made, and used
    assert trusted.device_count() == 0 and seg.stat().st_mode & 0o777 == 0o666


@as_root
def test_a_group_member_scrapes_a_0640_segment_read_only(shared_dir: Path) -> None:
    seg = shared_dir / "seg"
    make(seg, 1, 16, add=4, name="drv")
    os.chown(seg, 0, NOBODY)
    seg.chmod(0o640)
    out = py(
        dropping("""
import errno, os, sys, pmem_metrics as p
from prometheus_client import CollectorRegistry, generate_latest
from pmem_metrics.prometheus import register
generate_latest(CollectorRegistry())
# DROP
print(os.geteuid())
seg = p.open_segment(sys.argv[1], readonly=True)
prom = CollectorRegistry()
register(prom, {"s": seg})
print(seg.readonly, seg.device_count())
print(generate_latest(prom).decode())
try:
    seg.flush_metrics()
except p.ReadOnlySegmentError as e:
    print("flush", errno.errorcode[e.errno])
try:
    p.open_segment(sys.argv[1])  # for writing: the group may only read
except p.SegmentError as e:
    print("write", errno.errorcode[e.errno])
"""),
        shared_dir,
        str(seg),
        user=NOBODY,
    )
    lines = out.splitlines()
    assert lines[:2] == [str(NOBODY), "True 1"]
    assert 'pmem_cfg_fails_total{drive_id="drv0",segment="s"} 4.0' in lines
    assert 'pmem_segment_up{segment="s"} 1.0' in lines
    assert lines[-2:] == ["flush EROFS", "write EACCES"]


@pytest.mark.parametrize("mode", [0, 0o400, 0o200, 0o1600])
def test_a_mode_the_owner_cannot_use_is_a_value_error_and_creates_nothing(
    tmp_path: Path, mode: int
) -> None:
    out = py(
        f"""
import os, sys, pmem_metrics as p
for call in (p.attach, p.open_segment):
    try:
        call(sys.argv[1], mode={mode})
    except ValueError as e:
        print(type(e).__name__, "mode" in str(e))
print(os.listdir("."), p.is_shared())
""",
        tmp_path,
        str(tmp_path / "seg"),
    )
    assert out.splitlines() == ["ValueError True", "ValueError True", "[] False"]


def absurd_capacity() -> int:
    """A capacity whose segment is absurd here: larger than memory, else than a quarter of it."""
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    per_device = SLOT_SIZE + 4
    beyond_memory = total // per_device + 1
    if beyond_memory <= MAX_CAPACITY:
        return beyond_memory
    if MAX_CAPACITY * per_device <= total // 4:  # a machine with more than 43 GB
        pytest.skip(f"{MAX_CAPACITY} devices fit in a quarter of this machine's memory")
    return MAX_CAPACITY


def test_an_absurd_capacity_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    capacity = absurd_capacity()
    # Should the library try to create it anyway, a file-size limit stops it
    # with SIGXFSZ before it fills the disk: the child then dies by that signal.
    proc = subprocess.run(
        [sys.executable, "-c", f"""
import errno, resource, signal, sys, pmem_metrics as p
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 26, 1 << 26))
for call in (p.open_segment, p.attach):
    try:
        call(sys.argv[1], capacity={capacity})
    except p.SegmentError as e:
        print(errno.errorcode[e.errno], e.filename == sys.argv[1])
""", str(tmp_path / "seg")],
        cwd=tmp_path, capture_output=True, text=True, timeout=BOUND_S,
    )  # fmt: skip
    assert proc.returncode != -signal.SIGXFSZ, f"tried to create a segment of {capacity} devices"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["EFBIG True", "EFBIG True"]
    assert os.listdir(tmp_path) == []


# ---- 3. attach() racing the first calls, then fork() -----------------------------------

ATTACH_RACE = """
import errno, json, os, random, sys, threading
import pmem_metrics as p
from prometheus_client import CollectorRegistry, generate_latest
from pmem_metrics.prometheus import register

path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
IDS = ["a", "b", "c"]
prom = CollectorRegistry()
register(prom)
spins = [rng.randrange(3000) for _ in range(6)]
start = threading.Barrier(6)
out = {"attach": None, "errors": []}
handles = {i: [] for i in IDS}

def run(k, work):
    start.wait()
    for _ in range(spins[k]):
        pass
    try:
        work()
    except Exception as e:
        out["errors"].append(repr(e))

def attacher():
    try:
        p.attach(path)
        out["attach"] = "attached"
    except p.SegmentError as e:
        out["attach"] = errno.errorcode[e.errno]

def allocer():
    for i in IDS:
        m = p.PmemMetricsPerDevice.alloc(i)
        m.cfg_fails.inc()
        handles[i].append(m)

works = [attacher, allocer, allocer, p.flush_metrics, lambda: generate_latest(prom), p.device_count]
threads = [threading.Thread(target=run, args=(k, w)) for k, w in enumerate(works)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["shared"] = p.is_shared()
out["equal"] = all(h == handles[i][0] == p.PmemMetricsPerDevice.alloc(i)
                   for i in IDS for h in handles[i])
out["devices"] = p.device_count()
pid = os.fork()
if pid == 0:
    try:
        for i in IDS:
            p.PmemMetricsPerDevice.alloc(i).event_fails.inc()
        p.flush_metrics()
        code = 0 if p.is_shared() == out["shared"] else 2
    except BaseException:
        code = 1
    os._exit(code)
_, status = os.waitpid(pid, 0)
out["child"] = os.waitstatus_to_exitcode(status)
out["counts"] = {i: [p.PmemMetricsPerDevice.alloc(i).cfg_fails.count(),
                     p.PmemMetricsPerDevice.alloc(i).event_fails.count()] for i in IDS}
print(json.dumps(out))
"""


@pytest.mark.heavy
def test_attach_racing_the_first_calls_has_exactly_one_outcome(tmp_path: Path) -> None:
    rounds = 12
    outcomes = []
    for batch in range(rounds // 4):  # four processes at a time, each a fresh round
        procs = []
        for k in range(4):
            seg = tmp_path / f"seg{batch}-{k}"
            procs.append((seg, subprocess.Popen(
                [sys.executable, "-c", ATTACH_RACE, str(seg), str(batch * 4 + k)],
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )))  # fmt: skip
        for seg, proc in procs:
            try:
                out, err = proc.communicate(timeout=BOUND_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"a round hung (or its forked child did): {proc.communicate()}")
            assert proc.returncode == 0, err
            r = json.loads(out)
            outcomes.append(r["attach"])
            assert r["errors"] == [], r
            assert r["child"] == 0, r  # the forked child worked, in the same kind of registry
            assert r["equal"], r  # one id, one device: every handle equal
            assert r["devices"] == 3, r
            if r["attach"] == "attached":
                assert r["shared"], r
                # Every device is the segment's, and the child's increments are in it.
                assert r["counts"] == {i: [2, 1] for i in "abc"}, r
                assert open_segment(seg).device_count() == 3
            else:
                assert r["attach"] == "EBUSY" and not r["shared"], r
                assert r["counts"] == {i: [2, 0] for i in "abc"}, r  # the child counted apart
                assert not seg.exists()  # nothing was created for an attach that lost
    assert set(outcomes) <= {"attached", "EBUSY"}


# ---- 4. A segment removed or replaced under a process ----------------------------------


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_replaced_segment_is_estale_and_never_mixed_with_the_new(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "seg"
    old = open_segment(path)
    mine = old.alloc("drv0")
    mine.cfg_fails.add(5)
    if how == "removed":  # removed, then created again by another process
        path.unlink()
        make(path, 1, 16, add=7, name="drv", first=1)
    else:  # another segment renamed over it
        make(tmp_path / "new", 1, 16, add=7, name="drv", first=1)
        os.replace(tmp_path / "new", path)
    for call in (old.flush_metrics, old.flush_metrics_json):
        with pytest.raises(p.SegmentReplacedError) as e:
            call()
        assert e.value.errno == errno.ESTALE and e.value.filename == str(path)
    prom = CollectorRegistry()
    register(prom, {"old": old})
    text = generate_latest(prom).decode()
    assert 'pmem_segment_up{segment="old"} 0.0' in text
    assert "drive_id" not in text  # nothing of either file under the old registry
    mine.cfg_fails.add(1)  # the old file still counts, for whoever has it open
    new = open_segment(path)
    assert new != old
    flushed = strict_json(new.flush_metrics_json())
    assert list(flushed) == ["pmem_drv1", "pmem"]
    assert flushed["pmem"]["cfg_fails"] == 7
    assert new.alloc("drv0").cfg_fails.count() == 0 and mine.cfg_fails.count() == 6


def test_an_attached_process_learns_its_segment_was_replaced(tmp_path: Path) -> None:
    out = py(
        """
import json, os, sys, pmem_metrics as p
path = sys.argv[1]
p.attach(path)
p.PmemMetricsPerDevice.alloc("drv0").cfg_fails.add(5)
os.remove(path)
p.open_segment(path).alloc("drv1").cfg_fails.add(7)  # a new segment, opened beside it
try:
    p.flush_metrics()
except p.SegmentReplacedError as e:
    print("flush", e.filename == path)
try:
    p.METRICS.init(os.devnull)
    p.METRICS.write()
except p.SegmentReplacedError as e:
    print("write", e.filename == path)
new = p.open_segment(path)
print(new == p.Registry.default(), json.dumps(new.flush_metrics()["pmem"]))
""",
        tmp_path,
        str(tmp_path / "seg"),
    )
    lines = out.splitlines()
    assert lines[:2] == ["flush True", "write True"]
    assert lines[2].startswith("False ") and json.loads(lines[2][6:])["cfg_fails"] == 7


# ---- 5. A segment truncated under a read-only scrape -----------------------------------


def scrape(reg: p.Registry) -> str:
    prom = CollectorRegistry()
    register(prom, {"s": reg})
    return generate_latest(prom).decode()


def test_a_truncated_segment_is_down_for_a_read_only_scrape(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    make(path, 5, 16)
    whole = path.read_bytes()
    h = header(path)
    reader = open_segment(path, readonly=True)
    assert 'pmem_cfg_fails_total{drive_id="d4",segment="s"} 5.0' in scrape(reader)
    # Each cut loses something a scrape of five devices reads: the header's count,
    # the index, a slot's counters or id.
    cuts = [0, 8, OFF_USED + 4, h["index_off"] + 6, h["slots_off"], h["slots_off"] + 700,
            h["slots_off"] + 4 * SLOT_SIZE + SLOT_ID]  # fmt: skip
    for cut in cuts:
        os.truncate(path, cut)
        assert 'pmem_segment_up{segment="s"} 0.0' in scrape(reader), cut
        if cut < OFF_USED + 8:  # the number of devices itself is gone
            with pytest.raises(p.InvalidSegmentError) as e:
                reader.device_count()
            assert e.value.filename == str(path)
        path.write_bytes(whole)  # the same file again, whole
        assert 'pmem_segment_up{segment="s"} 1.0' in scrape(reader), cut


TRUNCATED_SCRAPER = """
import logging, os, sys, pmem_metrics as p
from prometheus_client import CollectorRegistry, generate_latest
from pmem_metrics.prometheus import register
logging.getLogger("pmem_metrics").setLevel(logging.CRITICAL)
seg = p.open_segment(sys.argv[1], readonly=True)
prom = CollectorRegistry()
register(prom, {"s": seg})
print("ready", flush=True)
up = down = 0
other = []
while not os.path.exists(sys.argv[2]):
    text = generate_latest(prom).decode()
    up += 'pmem_segment_up{segment="s"} 1.0' in text
    down += 'pmem_segment_up{segment="s"} 0.0' in text
    try:
        seg.device_count()
    except Exception as e:
        if not isinstance(e, p.InvalidSegmentError):
            other.append(repr(e))
final = 'pmem_segment_up{segment="s"} 1.0' in generate_latest(prom).decode()
print(final, up, down, other)
"""


def test_a_read_only_scraper_survives_truncation_under_it(tmp_path: Path) -> None:
    path, stop = tmp_path / "seg", tmp_path / "stop"
    make(path, 40, 64)
    whole = path.read_bytes()
    scraper = subprocess.Popen(
        [sys.executable, "-c", TRUNCATED_SCRAPER, str(path), str(stop)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert scraper.stdout is not None and scraper.stdout.readline() == "ready\n"
        rng = random.Random(3)
        fd = os.open(path, os.O_RDWR)
        try:
            for _ in range(400):
                os.ftruncate(fd, rng.randrange(len(whole)))
                os.pwrite(fd, whole, 0)  # whole again, for the next cut
        finally:
            os.close(fd)
        stop.touch()
        try:
            out, err = scraper.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the scraper hung")
    finally:
        scraper.kill()
        scraper.wait()
    assert scraper.returncode == 0, (scraper.returncode, err)  # never SIGBUS
    final, _, _, other = out.split(" ", 3)
    assert other.strip() == "[]", other
    assert final == "True"  # whole again: read again


# ---- 6. A damaged index ----------------------------------------------------------------

ORDER = [3, 0, 5, 1, 4, 2]  # allocation order: slot numbers differ from index positions


def damaged(path: Path, damage: tuple[str, int, int, int]) -> list[str]:
    """Make a segment, damage its index as *damage* says, use it; the problems found."""
    kind, i, a, b = damage
    seg = open_segment(path, capacity=16)
    ids = [f"d{k}" for k in ORDER]
    handles = {d: seg.alloc(d) for d in ids}
    expected = {d: 0 for d in ids}
    for n, d in enumerate(ids):
        handles[d].cfg_fails.add(n + 1)
        expected[d] += n + 1
    index_off = header(path)["index_off"]
    fd = os.open(path, os.O_RDWR)
    try:
        if kind == "flip":  # byte a of entry i, xor b
            at = index_off + 4 * i + a
            os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ b]), at)
        else:  # entry i a copy of entry a
            os.pwrite(fd, os.pread(fd, 4, index_off + 4 * a), index_off + 4 * i)
    finally:
        os.close(fd)
    problems: list[str] = []
    reported = {d: 0 for d in ids}
    for rnd in range(3):
        try:
            for n, d in enumerate(ids):  # a process finding its devices again
                # Behind a damaged index the search can miss an id and give it a
                # second slot: allowed, as long as both count as that one device.
                h = seg.alloc(d)
                h.cfg_fails.add(n + 10)
                expected[d] += n + 10
            new = f"e{rnd}"  # and adding one
            seg.alloc(new).cfg_fails.add(1)
            expected[new] = reported[new] = 0
            expected[new] += 1
            flushed = strict_json(seg.flush_metrics_json())
            text = scrape(seg)
        except (p.PmemMetricsError, AssertionError) as e:
            return [*problems, f"round {rnd}: {type(e).__name__}: {e}"]
        for key, fields in flushed.items():
            if any(v >= 1 << 63 for v in fields.values()):
                problems.append(f"round {rnd}: a wrapped count: {key} {fields}")
            if key != "pmem":
                reported[key[5:]] = reported.get(key[5:], 0) + fields["cfg_fails"]
        for d in expected:
            if text.count(f'pmem_cfg_fails_total{{drive_id="{d}",') != 1:
                problems.append(f"round {rnd}: scrape lists {d!r} other than once")
    if reported != expected:
        problems.append(f"totals: reported {reported}, counted {expected}")
    return problems


def assert_no_damage(tmp_path: Path, cases: list[tuple[str, int, int, int]]) -> None:
    """Each damage in *cases* on a segment of its own: no problem found in any."""
    failures = {}
    for n, case in enumerate(cases):
        problems = damaged(tmp_path / f"seg{n}", case)
        if problems:
            failures[case] = problems
    assert not failures, f"{len(failures)} of {len(cases)} damaged: {list(failures.items())[:3]}"


def test_a_flipped_byte_in_the_index_never_doubles_or_loses_a_count(tmp_path: Path) -> None:
    cases = [("flip", i, 0, mask) for i in range(6) for mask in (1, 2, 4, 8, 0x80, 0xFF)]
    cases += [("flip", i, byte, mask) for i in range(6) for byte in (1, 3) for mask in (1, 0x80)]
    assert_no_damage(tmp_path, cases)


def test_a_duplicated_index_entry_never_doubles_or_loses_a_count(tmp_path: Path) -> None:
    cases = [("dup", i, j, 0) for i in range(6) for j in range(6) if i != j]
    assert_no_damage(tmp_path, cases)
