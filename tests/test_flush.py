"""The flushed object: format, reset semantics, ordering, consistency under threads."""

from __future__ import annotations

import json
import random
import threading

from pmem_metrics import FIELDS, PmemMetricsPerDevice, flush_metrics, flush_metrics_json

from .helpers import assert_aggregate_is_sum, run_threads

ZERO = dict.fromkeys(FIELDS, 0)


def test_exact_bytes_of_a_flush_for_a_known_state(run_python) -> None:
    out = run_python(
        """
        from pmem_metrics import PmemMetricsPerDevice, flush_metrics_json
        PmemMetricsPerDevice.alloc("drv1").queue_event_count.add(3)
        PmemMetricsPerDevice.alloc("drv0").activate_fails.inc()
        print(flush_metrics_json())
        print(flush_metrics_json())
        """
    )
    first, second = out.splitlines()
    assert first == (
        '{"pmem_drv0":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":0},'
        '"pmem_drv1":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":3},'
        '"pmem":{"activate_fails":1,"cfg_fails":0,"event_fails":0,"queue_event_count":3}}'
    )
    assert second == (
        '{"pmem_drv0":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":0},'
        '"pmem_drv1":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":0},'
        '"pmem":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":0}}'
    )


def test_no_device_gives_the_aggregate_alone(run_python) -> None:
    out = run_python(
        """
        from pmem_metrics import flush_metrics, flush_metrics_json
        print(flush_metrics_json())
        print(flush_metrics())
        """
    )
    text, obj = out.splitlines()
    assert text == (
        '{"pmem":{"activate_fails":0,"cfg_fails":0,"event_fails":0,"queue_event_count":0}}'
    )
    assert obj == repr({"pmem": ZERO})


def test_keys_are_in_code_point_order_whatever_the_alloc_order(run_python) -> None:
    # U+FFFF sorts before U+10000 by code point (and by UTF-8 bytes), after it in UTF-16.
    ids = ["b", "a", "\U00010000", "\uffff", "A", "a0", "é", "_", "drv10", "drv9"]
    out = run_python(
        f"""
        import json
        from pmem_metrics import PmemMetricsPerDevice, flush_metrics, flush_metrics_json
        for drive_id in {ids!r}:
            PmemMetricsPerDevice.alloc(drive_id)
        print(json.dumps([list(flush_metrics()), list(json.loads(flush_metrics_json()))]))
        """
    )
    from_dict, from_json = json.loads(out)
    expected = [f"pmem_{i}" for i in sorted(ids)] + ["pmem"]
    assert from_dict == expected
    assert from_json == expected


def test_json_keeps_utf8_and_escapes_quote_and_backslash(uid: str) -> None:
    ids = [uid + 'q"uote', uid + "back\\slash", uid + "ünï😀"]
    for i, drive_id in enumerate(ids):
        PmemMetricsPerDevice.alloc(drive_id).event_fails.add(i + 1)
    text = flush_metrics_json()
    assert '"pmem_' + uid + 'ünï😀":' in text  # raw UTF-8, like serde_json
    assert '"pmem_' + uid + 'q\\"uote":' in text
    assert '"pmem_' + uid + 'back\\\\slash":' in text
    obj = json.loads(text)
    for i, drive_id in enumerate(ids):
        assert obj[f"pmem_{drive_id}"]["event_fails"] == i + 1
    assert text == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def test_dict_and_json_forms_report_the_same(uid: str) -> None:
    rng = random.Random(7)
    for round_ in range(3):
        for i in range(5):
            m = PmemMetricsPerDevice.alloc(f"{uid}{i}")
            for f in FIELDS:
                getattr(m, f).add(rng.randrange(1000))
        state = {
            f"pmem_{uid}{i}": {
                f: getattr(PmemMetricsPerDevice.alloc(f"{uid}{i}"), f).fetch_diff() for f in FIELDS
            }
            for i in range(5)
        }
        got = flush_metrics() if round_ % 2 else json.loads(flush_metrics_json())
        for key, fields in state.items():
            assert got[key] == fields
        assert_aggregate_is_sum(got)


def test_flush_reports_diffs_and_resets_to_what_it_reported(uid: str) -> None:
    m = PmemMetricsPerDevice.alloc(uid + "r")
    key = f"pmem_{uid}r"
    m.activate_fails.add(2)
    m.queue_event_count.add(10)
    assert flush_metrics()[key] == {**ZERO, "activate_fails": 2, "queue_event_count": 10}
    assert flush_metrics()[key] == ZERO
    m.queue_event_count.inc()
    assert flush_metrics()[key] == {**ZERO, "queue_event_count": 1}
    assert m.activate_fails.count() == 2
    assert m.queue_event_count.count() == 11


def test_aggregate_equals_sum_and_nothing_is_lost_or_doubled_under_threads(uid: str) -> None:
    """Incrementers, an allocator and two flushers at once, on real threads."""
    devices = [PmemMetricsPerDevice.alloc(f"{uid}{i}") for i in range(6)]
    per_thread = 4000
    stop = threading.Event()
    flushes: list[dict] = []
    lock = threading.Lock()
    flush_metrics()  # start from zero diffs

    def bump(seed: int) -> None:
        rng = random.Random(seed)
        counters = [(d, f) for d in devices for f in FIELDS]
        for _ in range(per_thread):
            d, f = rng.choice(counters)
            getattr(d, f).inc()

    def flusher(as_json: bool) -> None:
        while not stop.is_set():
            obj = json.loads(flush_metrics_json()) if as_json else flush_metrics()
            with lock:
                flushes.append(obj)

    def allocator() -> None:
        for i in range(200):
            PmemMetricsPerDevice.alloc(f"{uid}new{i}").cfg_fails.inc()

    bumpers = [threading.Thread(target=bump, args=(s,)) for s in range(4)]
    flushers = [threading.Thread(target=flusher, args=(j,)) for j in (False, True)]
    run_threads([*bumpers, threading.Thread(target=allocator)], flushers, stop)
    flushes.append(flush_metrics())

    assert len(flushes) > 2
    for obj in flushes:
        assert_aggregate_is_sum(obj)
    total = sum(
        obj.get(f"pmem_{d.drive_id}", ZERO)[f] for obj in flushes for d in devices for f in FIELDS
    )
    assert total == 4 * per_thread
    for d in devices:
        for f in FIELDS:
            counter = getattr(d, f)
            assert counter.fetch_diff() == 0
            assert sum(obj.get(f"pmem_{d.drive_id}", ZERO)[f] for obj in flushes) == counter.count()
    for i in range(200):
        assert sum(obj.get(f"pmem_{uid}new{i}", ZERO)["cfg_fails"] for obj in flushes) == 1


def test_aggregate_is_the_sum_while_native_threads_bump(native, uid: str) -> None:
    """Native threads bump nonstop (no GIL between them) while Python flushes in a loop."""
    ids = [uid + "hot0", uid + "hot1"]
    per_thread = 300_000
    flush_metrics()
    results: list[int] = []
    drivers = [
        threading.Thread(target=lambda i=i: results.append(native.bump(i.encode(), 2, per_thread)))
        for i in ids
    ]
    flushes = []
    for t in drivers:
        t.start()
    while any(t.is_alive() for t in drivers) or len(flushes) < 2:
        flushes.append(flush_metrics())
    for t in drivers:
        t.join()
    flushes.append(flush_metrics())
    assert results == [0, 0]
    for obj in flushes:
        assert_aggregate_is_sum(obj)
    for drive_id in ids:
        got = [obj.get(f"pmem_{drive_id}", ZERO) for obj in flushes]
        assert sum(g["activate_fails"] for g in got) == 2 * per_thread
        assert sum(g["queue_event_count"] for g in got) == 2 * 2 * per_thread


def test_the_aggregate_is_a_u64_sum_like_firecracker(uid: str) -> None:
    a = PmemMetricsPerDevice.alloc(uid + "a")
    b = PmemMetricsPerDevice.alloc(uid + "b")
    flush_metrics()
    a.cfg_fails.add(2**63)
    b.cfg_fails.add(2**63 + 5)
    obj = flush_metrics()
    assert obj[f"pmem_{uid}a"]["cfg_fails"] == 2**63
    assert obj[f"pmem_{uid}b"]["cfg_fails"] == 2**63 + 5
    assert obj["pmem"]["cfg_fails"] == 5  # (2**63 + 2**63 + 5) mod 2**64
