"""A segment reader written from docs/segment-format.md alone: no pmem_metrics import.

It reads a segment the way the document says a reader must -- the data file
only, read-only, no lock, every value read once -- and returns what the
library's ``Registry.read()`` returns for it: ``{drive_id: {field: count}}``
for the devices a scrape shows (live ones, and retired ones within the grace
period after their retirement), in id order, the field names taken from the
segment's own field list.  A file that fails any check of the document's
"What a reader must check" raises :class:`SegmentFormatError`; nothing else
the file's bytes can do makes it raise anything else.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import time

MAGIC = b"PMEMSEG\0"
VERSION = 4
BYTE_ORDER = 0x01020304
HEADER_SIZE = 136
MAX_FIELDS = 64
MAX_FIELDS_SIZE = 1 << 16
MAX_CAPACITY = 1 << 24
ID_MAX_BYTES = 256
ID_MAX_CHARS = 64
CLAIMS = 4
TAIL = 32  # the slot's tail, after its counters; the id follows it
DEFAULT_GRACE_MS = 300_000
MAX_GRACE_MS = 86_400_000
LIVE, RETIRED = 1, 2
U64 = (1 << 64) - 1
CHUNK = 64  # slots per read

# The header's words after the magic, in order (docs: "Header").
HEADER_WORDS = (
    "version byte_order nfields id_max_bytes capacity slot_size fields_off fields_size "
    "index_off slots_off claims_off claim_size size seq used high alloc_failures flushes"
).split()
HEADER_FORMAT = "4I14Q"
OFF_USED, OFF_HIGH = 104, 112

Counts = dict[str, dict[str, int]]


class SegmentFormatError(ValueError):
    """The file is not a segment this reader can trust (the message says which check failed)."""


def round64(x: int) -> int:
    return (x + 63) // 64 * 64


def layout(capacity: int, nfields: int, fields_size: int) -> dict[str, int]:
    """Every offset and size the header must hold, from capacity and the field list."""
    slot_size = round64(64 * nfields + TAIL + ID_MAX_BYTES + 1)
    fields_off = round64(HEADER_SIZE)
    index_off = round64(fields_off + fields_size)
    slots_off = round64(index_off + 4 * capacity)
    claims_off = slots_off + capacity * slot_size
    claim_size = round64(24 + capacity * (8 + 8 * nfields))
    return {
        "slot_size": slot_size,
        "fields_off": fields_off,
        "index_off": index_off,
        "slots_off": slots_off,
        "claims_off": claims_off,
        "claim_size": claim_size,
        "size": claims_off + CLAIMS * claim_size,
    }


def grace_ms() -> int:
    """PMEM_METRICS_RETIRE_GRACE_MS if it is a decimal number of 0 to a day's ms, else 5 minutes."""
    env = os.environ.get("PMEM_METRICS_RETIRE_GRACE_MS", "")
    if re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", env):
        ms = int(env)
        if 0 <= ms <= MAX_GRACE_MS:
            return ms
    return DEFAULT_GRACE_MS


def now_ms() -> int:
    """CLOCK_MONOTONIC in whole milliseconds, as the writers stamp ``retired_ms``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


def valid_id(raw: bytes) -> str | None:
    """The id *raw* encodes, if it is a valid one: UTF-8, 1 to 64 code points, no controls."""
    try:
        text = raw.decode("utf-8")  # strict: no overlong forms, surrogates, beyond U+10FFFF
    except UnicodeDecodeError:
        return None
    if not 1 <= len(text) <= ID_MAX_CHARS:
        return None
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in text):
        return None
    return text


def _pread(fd: int, n: int, off: int) -> bytes:
    """Exactly *n* bytes at *off*, or SegmentFormatError (the file is shorter)."""
    parts = []
    while n > 0:
        got = os.pread(fd, n, off)
        if not got:
            raise SegmentFormatError(f"truncated: no bytes at offset {off}")
        parts.append(got)
        n -= len(got)
        off += len(got)
    return b"".join(parts)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _fields(raw: bytes, nfields: int) -> list[str]:
    """The field names of the list *raw*: name NUL doc NUL per field, filling it exactly."""
    parts = raw.split(b"\0")
    if len(parts) != 2 * nfields + 1 or parts[-1]:
        raise SegmentFormatError(f"the field list is not {nfields} (name, doc) pairs")
    try:
        names = [name.decode("utf-8") for name in parts[0:-1:2]]
    except UnicodeDecodeError:
        raise SegmentFormatError("a field name is not UTF-8") from None
    if not all(_NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise SegmentFormatError(f"field names not identifiers, or repeated: {names}")
    if any(b < 0x20 or b == 0x7F for doc in parts[1:-1:2] for b in doc):
        raise SegmentFormatError("a field's doc has a control character")
    return names


def read_segment(path: str | os.PathLike[str], *, pending: bool = False) -> Counts:
    """The devices a scrape of the segment at *path* shows, ``{id: {field: count}}``, in id order.

    *pending*: each counter's diff since the last flush (``current - old``)
    instead of its count.  Raises :class:`SegmentFormatError` for a file that
    fails a check, ``OSError`` if it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _read(fd, pending)
    finally:
        os.close(fd)


def _read(fd: int, pending: bool) -> Counts:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SegmentFormatError("not a regular file")
    if st.st_size < HEADER_SIZE:
        raise SegmentFormatError(f"truncated: {st.st_size} bytes, less than a header")
    raw = _pread(fd, HEADER_SIZE, 0)
    if raw[:8] != MAGIC:
        raise SegmentFormatError("not a segment (magic)")
    for e in "<>":
        if struct.unpack_from(e + "I", raw, 12)[0] == BYTE_ORDER:
            break
    else:
        raise SegmentFormatError("unknown byte order")
    h = dict(zip(HEADER_WORDS, struct.unpack_from(e + HEADER_FORMAT, raw, 8)))
    if h["version"] != VERSION:
        raise SegmentFormatError(f"version {h['version']}, not {VERSION}")
    nfields, capacity, fields_size = h["nfields"], h["capacity"], h["fields_size"]
    if not 1 <= nfields <= MAX_FIELDS or h["id_max_bytes"] != ID_MAX_BYTES:
        raise SegmentFormatError(f"nfields {nfields} or id_max_bytes {h['id_max_bytes']}")
    if not 1 <= capacity <= MAX_CAPACITY or fields_size > MAX_FIELDS_SIZE:
        raise SegmentFormatError(f"capacity {capacity} or fields_size {fields_size}")
    want = layout(capacity, nfields, fields_size)
    wrong = [k for k, v in want.items() if h[k] != v]
    if wrong:
        raise SegmentFormatError(f"the header's layout is not its own: {wrong}")
    if st.st_size != want["size"]:
        raise SegmentFormatError(f"{st.st_size} bytes, not the {want['size']} the header says")
    names = _fields(_pread(fd, fields_size, want["fields_off"]), nfields)

    # used, then high: an insert raises high first, so this never sees more devices than slots.
    used = struct.unpack(e + "Q", _pread(fd, 8, OFF_USED))[0]
    high = struct.unpack(e + "Q", _pread(fd, 8, OFF_HIGH))[0]
    if not used <= high <= capacity:
        raise SegmentFormatError(f"used {used}, high {high}, capacity {capacity}")
    index = struct.unpack(f"{e}{used}I", _pread(fd, 4 * used, want["index_off"]))

    # Each slot below high, read once: (state, retired_ms, id bytes, values); None: no device.
    slot_size, tail = want["slot_size"], 64 * nfields
    slots: list[tuple[int, int, bytes, list[int]] | None] = []
    for first in range(0, high, CHUNK):
        k = min(CHUNK, high - first)
        chunk = _pread(fd, k * slot_size, want["slots_off"] + first * slot_size)
        for j in range(k):
            at = j * slot_size
            published, id_len, state = struct.unpack_from(e + "3I", chunk, at + tail)
            if published == 0:
                raise SegmentFormatError(f"slot {first + j} below high is not published")
            if state & 3 not in (LIVE, RETIRED):
                slots.append(None)
                continue
            if not 1 <= id_len <= ID_MAX_BYTES:
                raise SegmentFormatError(f"slot {first + j}: a device with id_len {id_len}")
            retired_ms = struct.unpack_from(e + "Q", chunk, at + tail + 24)[0]
            words = struct.unpack_from(f"{e}{2 * nfields}Q", b"".join(
                chunk[at + 64 * f : at + 64 * f + 16] for f in range(nfields)
            ))  # fmt: skip
            current, old = words[0::2], words[1::2]
            values = [(c - o) & U64 for c, o in zip(current, old)] if pending else list(current)
            ident = chunk[at + tail + TAIL : at + tail + TAIL + id_len]
            slots.append((state, retired_ms, ident, values))

    def by_id() -> list[int]:  # every device slot below high, by id
        return [s for _, s in sorted((v[2], s) for s, v in enumerate(slots) if v is not None)]

    seen: set[int] = set()
    usable = True
    for s in index:
        if s >= high or s in seen or slots[s] is None:
            usable = False
            break
        seen.add(s)
    order, is_sorted = (list(index), False) if usable else (by_id(), True)

    grace, now = grace_ms(), now_ms()
    while True:
        out: Counts = {}
        prev: bytes | None = None
        for s in order:
            slot = slots[s]
            assert slot is not None  # the index was checked; by_id() lists devices only
            state, retired_ms, ident, values = slot
            if state & 3 == RETIRED and (now - retired_ms) & U64 >= grace:
                continue  # past its grace period: a scrape no longer shows it
            text = valid_id(ident)
            if text is None:
                raise SegmentFormatError(f"slot {s}: not a valid id: {ident!r}")
            if prev is not None and ident < prev:
                break  # out of order: sort the slots (below)
            if ident == prev:  # one id in two slots: one device, the sum of both
                row = out[text]
                for name, v in zip(names, values):
                    row[name] = (row[name] + v) & U64
            else:
                out[text] = dict(zip(names, values))
            prev = ident
        else:
            return out
        if is_sorted:
            raise SegmentFormatError("the ids are out of order even sorted")
        order, is_sorted = by_id(), True
