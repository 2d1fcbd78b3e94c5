"""The fast Prometheus endpoint (pmem_metrics.exposition): prometheus_client's bytes, served.

The oracle is prometheus_client itself: for the same registries, ``render()``
must give what ``generate_latest()`` over a registered ``PmemCollector``
gives, byte for byte, in both formats, and what its parsers read back.
Golden files pin the text of a fixed set of devices (``PMEM_REGOLD=1``
writes them again).  ``promtool`` and a real Prometheus server (Debian's
``prometheus``) check the page too: skipped where they are not installed,
except in CI, which installs them.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from pmem_metrics import ID_MAX_CHARS, PmemMetricsPerDevice, Registry, open_segment
from pmem_metrics.errors import SegmentFullError
from pmem_metrics.exposition import (
    OPENMETRICS,
    TEXT,
    Exposition,
    render,
    start_http_server,
    wants_openmetrics,
)
from pmem_metrics.prometheus import register

from .helpers import tool

GOLDEN = Path(__file__).parent / "golden"

PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def theirs(segments: dict[str, Registry] | None, openmetrics: bool = False) -> bytes:
    """What prometheus_client renders of a PmemCollector of *segments*."""
    collectors = CollectorRegistry()
    register(collectors, segments)
    return (om_latest if openmetrics else generate_latest)(collectors)


def samples(text: bytes, openmetrics: bool = False) -> list[tuple[str, str, str, dict, float]]:
    """(family, type, HELP, labels, value) of every sample, as prometheus_client parses them."""
    parse = om_parse if openmetrics else text_parse
    return [
        (f.name, f.type, f.documentation, s.labels, s.value)
        for f in parse(text.decode())
        for s in f.samples
    ]


@pytest.fixture
def fixed(tmp_path: Path) -> Iterator[dict[str, Registry]]:
    """Three segments, the same devices every time: odd ids and values; a full one; a gone one."""
    one = open_segment(tmp_path / "one", capacity=8, mode=0o600)
    values = {
        "drv0": (0, 1, 2, 3),
        'q"uote': (999_999, 1_000_000, 1_200_000, 123_456_789),
        "back\\slash": (2**53 - 1, 2**53 + 1, 10**16, 2**64 - 1),
        "ünïcode ✓": (7, 0, 0, 10**15),
        "%s%d{}=,#": (5, 0, 0, 0),
    }
    for drive_id, counts in values.items():
        m = one.alloc(drive_id)
        for counter, n in zip(m.counters().values(), counts):
            counter.add(n)
    full = open_segment(tmp_path / "full", capacity=2, mode=0o600)
    full.alloc("a").cfg_fails.inc()
    full.alloc("b")
    with pytest.raises(SegmentFullError):
        full.alloc("c")  # one allocation refused: pmem_segment_alloc_failures_total 1
    gone = open_segment(tmp_path / "gone", mode=0o600)
    (tmp_path / "gone").unlink()  # pmem_segment_up 0, no room
    yield {"vm-1": one, 'vm"2\\': full, "gone": gone}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_golden_text_of_a_fixed_set_of_devices(fixed: dict[str, Registry], openmetrics: bool):
    text = render(fixed, openmetrics=openmetrics)
    golden = GOLDEN / ("segments.om" if openmetrics else "segments.prom")
    if os.environ.get("PMEM_REGOLD"):
        golden.write_bytes(text)
    assert text == golden.read_bytes()
    assert text == theirs(fixed, openmetrics)
    assert samples(text, openmetrics) == samples(theirs(fixed, openmetrics), openmetrics)


def test_the_default_registry_is_rendered_as_prometheus_client_does(uid: str) -> None:
    PmemMetricsPerDevice.alloc(uid + 'a"\\').cfg_fails.add(3)
    PmemMetricsPerDevice.alloc(uid + "b").queue_event_count.add(10**7)
    for om in (False, True):
        text = render(openmetrics=om)
        assert text == theirs(None, om)
        assert f'pmem_cfg_fails_total{{drive_id="{uid}a\\"\\\\"}} 3.0\n'.encode() in text
        assert f'pmem_queue_event_count_total{{drive_id="{uid}b"}} 1e+07\n'.encode() in text
    assert b"segment" not in render()


ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=ID_MAX_CHARS)


@settings(max_examples=40, deadline=None)
@given(
    devices=st.dictionaries(ids, st.integers(0, 2**64 - 1), max_size=6),
    name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)
def test_any_ids_counts_and_segment_names_are_prometheus_clients_bytes(
    devices: dict[str, int], name: str
) -> None:
    with tempfile.TemporaryDirectory() as d:
        seg = open_segment(Path(d) / "seg", capacity=16, mode=0o600)
        for drive_id, n in devices.items():
            seg.alloc(drive_id).queue_event_count.add(n)
        for om in (False, True):
            assert render({name: seg}, openmetrics=om) == theirs({name: seg}, om)


def test_a_replaced_segment_is_followed_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    open_segment(path).alloc("old").cfg_fails.add(1)
    kept = Exposition({"vm": open_segment(path, readonly=True)})
    followed = Exposition({"vm": open_segment(path, readonly=True)}, reopen=True)
    path.unlink()
    open_segment(path).alloc("new").cfg_fails.add(2)
    assert b'pmem_segment_up{segment="vm"} 0.0\n' in kept.render()
    last = followed.render()  # the old segment's final counts, from the file still open
    assert b'pmem_cfg_fails_total{drive_id="old",segment="vm"} 1.0\n' in last
    assert b"new" not in last
    text = followed.render()  # then the segment at the path now
    assert b'pmem_cfg_fails_total{drive_id="new",segment="vm"} 2.0\n' in text
    assert b"old" not in text and followed.render() == text


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("application/openmetrics-text;version=0.0.1", False),  # not ours: text
        ("application/openmetrics-text;version=2.0.0", False),
        ("text/plain;q=0.5,application/openmetrics-text;q=0.9", True),
        ("application/openmetrics-text;q=0.1,*/*;q=0.2", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=oops,text/plain", False),
        ("application/json", False),  # nothing we have: the text, as prometheus_client does
        (PROMETHEUS_2, True),
        (PROMETHEUS_3, True),
    ],
)
def test_the_accept_header_chooses_the_format(accept: str | None, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def test_respond_gzips_when_asked(uid: str) -> None:
    PmemMetricsPerDevice.alloc(uid + "gz").event_fails.add(4)
    page = Exposition()
    for accept, om in ((None, False), (PROMETHEUS_3, True)):
        status, headers, body = page.respond(accept, None)
        assert status == "200 OK" and dict(headers)["Content-Type"] == (OPENMETRICS if om else TEXT)
        assert "Content-Encoding" not in dict(headers) and body == page.render(om)
        for encoding in ("gzip", "deflate, gzip;q=0.8", "GZIP", "br, x-gzip"):
            status, headers, zipped = page.respond(accept, encoding)
            assert dict(headers)["Content-Encoding"] == "gzip"
            assert dict(headers)["Content-Length"] == str(len(zipped))
            assert gzip.decompress(zipped) == body
    for refused in ("identity", "gzip;q=0", "deflate"):
        assert "Content-Encoding" not in dict(page.respond(None, refused)[1])


def get(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return dict(r.headers), r.read()


def test_served_over_http_in_both_formats_gzipped_or_not(fixed: dict[str, Registry]) -> None:
    server = start_http_server(0, "127.0.0.1", fixed)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        headers, body = get(url)
        assert headers["Content-Type"] == TEXT and body == theirs(fixed)
        headers, body = get(url, Accept=PROMETHEUS_3, **{"Accept-Encoding": "gzip"})
        assert headers["Content-Type"] == OPENMETRICS and headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == theirs(fixed, True)
    finally:
        server.shutdown()
        server.server_close()


def test_an_ipv6_address_is_served_on_ipv6(uid: str) -> None:
    try:
        server = start_http_server(0, "::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        assert server.socket.family == socket.AF_INET6
        assert get(f"http://[::1]:{server.server_address[1]}/metrics")[1] == render()
    finally:
        server.shutdown()
        server.server_close()


def test_the_handler_mounts_in_a_server_of_ones_own(uid: str) -> None:
    from http.server import HTTPServer
    from threading import Thread

    PmemMetricsPerDevice.alloc(uid + "own").cfg_fails.inc()
    with HTTPServer(("127.0.0.1", 0), Exposition().handler()) as server:
        Thread(target=server.handle_request, daemon=True).start()
        _, body = get(f"http://127.0.0.1:{server.server_address[1]}/")
    assert f'pmem_cfg_fails_total{{drive_id="{uid}own"}} 1.0\n'.encode() in body


def test_the_demo_serves_openmetrics_without_prometheus_client(tmp_path: Path) -> None:
    # prometheus_client made unimportable: the demo's endpoint does not need it.
    (tmp_path / "prometheus_client").mkdir()
    (tmp_path / "prometheus_client" / "__init__.py").write_text("raise ImportError('hidden')\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmem_metrics", "demo", "--devices", "3", "--duration", "5",
         "--prometheus-port", "0", "--metrics-path", str(tmp_path / "m.json")],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/metrics", first)
        assert url, first
        headers, body = get(url.group(0), Accept=PROMETHEUS_2, **{"Accept-Encoding": "gzip"})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert headers["Content-Type"] == OPENMETRICS
    families = {f.name: f for f in om_parse(gzip.decompress(body).decode())}
    drives = {s.labels["drive_id"] for s in families["pmem_queue_event_count"].samples}
    assert drives == {"drv0", "drv1", "drv2"}


# ---- checked by the real thing, where installed --------------------------------------------


def test_promtool_checks_the_text_format(fixed: dict[str, Registry]) -> None:
    # Text 0.0.4 only: promtool cannot parse OpenMetrics (prometheus/prometheus#8932: "no help
    # text" for every counter).  OpenMetrics is checked by prometheus_client's strict parser
    # (test_both_formats_are_what_prometheus_client_renders) and by a real server's scrape.
    proc = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=render(fixed),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()


class _Recorded(Exposition):
    """An exposition that notes the ``Accept`` of each request and the type it answered."""

    def __init__(self, segments: dict[str, Registry]) -> None:
        super().__init__(segments)
        self.served: list[tuple[str | None, str]] = []

    def respond(
        self, accept: str | None = None, accept_encoding: str | None = None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        status, headers, body = super().respond(accept, accept_encoding)
        self.served.append((accept, dict(headers)["Content-Type"]))
        return status, headers, body


def _query(web: int, expr: str) -> list[dict]:
    """The result of the PromQL *expr* now (``[]`` while the server is not up yet)."""
    url = f"http://127.0.0.1:{web}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        return json.loads(get(url)[1])["data"]["result"]
    except OSError:
        return []


def _until(web: int, expr: str, done: Callable[[list[dict]], bool]) -> list[dict]:
    """*expr*'s result once *done* says so (60 s at most: then the last one, for the assert)."""
    deadline = time.monotonic() + 60
    while not done(result := _query(web, expr)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return result


def test_a_prometheus_server_scrapes_it(fixed: dict[str, Registry], tmp_path: Path) -> None:
    prometheus = tool("prometheus", "prometheus")
    exposition = _Recorded(fixed)
    server = exposition.serve(0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        web = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 200ms, scrape_timeout: 200ms}\nscrape_configs:\n"
        "  - job_name: pmem\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.server_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'db'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    drv0 = fixed["vm-1"].get("drv0")
    assert drv0 is not None
    series = 'pmem_queue_event_count_total{segment="vm-1",drive_id="drv0"}'
    seen = []
    try:
        # Three steps of counts, each waited for in the server: a counter that only grows.
        for step in range(3):
            drv0.queue_event_count.add(1000)
            want = str(3 + 1000 * (step + 1))
            got = _until(web, series, lambda r, want=want: bool(r) and r[0]["value"][1] == want)
            seen.append(got[0]["value"][1] if got else None)
        result = _query(web, "pmem_queue_event_count_total")
        resets = _query(web, "resets(pmem_queue_event_count_total[5m])")
        total = _query(web, 'sum(pmem_queue_event_count_total{drive_id!="back\\\\slash"})')
    finally:
        prom.terminate()
        prom.wait(60)
        server.shutdown()
        server.server_close()
    assert seen == ["1003", "2003", "3003"]
    assert resets and all(r["value"][1] == "0" for r in resets)
    # Exact sums: the server adds floats, exact below 2**53 (back\slash's 2**64 - 1 is not).
    want = sum(
        counts["queue_event_count"]
        for name in ("vm-1", 'vm"2\\')
        for drive_id, counts in fixed[name].read().items()
        if drive_id != "back\\slash"
    )
    assert want == 3003 + 123_456_789 + 10**15
    assert total and total[0]["value"][1] == str(want)
    # Prometheus 2 asks for OpenMetrics first, and gets it.
    assert exposition.served and all(kind == OPENMETRICS for _, kind in exposition.served)
    assert all("application/openmetrics-text" in (accept or "") for accept, _ in exposition.served)
    got = {(r["metric"]["segment"], r["metric"]["drive_id"]): r["value"][1] for r in result}
    assert got[("vm-1", 'q"uote')] == "123456789"
    assert got[("vm-1", "ünïcode ✓")] == "1000000000000000"
