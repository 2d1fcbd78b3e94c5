"""The Prometheus endpoint without prometheus_client: text rendered from one peek per registry.

What :class:`pmem_metrics.prometheus.PmemCollector` gives through
prometheus_client's ``generate_latest()``, byte for byte, but rendered as
:func:`pmem_metrics.flush_metrics_json` renders JSON: one C snapshot per
registry, and the lines of many devices made by one ``%`` of a template, so
no Python object is made per sample.  Text format 0.0.4::

    # HELP pmem_activate_fails_total Number of times when activate failed on a pmem device.
    # TYPE pmem_activate_fails_total counter
    pmem_activate_fails_total{drive_id="drv0",segment="vm-1"} 1.0
    ...
    pmem_segment_up{segment="vm-1"} 1.0

and OpenMetrics 1.0 when the ``Accept`` header asks for it (HELP and TYPE
name the family, ``pmem_activate_fails``; HELP escapes ``"`` too; the text
ends with ``# EOF``).  Series, labels, values and their order are
PmemCollector's (:mod:`pmem_metrics._scrape` reads for both): the
``segment`` label, ``pmem_segment_up`` and the segment's room given
*segments*, floats written as prometheus_client's ``floatToGoString``.

To mount it: :meth:`Exposition.respond` (status, headers, body for an
``Accept`` and ``Accept-Encoding``), :meth:`Exposition.handler` (for
``http.server``), or :func:`start_http_server` (a daemon thread).

# Limitations

No ``name[]`` filter and no ``_created`` series (PmemCollector has neither);
an ``Accept`` for OpenMetrics other than 1.0.0 gets text 0.0.4.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from http.server import ThreadingHTTPServer
from io import BytesIO
from typing import Any, NamedTuple

from ._binding import FIELD_DOCS
from ._httpd import MetricsHandler, serve
from ._negotiate import gzip_accepted, wants_openmetrics
from ._scrape import ROOM, SCRAPE_TIMEOUT, UP_DOC, Reading, Sources
from .registry import Registry

__all__ = [
    "OPENMETRICS",
    "TEXT",
    "Exposition",
    "MetricsHandler",
    "render",
    "start_http_server",
    "wants_openmetrics",
]

TEXT = "text/plain; version=0.0.4; charset=utf-8"
"""Content-Type of the text format 0.0.4."""
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
"""Content-Type of OpenMetrics 1.0."""

_CHUNK = 256  # devices per template: a scrape's transient objects stay small beside its text
_EXACT = 1_000_000  # below it, floatToGoString(float(n)) is f"{n}.0"; from it, Go's exponents


def go_float(value: float) -> str:
    """*value* (finite, not negative) as prometheus_client's ``floatToGoString`` writes it."""
    s = repr(float(value))
    dot = s.find(".")
    if value > 0 and dot > 6:  # Go writes 1e+06 where Python writes 1000000.0
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _go_count(n: int) -> bytes:
    """``go_float(n)`` of a count, from its digits while a float holds it exactly (2**53)."""
    if n < _EXACT:
        return b"%d.0" % n
    if n >= 1 << 53:
        return go_float(n).encode()
    digits = b"%d" % n
    kept = digits.rstrip(b"0")
    return b"%c%s%se+%02d" % (kept[0], b"." if len(kept) > 1 else b"", kept[1:], len(digits) - 1)


def _label(value: str) -> str:
    """*value* escaped for a label value, as both formats want."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _head(name: str, kind: str, doc: str, om: bool) -> bytes:
    """HELP and TYPE of family *name*: text 0.0.4 names a counter by its samples (``_total``)."""
    if om:
        return f"# HELP {name} {_label(doc)}\n# TYPE {name} {kind}\n".encode()
    name += "_total" if kind == "counter" else ""
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode()


def _series(opening: bytes, keys: list[bytes], values: list[int]) -> Iterator[bytes]:
    """The lines ``OPENING KEY} VALUE``, a chunk of them per template.

    *keys* are escaped for labels and for ``%``: a device's is its id, its
    closing quote and the source's labels, so the devices of many segments
    share templates.  A chunk's template is made by one ``join`` and filled
    by one ``%``: no Python object per line, unless a count needs Go's
    exponent (one from 10**6).
    """
    for i in range(0, len(keys), _CHUNK):
        chunk: list[Any] = values[i : i + _CHUNK]
        closing = b"} %d.0\n"
        if max(chunk) >= _EXACT:
            closing = b"} %s\n"
            chunk = [_go_count(v) for v in chunk]
        yield (opening + (closing + opening).join(keys[i : i + _CHUNK]) + closing) % tuple(chunk)


def _escaped(text: str) -> bytes:
    """*text* escaped for a label value and for ``%``, in UTF-8."""
    return _label(text).replace("%", "%%").encode()


def _labelled(names: tuple[str, ...], values: tuple[str, ...]) -> bytes:
    """The label pairs *names* = *values*, comma-separated, escaped for labels and for ``%``."""
    return ",".join(f'{n}="{_label(v)}"' for n, v in zip(names, values)).replace("%", "%%").encode()


class _Keys:
    """What each source's series carry, escaped once and kept while they are the same.

    A scrape of many segments renders their devices together: each device's
    key (its id, the closing quote and its segment's labels) is made when its
    segment's ids or labels change, not at every scrape.  Only what the last
    scrape used is kept (at most one scrape's worth: a gone segment's go).
    """

    def __init__(self) -> None:
        self._devices: dict[tuple[tuple[str, ...], str], list[bytes]] = {}
        self._labels: dict[tuple[str, ...], bytes] = {}

    def of(
        self, readings: list[Reading], names: tuple[str, ...]
    ) -> tuple[list[list[bytes] | None], list[bytes]]:
        """Each reading's device keys (None if unread), and each one's labels."""
        devices, labels = self._devices, self._labels
        kept_devices: dict[tuple[tuple[str, ...], str], list[bytes]] = {}
        kept_labels: dict[tuple[str, ...], bytes] = {}
        out: list[list[bytes] | None] = []
        for values, snap, _ in readings:
            text = labels.get(values)
            if text is None:
                text = _labelled(names, values)
            kept_labels[values] = text
            if snap is None:
                out.append(None)
                continue
            key = (values, snap.ids_text)
            keys = devices.get(key)
            if keys is None:
                closing = b'"' + (b"," + text if values else b"")
                keys = [i + closing for i in _escaped(snap.ids_text).split(b"\0")[:-1]]
            kept_devices[key] = keys
            out.append(keys)
        self._devices, self._labels = kept_devices, kept_labels  # one assignment each: threads
        return out, [kept_labels[values] for values, _, _ in readings]


def _runs(readings: list[Reading], keys: list[list[bytes] | None]) -> list[_Run]:
    """The read sources in order, those of one field list in a row merged into one run."""
    runs: list[_Run] = []
    for (_, snap, _), mine in zip(readings, keys):
        if snap is None or mine is None:
            continue
        if not runs or runs[-1].fields is not snap.fields:
            runs.append(_Run(snap.fields, snap.docs, [], []))
        runs[-1].keys.extend(mine)
        runs[-1].counts.extend(snap.counts)
    return runs


class _Run(NamedTuple):
    """Devices of sources in a row with one field list: keys, and counts row-major."""

    fields: tuple[str, ...]
    docs: dict[str, str]
    keys: list[bytes]
    counts: list[int]


def _pieces(
    readings: list[Reading], names: tuple[str, ...], om: bool, known: _Keys
) -> Iterator[bytes]:
    """The exposition of *readings*, labelled *names*, in pieces: fields' families, then the
    segments' gauges (given *names*: segments)."""
    keys, labels = known.of(readings, names)
    runs = _runs(readings, keys)
    docs = dict(FIELD_DOCS)  # this library's fields, then any other a segment has
    for run in runs:
        for field in run.fields:
            docs.setdefault(field, run.docs[field])
    for field, doc in docs.items():
        yield _head(f"pmem_{field}", "counter", doc, om)
        opening = f'pmem_{field}_total{{drive_id="'.encode()
        for run in runs:
            if field in run.docs:
                nf = len(run.fields)
                f = run.fields.index(field)
                yield from _series(opening, run.keys, run.counts[f::nf])
    if names:
        yield _head("pmem_segment_up", "gauge", UP_DOC, om)
        up = [int(snap is not None) for _, snap, _ in readings]
        yield from _series(b"pmem_segment_up{", labels, up)
        rooms = [(text, room) for text, (_, _, room) in zip(labels, readings) if room is not None]
        for k, (name, kind, doc) in enumerate(ROOM):
            yield _head(name, kind, doc, om)
            opening = (name + "_total{" if kind == "counter" else name + "{").encode()
            yield from _series(opening, [t for t, _ in rooms], [room[k] for _, room in rooms])
    if om:
        yield b"# EOF\n"


class Exposition:
    """The counters of the default registry, or of *segments*, as Prometheus scrapes them.

    *segments*, *patterns*, *timeout* and *reopen* as for
    :class:`pmem_metrics.prometheus.PmemCollector` (same errors): a segment
    replaced under its path is followed from one scrape to the next, so keep
    one ``Exposition`` for an endpoint.  Scrapes may run in several threads.
    """

    def __init__(
        self,
        segments: Mapping[str, Registry] | None = None,
        *,
        patterns: Iterable[str] | None = None,
        timeout: float = SCRAPE_TIMEOUT,
        reopen: bool = False,
    ) -> None:
        self._sources = Sources(segments, patterns=patterns, timeout=timeout, reopen=reopen)
        self._keys = _Keys()

    def pieces(self, openmetrics: bool = False) -> Iterator[bytes]:
        """Read every registry now; the exposition, in pieces to write or compress one by one."""
        return _pieces(self._sources.read(), self._sources.label_names, openmetrics, self._keys)

    def render(self, openmetrics: bool = False) -> bytes:
        """The text format 0.0.4, or OpenMetrics 1.0, of every registry, read now."""
        out = BytesIO()  # grows in place; getvalue() hands its buffer over without a copy
        for piece in self.pieces(openmetrics):
            out.write(piece)
        return out.getvalue()

    def respond(
        self, accept: str | None = None, accept_encoding: str | None = None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body for a GET with these ``Accept`` and ``Accept-Encoding``."""
        om = wants_openmetrics(accept)
        headers = [("Content-Type", OPENMETRICS if om else TEXT)]
        if gzip_accepted(accept_encoding):
            # Level 1: 12x smaller already, in a third of level 6's time (bench/README.md).
            gz = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: the gzip container
            body = b"".join([*map(gz.compress, self.pieces(om)), gz.flush()])
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = self.render(om)
        headers.append(("Content-Length", str(len(body))))
        return "200 OK", headers, body

    def handler(self) -> type[MetricsHandler]:
        """A :class:`MetricsHandler` subclass serving this exposition, for ``http.server``."""
        return type("PmemMetricsHandler", (MetricsHandler,), {"exposition": self})

    def serve(self, port: int, addr: str = "127.0.0.1") -> ThreadingHTTPServer:
        """Serve it on *addr*:*port* (0: any free port) from a daemon thread; the server.

        *addr* may be a name or an IPv4 or IPv6 address: the socket takes the
        family of its first address.  ``OSError`` if it cannot be served
        there; ``server.shutdown()`` stops it.
        """
        return serve(self.handler(), port, addr)


def render(
    segments: Mapping[str, Registry] | None = None,
    *,
    patterns: Iterable[str] | None = None,
    openmetrics: bool = False,
) -> bytes:
    """One scrape's text of the default registry, or of *segments* and *patterns*."""
    return Exposition(segments, patterns=patterns).render(openmetrics)


def start_http_server(
    port: int,
    addr: str = "127.0.0.1",
    segments: Mapping[str, Registry] | None = None,
    *,
    patterns: Iterable[str] | None = None,
    timeout: float = SCRAPE_TIMEOUT,
    reopen: bool = False,
) -> ThreadingHTTPServer:
    """Serve an :class:`Exposition` of *segments* and *patterns* on *addr*:*port* from a
    daemon thread."""
    return Exposition(segments, patterns=patterns, timeout=timeout, reopen=reopen).serve(port, addr)
