"""OpenTelemetry bridge: every device's cumulative counts as observable counters.

Needs the optional extra ``otel`` (``pip install '.[otel]'`` from a
checkout), which brings opentelemetry-api and -sdk.  docs/python.md, section
OpenTelemetry, has an example.

Each field becomes an observable counter ``pmem.<field>`` (unit
``{event}``, the field's doc as description) with one point per device,
attribute ``pmem.drive_id``, valued at the device's cumulative ``count()``;
given several registries (``instrument(segments={"vm-1": seg1, ...})``),
every point also gets ``pmem.segment``, the registry's key.  The SDK turns the
cumulative counts into deltas where a reader asks for them, so the bridge
never takes deltas itself (nor from the Firecracker lines or Prometheus), and
a failed export loses nothing: the next one carries the total.  There is no
aggregate series (the backend sums).  A retired device's series ends once
``read()`` no longer shows it (after its final flush, or the grace period).

# Design

*One read per registry per collection.*  The SDK collects a reader by
calling every observable instrument's callbacks in turn, from one thread,
under the provider's lock.  The first of the four callbacks to run in a
collection reads every registry (one C peek each, as a Prometheus scrape
does); the other three use that read.  A callback whose field was already
served from the read in hand reads again: that is how a new collection is
told apart, whatever the order of the callbacks, with several readers on one
provider, or with an instrument disabled by configuration.  So the fields of
a device come from one instant; the read is under 1% of a collection either
way, the SDK's work per point being the rest (figures: ``bench/README.md``).

*Uninstrumenting.*  The API cannot unregister an observable instrument, and
an SDK meter asked again for an instrument hands back the first one, its
callbacks fixed.  So the instruments are made once per meter provider and
field, with callbacks that ask each active :class:`Instrumentation` of that
provider; ``uninstrument()`` takes its own out, and ``instrument()`` again
later works.

*Other builds' fields.*  A segment made by a build with more fields (read
read-only) has instruments of its own fields too: made at ``instrument()``
for the segments given, and for a segment that comes to have another list
(reopened), right after the collection whose read first saw it (the SDK
holds its lock while it collects: an instrument made there would wait for
ever), so its points start at the next collection.

*Errors.*  A registry that cannot be read (a segment removed, corrupt) is
logged on the ``pmem_metrics`` logger (WARNING) and left out of that
collection; nothing is raised into the SDK.  With ``reopen=True`` a segment
whose path names a new file is opened again by that path, as
:class:`~pmem_metrics.prometheus.PmemCollector` does.

# Limitations

Recent SDKs keep at most 2000 attribute sets per instrument and reader (the
default ``cardinality_limits``), every device they saw counting; past that,
new devices go into one ``otel.metric.overflow`` point: give the reader a
larger limit (the exporter's is 2**20).  OTLP carries signed 64-bit integers:
a count of 2**63 or more cannot be sent.  A drive id retired and allocated
again starts from zero: a reset to a cumulative reader, and one negative delta
from the SDK's delta conversion.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Callable

try:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.metrics import get_meter_provider as _global_provider
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError("pmem_metrics.otel needs opentelemetry-api: pip install '.[otel]'") from e

from ._binding import FIELD_DOCS, FIELDS
from ._otel_read import DRIVE_ID, SEGMENT, Points, Row
from ._scrape import Sources
from .errors import PmemMetricsError
from .registry import Registry

_log = logging.getLogger("pmem_metrics")

SCOPE = "pmem_metrics"
"""The instrumentation scope (meter name) of the instruments."""
UNIT = "{event}"
"""The instruments' unit: a count of events."""

__all__ = ["DRIVE_ID", "SCOPE", "SEGMENT", "UNIT", "Instrumentation", "instrument"]

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instrumentation:
    """What :func:`instrument` returns: :meth:`uninstrument` stops it."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self._points = Points(sources.label_names)
        self._down = False  # the default registry could not be read (said once)
        self._lock = threading.Lock()
        self._rows: list[Row] = []
        self._served: set[str] | None = None  # None: the first callback reads
        self._active = True
        self._provider: _Provider | None = None

    def uninstrument(self) -> None:
        """Stop: from the next collection on, no point comes from this instrumentation.

        The instruments stay registered with the meter provider (the API
        cannot unregister them), reporting the devices of other active
        instrumentations, or nothing.  Calling it again does nothing.
        """
        with self._lock:
            self._active = False
            self._rows = []
        if self._provider is not None:
            self._provider.remove(self)

    def observe(self, field: str, deadline: float) -> list[Observation]:
        """The points of the field *field*: read anew if that field was served already."""
        with self._lock:
            if not self._active:
                return []
            if self._served is None or field in self._served:
                self._rows = self._read()
                self._served = set()
            self._served.add(field)
            rows = self._rows
        return [
            Observation(v, a)
            for attrs, cols in rows
            if field in cols
            for a, v in zip(attrs, cols[field])
        ]

    def _read(self) -> list[Row]:
        """Every source's attributes per device and counts per field (one peek each)."""
        try:
            readings = self._sources.read()  # a segment that cannot be read: logged once, None
        except (PmemMetricsError, OSError, ValueError) as e:  # the default registry
            if not self._down:
                _log.warning("pmem_metrics: OpenTelemetry: cannot read the default registry: %s", e)
                self._down = True
            return []
        if self._down:
            _log.warning("pmem_metrics: OpenTelemetry: the default registry can be read again")
            self._down = False
        rows = []
        self._points.start()
        for reading in readings:
            points = self._points.row(reading)
            if points is None:
                continue
            row, snap = points
            if self._provider is not None and snap.fields != FIELDS:
                self._provider.later(snap.docs)  # another build's segment: its own fields too
            rows.append(row)
        return rows


class _Provider:
    """A meter provider's instruments, a field each, whose callbacks ask its instrumentations."""

    def __init__(self, provider: MeterProvider) -> None:
        from . import __version__

        self._lock = threading.Lock()
        self._members: tuple[Instrumentation, ...] = ()
        self._meter = provider.get_meter(SCOPE, __version__)
        self._fields: set[str] = set()
        self._fields_lock = threading.Lock()
        self.ensure(FIELD_DOCS)

    def ensure(self, docs: Mapping[str, str]) -> None:
        """An instrument for every field of *docs* (name: doc) that has none yet.

        Never from a callback: the SDK holds its lock while it collects.
        """
        with self._fields_lock:
            for name, doc in docs.items():
                if name not in self._fields:
                    self._fields.add(name)
                    self._meter.create_observable_counter(
                        f"pmem.{name}", callbacks=[self._callback(name)], unit=UNIT, description=doc
                    )

    def later(self, docs: Mapping[str, str]) -> None:
        """:meth:`ensure` *docs*' fields once the collection under way is over (from a callback)."""
        if not set(docs) <= self._fields:
            threading.Thread(target=self.ensure, args=(dict(docs),), daemon=True).start()

    def add(self, member: Instrumentation) -> None:
        with self._lock:
            self._members = (*self._members, member)

    def remove(self, member: Instrumentation) -> None:
        with self._lock:
            self._members = tuple(m for m in self._members if m is not member)

    def _callback(self, field: str) -> _Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            deadline = time.monotonic() + options.timeout_millis / 1000
            return [p for m in self._members for p in m.observe(field, deadline)]

        return observe


_providers: weakref.WeakKeyDictionary[MeterProvider, _Provider] = weakref.WeakKeyDictionary()
_providers_lock = threading.Lock()


def instrument(
    meter_provider: MeterProvider | None = None,
    *,
    segments: Mapping[str, Registry] | None = None,
    patterns: Iterable[str] | None = None,
    reopen: bool = False,
) -> Instrumentation:
    """Report every device's cumulative counts through *meter_provider*; return the handle.

    *meter_provider*: the global one (``opentelemetry.metrics.get_meter_provider()``)
    if None.  Of the process's default registry; or, given *segments* (a
    name for each :class:`~pmem_metrics.Registry`), of each of those, every
    point with attribute ``pmem.segment`` set to its name; and given
    *patterns*, of every segment they match (:mod:`pmem_metrics.fleet`),
    ``pmem.segment`` its path and each named wildcard an attribute of that
    name.  *reopen*: a segment whose path comes to name another file is read
    once more (its final counts), then opened again by that path (read-only
    if it was; never created).  Several instrumentations may share a
    provider (each device under one set of attributes only: the SDK would
    add up two observations of the same set).

    Raises ``TypeError`` for *segments* that do not map ``str`` to
    ``Registry``, or a *reopen* that is not a ``bool``, ``ValueError`` for a
    bad pattern.
    """
    sources = Sources(segments, patterns=patterns, reopen=reopen)
    member = Instrumentation(sources)
    provider = _global_provider() if meter_provider is None else meter_provider
    with _providers_lock:
        if provider not in _providers:
            _providers[provider] = _Provider(provider)
        member._provider = _providers[provider]
        member._provider.add(member)
    for r in (segments or {}).values():  # segments another build made: their fields too
        member._provider.ensure(r.field_docs)
    return member
