"""Random sequences of calls agree with a small pure-Python model of the semantics.

The model is the Firecracker metrics semantics of docs/python.md's "Semantics"
section written out:
- per counter a current and an old value modulo 2**64; ``count`` is current,
  ``fetch_diff`` current - old, a flush reports the diffs and sets old to
  current;
- a flushed object has ``"pmem_<drive id>"`` per device in code-point order of
  the id, then ``"pmem"``, the field-wise sum of those devices modulo 2**64;
  its JSON is compact with non-ASCII kept as is, and a writer's line is that
  object with ``"utc_timestamp_ms"`` first;
- a drive id is a str of 1 to ID_MAX_CHARS characters, none a control
  character or a lone surrogate (``PmemMetricsPerDevice.alloc``'s docstring);
  ``add(n)`` takes an integer with 0 <= n < 2**64.
Rejected calls (bad ids, bad add values) must raise and change nothing.

The registry is per process and other tests' devices live in it too, so every
run of the machine uses ids with a prefix of its own and compares only those;
the aggregate is checked against all devices of each flushed object.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from pmem_metrics import (
    FIELDS,
    ID_MAX_CHARS,
    MetricsWriter,
    PmemMetricsPerDevice,
    device_count,
    flush_metrics,
    flush_metrics_json,
)

from .helpers import assert_aggregate_is_sum

U64 = 2**64
_runs = itertools.count()
PREFIX_LEN = len("m000000-")

# Any code point but control characters (Cc) and lone surrogates (Cs): non-ASCII included.
id_chars = st.characters(blacklist_categories=("Cc", "Cs"))
suffixes = st.one_of(
    st.text(id_chars, min_size=1, max_size=8),
    st.text(id_chars, min_size=ID_MAX_CHARS - PREFIX_LEN, max_size=ID_MAX_CHARS - PREFIX_LEN),
)
bad_suffixes = st.one_of(
    st.text(id_chars, min_size=ID_MAX_CHARS - PREFIX_LEN + 1, max_size=ID_MAX_CHARS + 8),
    st.builds(
        lambda a, c, b: a + c + b,
        st.text(id_chars, max_size=4),
        st.characters(whitelist_categories=("Cc", "Cs")),
        st.text(id_chars, max_size=4),
    ),
)
not_str = st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.floats())
counts = st.one_of(
    st.integers(0, 10), st.integers(0, U64 - 1), st.integers(U64 - 10, U64 - 1), st.just(U64 - 1)
)
bad_counts = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=U64),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
)


class Registry(RuleBasedStateMachine):
    devices = Bundle("devices")

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{next(_runs):06d}-"
        self.model: dict[str, dict[str, list[int]]] = {}  # id -> field -> [current, old]

    def _check_all(self) -> None:
        for drive_id, fields in self.model.items():
            m = PmemMetricsPerDevice.alloc(drive_id)
            for f, (cur, old) in fields.items():
                counter = getattr(m, f)
                assert counter.count() == cur
                assert counter.fetch_diff() == (cur - old) % U64

    def _flushed(self, obj: dict, text: str | None = None) -> None:
        """Check a flush against the model, then apply it; *text*: its JSON, if any."""
        assert_aggregate_is_sum(obj)
        keys = list(obj)
        assert keys[-1] == "pmem" and keys[:-1] == sorted(keys[:-1])  # code-point order
        if text is not None:
            assert text == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        for drive_id, fields in self.model.items():
            assert obj[f"pmem_{drive_id}"] == {f: (c - o) % U64 for f, (c, o) in fields.items()}
            for pair in fields.values():
                pair[1] = pair[0]

    @rule(target=devices, suffix=suffixes)
    def alloc(self, suffix: str) -> str:
        drive_id = self.prefix + suffix
        before = device_count()
        m = PmemMetricsPerDevice.alloc(drive_id)
        assert m.drive_id == drive_id
        new = drive_id not in self.model
        assert device_count() == before + new
        self.model.setdefault(drive_id, {f: [0, 0] for f in FIELDS})
        return drive_id

    @rule(suffix=bad_suffixes)
    def alloc_bad_id(self, suffix: str) -> None:
        before = device_count()
        try:
            PmemMetricsPerDevice.alloc(self.prefix + suffix)
        except ValueError:
            pass
        else:
            raise AssertionError(f"accepted {self.prefix + suffix!r}")
        assert device_count() == before
        self._check_all()

    @rule(value=not_str)
    def alloc_not_str(self, value: object) -> None:
        before = device_count()
        try:
            PmemMetricsPerDevice.alloc(value)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            raise AssertionError(f"accepted {value!r}")
        assert device_count() == before

    @rule(drive_id=devices, field=st.sampled_from(FIELDS))
    def inc(self, drive_id: str, field: str) -> None:
        getattr(PmemMetricsPerDevice.alloc(drive_id), field).inc()
        pair = self.model[drive_id][field]
        pair[0] = (pair[0] + 1) % U64

    @rule(drive_id=devices, field=st.sampled_from(FIELDS), n=counts)
    def add(self, drive_id: str, field: str, n: int) -> None:
        getattr(PmemMetricsPerDevice.alloc(drive_id), field).add(n)
        pair = self.model[drive_id][field]
        pair[0] = (pair[0] + n) % U64

    @rule(drive_id=devices, field=st.sampled_from(FIELDS), n=bad_counts)
    def add_bad(self, drive_id: str, field: str, n: object) -> None:
        try:
            getattr(PmemMetricsPerDevice.alloc(drive_id), field).add(n)
        except (OverflowError, TypeError, ValueError):
            pass
        else:
            raise AssertionError(f"add({n!r}) accepted")
        self._check_all()

    @rule(drive_id=devices, field=st.sampled_from(FIELDS))
    def read(self, drive_id: str, field: str) -> None:
        counter = getattr(PmemMetricsPerDevice.alloc(drive_id), field)
        cur, old = self.model[drive_id][field]
        assert counter.count() == cur
        assert counter.fetch_diff() == (cur - old) % U64

    @rule()
    def flush_dict(self) -> None:
        self._flushed(flush_metrics())

    @rule()
    def flush_json(self) -> None:
        text = flush_metrics_json()
        self._flushed(json.loads(text), text)

    @rule()
    def write_line(self) -> None:
        buf = io.StringIO()
        w = MetricsWriter()
        w.init(buf)
        assert w.write()
        line = buf.getvalue()
        assert line.startswith('{"utc_timestamp_ms":') and line.endswith("}\n")
        obj = json.loads(line)
        stamp = obj.pop("utc_timestamp_ms")
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        assert line == f'{{"utc_timestamp_ms":{stamp},{body[1:]}\n'
        self._flushed(obj)

    @invariant()
    def ids_stay_distinct(self) -> None:
        assert len({PmemMetricsPerDevice.alloc(i) for i in self.model}) == len(self.model)


Registry.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestRegistryModel = pytest.mark.heavy(Registry.TestCase)
