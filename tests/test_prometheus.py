"""Prometheus exposition (pmem_metrics.prometheus), scraped for real on loopback."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pmem_metrics import FIELD_DOCS, FIELDS, PmemMetricsPerDevice, device_count, flush_metrics
from pmem_metrics.prometheus import PmemCollector, register


def scrape_text(text: str) -> dict[str, dict]:
    """{family name: {"help":..., "type":..., "samples": {(name, drive_id): value}}}."""
    out = {}
    for family in text_string_to_metric_families(text):
        samples = {}
        for s in family.samples:
            assert set(s.labels) == {"drive_id"}, s  # no unlabelled aggregate series
            samples[s.name, s.labels["drive_id"]] = s.value
        out[family.name] = {"help": family.documentation, "type": family.type, "samples": samples}
    return out


def test_families_help_and_values(uid: str) -> None:
    registry = CollectorRegistry()
    assert isinstance(register(registry), PmemCollector)
    a = PmemMetricsPerDevice.alloc(uid + "a")
    a.activate_fails.inc()
    a.queue_event_count.add(41)
    PmemMetricsPerDevice.alloc(uid + 'b"\\').event_fails.add(2)  # label escaping
    families = scrape_text(generate_latest(registry).decode())
    assert sorted(families) == sorted(f"pmem_{f}" for f in FIELDS)
    for f in FIELDS:
        family = families[f"pmem_{f}"]
        assert family["type"] == "counter"
        assert family["help"] == FIELD_DOCS[f]
        assert len(family["samples"]) == device_count()
    q = families["pmem_queue_event_count"]["samples"]
    assert q["pmem_queue_event_count_total", uid + "a"] == 41
    assert families["pmem_event_fails"]["samples"]["pmem_event_fails_total", uid + 'b"\\'] == 2


def test_scraping_resets_nothing_and_flushing_changes_no_scrape(uid: str) -> None:
    registry = CollectorRegistry()
    register(registry)
    m = PmemMetricsPerDevice.alloc(uid + "x")
    flush_metrics()
    m.cfg_fails.add(5)

    def scraped() -> float:
        samples = scrape_text(generate_latest(registry).decode())["pmem_cfg_fails"]["samples"]
        return samples["pmem_cfg_fails_total", uid + "x"]

    assert scraped() == 5
    assert scraped() == 5
    assert m.cfg_fails.fetch_diff() == 5  # scrapes took nothing from the next flush
    assert flush_metrics()[f"pmem_{uid}x"]["cfg_fails"] == 5
    assert scraped() == 5  # cumulative: the flush did not reset what Prometheus sees
    m.cfg_fails.inc()
    assert scraped() == 6
    assert flush_metrics()[f"pmem_{uid}x"]["cfg_fails"] == 1


def test_registering_reads_no_counter(uid: str) -> None:
    describe = PmemCollector().describe()
    assert [f.name for f in describe] == [f"pmem_{f}" for f in FIELDS]
    assert all(not f.samples for f in describe)


def test_scraped_over_http_on_loopback(uid: str) -> None:
    registry = CollectorRegistry()
    register(registry)
    PmemMetricsPerDevice.alloc(uid + "http").activate_fails.add(7)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
        thread.join(10)
    samples = scrape_text(text)["pmem_activate_fails"]["samples"]
    assert samples["pmem_activate_fails_total", uid + "http"] == 7


def test_demo_serves_prometheus(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmem_metrics", "demo", "--devices", "3", "--duration", "60",
         "--prometheus-port", "0", "--metrics-path", str(tmp_path / "m.json")],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/metrics", first)
        assert url, first
        for _ in range(600):  # until the device threads have counted something
            with urllib.request.urlopen(url.group(0), timeout=10) as r:
                families = scrape_text(r.read().decode())
            if sum(families["pmem_queue_event_count"]["samples"].values()):
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean stop, whatever happened
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    samples = families["pmem_queue_event_count"]["samples"]
    assert sorted(drive for _, drive in samples) == ["drv0", "drv1", "drv2"]
    assert sum(samples.values()) > 0


def test_a_scrape_does_not_wait_for_a_flush(uid: str) -> None:
    """A scrape while this very thread holds a flush open: it takes no flush lock."""
    from pmem_metrics._snapshot import new_slot, take, withdraw

    registry = CollectorRegistry()
    register(registry)
    PmemMetricsPerDevice.alloc(uid + "held").activate_fails.add(2)
    slot = new_slot()
    take(slot)  # a second flush here would be refused (EDEADLK); a scrape is not
    try:
        samples = scrape_text(generate_latest(registry).decode())["pmem_activate_fails"]
    finally:
        withdraw(slot)
    assert samples["samples"]["pmem_activate_fails_total", uid + "held"] == 2


def test_a_collector_reopens_a_replaced_segment_only_when_asked(tmp_path: Path) -> None:
    from pmem_metrics import open_segment

    path = tmp_path / "seg"
    open_segment(path).alloc("old").cfg_fails.add(1)
    registries = {}
    for reopen in (False, True):
        registries[reopen] = CollectorRegistry()
        seg = open_segment(path, readonly=True)
        register(registries[reopen], {"vm": seg}, reopen=reopen)
    path.unlink()
    open_segment(path).alloc("new").cfg_fails.add(2)
    kept = generate_latest(registries[False]).decode()
    last = generate_latest(registries[True]).decode()  # the old one's final counts, once
    assert 'pmem_segment_up{segment="vm"} 0.0' in kept and "cfg_fails_total{" not in kept
    assert 'pmem_cfg_fails_total{drive_id="old",segment="vm"} 1.0' in last and "new" not in last
    followed = generate_latest(registries[True]).decode()
    assert 'pmem_segment_up{segment="vm"} 1.0' in followed
    assert 'pmem_cfg_fails_total{drive_id="new",segment="vm"} 2.0' in followed
    assert "old" not in followed
