"""docs/segment-format.md is enough to read a segment: a reader written from it alone agrees.

``segment_reader.read_segment()`` (tests/segment_reader.py, no pmem_metrics
import) is compared with the library's ``Registry.read()``: on segments the
library made, with the default four fields and with a six-field build (the
reader takes the names from the file); on segments scribbled on, where it
must fail cleanly or give the library's answer; on truncated files.

The library's read-only reads run in a helper process of their own
(``Library``): every segment opened stays open for the life of its process,
and a process that opens a file of an inode number it saw before (a
removed file's, reused) gets that old registry back, so the helper is
restarted now and then and no file it read is removed while it runs.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pmem_metrics as p
from pmem_metrics._binding import lib
from pmem_metrics.segment import segment_offset

from . import segment_reader as reader
from .segment_reader import Counts, SegmentFormatError, read_segment

FUZZ = settings(
    max_examples=int(os.environ.get("PMEM_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Makes a segment at argv[1] of capacity argv[2] with whatever fields the build has, and
# prints them and what the library reads back (writable and read-only, counts and diffs).
MAKE = r"""
import json, sys
import pmem_metrics as p

path, capacity = sys.argv[1], int(sys.argv[2])
r = p.open_segment(path, capacity=capacity)
F = p.FIELDS
ids = [f"drv{i}" for i in range(12)]
ids += ["\u00e9-\u00fc", "\u65e5\u672c", "\U0001F600" * 64, "a" * 64, "Z", "drv1 0", "~"]
for k, i in enumerate(ids):
    m = r.alloc(i)
    for f, name in enumerate(F):
        getattr(m, name).add((k + 1) * (f + 3))
del m
wrap = r.alloc("wrap")
getattr(wrap, F[-1]).add(2**64 - 5)
r.retire("drv3")                      # retired, then flushed: drained, its slot room
r.flush_metrics()
getattr(wrap, F[-1]).add(9)           # the count wraps; its diff does not
r.retire("drv4")                      # retired, not flushed yet: a scrape still shows it
r.retire("drv5"); r.alloc("drv5")     # revived: the same device again
for i in range(3):
    getattr(r.alloc(f"late{i}"), F[0]).add(i + 1)  # past a chunk; one may reuse drv3's slot
print(json.dumps({
    "fields": list(F),
    "read": r.read(),
    "pending": r.read(pending=True),
    "readonly": p.open_segment(path, readonly=True).read(),
}))
"""

# The library's read-only read of each path on stdin, one JSON line each.
ORACLE = r"""
import json, sys
import pmem_metrics as p

for line in sys.stdin:
    try:
        out = {"ok": p.open_segment(line[:-1], readonly=True).read()}
    except (ValueError, OSError) as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""

Answer = Union[Counts, str]  # what a read gave: the counts, or why it failed


def run_make(cwd: Path, path: Path, capacity: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", MAKE, str(path), str(capacity)],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result


def same(a: Answer, b: Answer) -> bool:
    """Equal answers: the same ids in the same order with the same counts, or both failures."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str)
    return a == b and list(a) == list(b) and all(list(a[i]) == list(b[i]) for i in a)


def ours(path: Path) -> Answer:
    try:
        return read_segment(path)
    except SegmentFormatError as e:
        return f"SegmentFormatError: {e}"


class Library:
    """The library's read-only ``read()`` of a path, in a helper process (cwd: which build)."""

    RESTART = 256  # reads per helper process: each one's segments stay open in it

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.reads = 0

    def read(self, path: Path) -> Answer:
        if self.proc is None or self.reads >= self.RESTART:
            self.close()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", ORACLE], cwd=self.cwd, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            self.reads = 0
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        self.reads += 1
        line = self.proc.stdout.readline()
        assert line, "the library's reader died"
        out = json.loads(line)
        return out["ok"] if "ok" in out else str(out["error"])

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    lib_reader = Library(tmp_path_factory.mktemp("oracle"))  # never the source tree
    yield lib_reader
    lib_reader.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 4-field segment the library made (capacity 24: two chunks), and what it read back."""
    d = tmp_path_factory.mktemp("made")
    seg = d / "seg"
    return seg, run_make(d, seg, 24)


_copies = itertools.count()


def damaged(src: Path, d: Path, writes: list[tuple[int, bytes]], size: int | None = None) -> Path:
    """A new file (a new inode) with *src*'s bytes, *writes* applied, cut to *size*."""
    data = bytearray(src.read_bytes())
    for at, b in writes:
        data[at : at + len(b)] = b
    if size is not None:
        del data[size:]
    out = d / f"copy{next(_copies)}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return out


def header_word(path: Path, name: str) -> int:
    with open(path, "rb") as f:
        raw = f.read(segment_offset("header.end"))
    at = segment_offset(f"header.{name}")
    word = "=I" if at < segment_offset("header.capacity") else "=Q"  # the first four are u32
    return int(struct.unpack_from(word, raw, at)[0])


def is_valid_id(drive_id: str) -> bool:
    raw = drive_id.encode("utf-8", "surrogatepass")
    return bool(lib.pmem_metrics_id_check(raw, len(raw)) == 0)  # PMEM_METRICS_ID_OK


# ---- The document's numbers are the build's ----------------------------------------------


def test_the_documents_constants_are_this_builds() -> None:
    words = ["magic", *reader.HEADER_WORDS]
    offsets = [0, *range(8, 24, 4), *range(24, reader.HEADER_SIZE, 8)]
    assert [segment_offset(f"header.{w}") for w in words] == offsets
    assert segment_offset("header.end") == reader.HEADER_SIZE
    assert (reader.OFF_USED, reader.OFF_HIGH) == (offsets[-4], offsets[-3])
    n = segment_offset("nfields")
    assert segment_offset("slot.published") == 64 * n
    assert segment_offset("slot.id") == 64 * n + reader.TAIL
    assert segment_offset("slot_size") == reader.layout(1, n, 0)["slot_size"]
    assert segment_offset("entry.size") == 8 + 8 * n
    assert (segment_offset("version"), segment_offset("claims")) == (reader.VERSION, reader.CLAIMS)
    assert segment_offset("id_max_bytes") == reader.ID_MAX_BYTES
    assert segment_offset("max_capacity") == reader.MAX_CAPACITY
    assert (segment_offset("state.live"), segment_offset("state.retired")) == (
        reader.LIVE,
        reader.RETIRED,
    )
    assert segment_offset("claim_active") == 0x434C41494D414354  # "CLAIMACT"


# ---- Segments the library made ------------------------------------------------------------


def test_the_reader_agrees_with_the_library(made: tuple[Path, dict[str, Any]]) -> None:
    seg, lib_read = made
    assert lib_read["fields"] == list(p.FIELDS)
    got = read_segment(seg)
    for key in ("read", "readonly"):
        assert same(got, lib_read[key]), key
    assert same(read_segment(seg, pending=True), lib_read["pending"])
    assert "drv3" not in got and "drv4" in got and "drv5" in got  # drained, retired, revived
    assert got["wrap"][p.FIELDS[-1]] == 4  # 2**64 - 5 + 9, modulo 2**64
    assert reader.layout(24, len(p.FIELDS), header_word(seg, "fields_size"))["size"] == (
        seg.stat().st_size
    )


def test_the_reader_takes_the_fields_from_the_segment(v116_build: Path, tmp_path: Path) -> None:
    seg = tmp_path / "seg6"
    lib_read = run_make(v116_build, seg, 40)
    fields = lib_read["fields"]
    assert fields == [*p.FIELDS, "rate_limiter_event_count", "rate_limiter_throttled_events"]
    got = read_segment(seg)
    for key in ("read", "readonly"):
        assert same(got, lib_read[key]), key
    assert same(read_segment(seg, pending=True), lib_read["pending"])
    assert got["drv0"]["rate_limiter_throttled_events"] == 8  # (0 + 1) * (5 + 3)
    assert header_word(seg, "nfields") == 6
    # This (four-field) build reads it with the segment's own fields, as the reader does;
    # as a writer it refuses it: a segment is written by one field set.
    assert same(got, p.open_segment(seg, readonly=True).read())
    with pytest.raises(p.InvalidSegmentError):
        p.open_segment(seg, create=False)


def test_a_retired_device_leaves_a_scrape_after_its_grace_period(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    seg, _ = made
    assert "drv4" in read_segment(seg)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000
    slot_size, slots_off = header_word(seg, "slot_size"), header_word(seg, "slots_off")
    index_off, used = header_word(seg, "index_off"), header_word(seg, "used")
    index = struct.unpack_from(f"={used}I", seg.read_bytes(), index_off)
    at = segment_offset("slot.retired_ms")
    for age, shown in ((60_000, True), (reader.DEFAULT_GRACE_MS + 60_000, False)):
        # Every retired device's retirement moved back by `age`.
        writes = [
            (slots_off + s * slot_size + at, struct.pack("=Q", now - age)) for s in index
        ]  # fmt: skip
        copy = damaged(seg, tmp_path, writes)
        got = read_segment(copy)
        assert ("drv4" in got) is shown
        assert "drv5" in got  # live: retired_ms means nothing
        assert same(got, library.read(copy))


# ---- Segments scribbled on -----------------------------------------------------------------


def u64(v: int) -> bytes:
    return struct.pack("=Q", v & reader.U64)


def counter_damage(high: int, nfields: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Writes of any u64 to counter words: (word number among the first *high* slots', value)."""
    value = st.one_of(st.sampled_from([0, 1, reader.U64]), st.integers(0, reader.U64))
    return st.lists(
        st.tuples(st.integers(0, 2 * nfields * high - 1), value), min_size=1, max_size=4
    )


def test_counter_damage_reads_exactly_as_the_library(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    seg, _ = made
    high, slot_size = header_word(seg, "high"), header_word(seg, "slot_size")
    slots_off, size = header_word(seg, "slots_off"), seg.stat().st_size

    nfields, old = len(p.FIELDS), segment_offset("counter.old")

    def at(word: int) -> int:  # slot, then field, then current or old
        s, f = divmod(word // 2, nfields)
        return slots_off + s * slot_size + 64 * f + (old if word % 2 else 0)

    @FUZZ
    @given(counter_damage(high, nfields))
    def check(writes: list[tuple[int, int]]) -> None:
        copy = damaged(seg, tmp_path, [(at(word), u64(v)) for word, v in writes])
        got = read_segment(copy)  # counts are any u64: never an error
        assert same(got, library.read(copy))
        assert copy.stat().st_size == size

    check()


def regions(seg: Path) -> list[tuple[int, int]]:
    """[start, end) of the parts of *seg* worth aiming at, the whole file last."""
    w = {k: header_word(seg, k) for k in ("index_off", "slots_off", "slot_size", "high")}
    used, cap, tail = header_word(seg, "used"), header_word(seg, "capacity"), 64 * len(p.FIELDS)
    slot_tails = [
        (w["slots_off"] + s * w["slot_size"] + tail, w["slots_off"] + (s + 1) * w["slot_size"])
        for s in range(min(w["high"] + 1, cap))
    ]
    claims = header_word(seg, "claims_off")
    return [
        (0, segment_offset("header.end")),
        (w["index_off"], w["index_off"] + 4 * (used + 1)),
        (w["index_off"], w["index_off"] + 4 * cap),
        *slot_tails,
        (claims, claims + 4 * header_word(seg, "claim_size")),
        (0, seg.stat().st_size),
    ]


WORDS = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 23, 24, 25, 256, 257, 1 << 31])


@st.composite
def any_damage(draw: st.DrawFn, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """Writes anywhere: small numbers as aligned words where it counts, or any bytes."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(spans))
        at = draw(st.integers(start, end - 1))
        kind = draw(st.sampled_from(["u32", "u64", "bytes"]))
        if kind == "bytes":
            b = draw(st.binary(min_size=1, max_size=8))
        else:
            v = draw(st.one_of(WORDS, st.integers(0, reader.U64)))
            at -= at % 4 if kind == "u32" else at % 8
            b = struct.pack("=I", v & 0xFFFFFFFF) if kind == "u32" else u64(v)
        out.append((at, b[: end - at] if at + len(b) > end else b))
    return out


def test_damage_anywhere_is_a_clean_error_or_the_librarys_answer(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    """Never another exception; only valid ids; the library's answer unless the field list changed.

    The library refuses a field list that is not its own, byte for byte;
    this reader reads any well-formed one, so there the two may differ.
    """
    seg, _ = made
    fields_off = header_word(seg, "fields_off")
    fields_end = fields_off + header_word(seg, "fields_size")

    @FUZZ
    @given(any_damage(regions(seg)))
    def check(writes: list[tuple[int, bytes]]) -> None:
        copy = damaged(seg, tmp_path, writes)
        got = ours(copy)
        if not isinstance(got, str):
            assert all(is_valid_id(i) for i in got)
            assert all(0 <= v <= reader.U64 for row in got.values() for v in row.values())
        if all(at + len(b) <= fields_off or at >= fields_end for at, b in writes):
            theirs = library.read(copy)
            assert same(got, theirs), (got, theirs)

    check()


def test_a_truncated_segment_is_a_clean_error(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    seg, _ = made
    size = seg.stat().st_size

    @FUZZ
    @given(st.one_of(st.integers(0, size - 1), st.sampled_from([0, 8, 135, 136, size - 1])))
    def check(keep: int) -> None:
        copy = damaged(seg, tmp_path, [], size=keep)
        with pytest.raises(SegmentFormatError):
            read_segment(copy)
        assert isinstance(library.read(copy), str)

    check()


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(reader.MAGIC.__add__)))
def test_arbitrary_bytes_are_a_clean_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "arbitrary"
    path.write_bytes(data)
    with pytest.raises(SegmentFormatError):
        read_segment(path)


def test_a_header_over_random_bytes_never_crashes(
    made: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The real header and field list, then random bytes for the index, slots and claims."""
    seg, _ = made
    keep, size = header_word(seg, "index_off"), seg.stat().st_size

    @FUZZ
    @given(st.integers(0, 2**64))
    def check(seed: int) -> None:
        tail = random.Random(seed).randbytes(size - keep)
        copy = damaged(seg, tmp_path, [(keep, tail)])
        got = ours(copy)
        assert isinstance(got, str) or all(is_valid_id(i) for i in got)

    check()


def test_the_reader_needs_only_the_data_file_and_read_permission(
    made: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    seg, lib_read = made
    copy = damaged(seg, tmp_path, [])
    copy.chmod(0o400)
    assert not Path(f"{copy}.lock").exists()
    assert same(read_segment(copy), lib_read["read"])
    assert not Path(f"{copy}.lock").exists()


def test_a_bad_index_is_sorted_around_and_one_id_in_two_slots_is_one_device(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    seg, lib_read = made
    used, index_off = header_word(seg, "used"), header_word(seg, "index_off")
    slot_size, slots_off = header_word(seg, "slot_size"), header_word(seg, "slots_off")
    index = struct.unpack_from(f"={used}I", seg.read_bytes(), index_off)

    # Reversed, and with an entry twice: the slots are sorted instead, to the same answer.
    for entries in (index[::-1], (index[1], *index[1:])):
        copy = damaged(seg, tmp_path, [(index_off, struct.pack(f"={used}I", *entries))])
        assert same(read_segment(copy), lib_read["read"])
        assert same(library.read(copy), lib_read["read"])

    # "drv10"'s slot renamed "drv11": one device, the sum of both slots' counts.
    data = seg.read_bytes()
    slot_id = segment_offset("slot.id")
    renamed = next(
        slots_off + s * slot_size + slot_id
        for s in index
        if data[slots_off + s * slot_size + slot_id :].startswith(b"drv10\0")
    )
    copy = damaged(seg, tmp_path, [(renamed, b"drv11")])
    got = read_segment(copy)
    want = dict(lib_read["read"])
    gone = want.pop("drv10")
    want["drv11"] = {f: want["drv11"][f] + gone[f] for f in p.FIELDS}
    assert same(got, want)
    assert same(library.read(copy), want)


def big_endian(seg: Path, out: Path) -> None:
    """*seg* (little-endian) with every integer the document lists stored big-endian."""
    data = bytearray(seg.read_bytes())
    h = {k: header_word(seg, k) for k in ("capacity", "slots_off", "slot_size", "claims_off")}
    n, cap = len(p.FIELDS), h["capacity"]

    def swap(at: int, fmt: str) -> None:
        size = struct.calcsize("<" + fmt)
        data[at : at + size] = struct.pack(">" + fmt, *struct.unpack_from("<" + fmt, data, at))

    swap(8, "4I14Q")
    swap(header_word(seg, "index_off"), f"{cap}I")
    for s in range(cap):
        at = h["slots_off"] + s * h["slot_size"]
        for f in range(n):
            swap(at + 64 * f, "2Q")
        swap(at + 64 * n, "6IQ")
    for k in range(reader.CLAIMS):
        at = h["claims_off"] + k * header_word(seg, "claim_size")
        swap(at, "3Q")
        for i in range(cap):
            swap(at + 24 + i * (8 + 8 * n), f"2I{n}Q")
    out.write_bytes(data)


@pytest.mark.skipif(sys.byteorder != "little", reason="made by a little-endian host")
def test_a_big_endian_segment_reads_the_same(
    made: tuple[Path, dict[str, Any]], library: Library, tmp_path: Path
) -> None:
    """The byte_order word says how to read every integer; the library reads only its own."""
    seg, lib_read = made
    be = tmp_path / "big-endian"
    big_endian(seg, be)
    assert be.read_bytes()[12:16] == bytes([1, 2, 3, 4])
    assert same(read_segment(be), lib_read["read"])
    assert isinstance(library.read(be), str)
