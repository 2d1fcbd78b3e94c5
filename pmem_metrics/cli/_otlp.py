"""The exporter's OpenTelemetry push (``--otlp-endpoint URL [--otlp-interval SECONDS]``).

Imported only when asked for: it needs the extra ``otel``.  A meter provider
of its own (never the global one) reads the segments through
:func:`pmem_metrics.otel.instrument` and sends them every ``--otlp-interval``
seconds over OTLP/HTTP (protobuf) to the URL given, the full signal URL
(``http://collector:4318/v1/metrics``).

Its resource says ``service.name`` "pmem_metrics export" (``OTEL_SERVICE_NAME``
or ``OTEL_RESOURCE_ATTRIBUTES`` in the environment take precedence, and add
whatever else should tag the process: the host, the VM).  Each point says its
segment in ``pmem.segment``, the path as given: a point attribute, not a
resource attribute per segment, since one provider has one resource and
backends keep point attributes as labels of the series (Prometheus's OTLP
receiver puts resource attributes into ``target_info`` only), as the
Prometheus endpoint's ``segment`` label is.

It asks for cumulative temporality whatever the environment says: a receiver
that is down, or refuses a request, loses nothing, since the next export that
goes through carries the totals.  The SDK's OTLP client retries each export
within its timeout (``OTEL_EXPORTER_OTLP_METRICS_TIMEOUT``, 10 s by default);
when exports start failing, one line on stderr says so, with the client's last
reason (not one a failed export: a collector down for an hour is one line),
and one line says when exports go through again.  The client's own
retry messages stay off stderr.  At the end the provider is shut down: a final
export, within :data:`SHUTDOWN_TIMEOUT` seconds.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from requests import RequestException, Response, Session

from ..otel import instrument
from ..registry import Registry

SHUTDOWN_TIMEOUT = 10.0
"""Seconds the final export (and a retrying one still on its way) may take at the end."""

SERVICE_NAME = "pmem_metrics export"
"""The resource's ``service.name``, unless the environment names the service."""

CARDINALITY_LIMIT = 2**20
"""Devices per instrument the SDK keeps apart (its default, 2000, is too few for a host)."""

_CLIENT_LOGGER = "opentelemetry.exporter"  # the OTLP exporters and their HTTP client
_SDK_READER_LOGGER = "opentelemetry.sdk.metrics._internal.export"  # the periodic reader's


def _not_registered_yet(record: logging.LogRecord) -> bool:
    """A logging filter: not the reader's warning that it ticked before its provider took it."""
    return not record.getMessage().startswith("Cannot call collect on a MetricReader until")


_CUMULATIVE: dict[type, AggregationTemporality] = dict.fromkeys(
    (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter,
     ObservableGauge),
    AggregationTemporality.CUMULATIVE,
)  # fmt: skip


class _LastReason(logging.Handler):
    """Keeps the first line of the OTLP client's last warning or error (and shows none)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text = (record.getMessage().splitlines() or [""])[0]


class _Session(Session):
    """The OTLP client's HTTP session, keeping why its last request failed (or ``""``)."""

    def __init__(self) -> None:
        super().__init__()
        self.failure = ""

    def request(self, *args: Any, **kwargs: Any) -> Response:
        try:
            response = super().request(*args, **kwargs)
        except RequestException as e:  # the client retries, or logs and gives up
            errno_text = re.search(r"\[Errno -?\d+\] [^'\")]*", str(e))
            self.failure = errno_text.group(0) if errno_text else f"{type(e).__name__}: {e}"
            raise
        self.failure = "" if response.ok else f"HTTP {response.status_code} {response.reason}"
        return response


class _Said(MetricExporter):
    """An exporter that says on stderr when its exports start failing, and when they work again."""

    def __init__(self, url: str, who: str) -> None:
        self._session = _Session()
        inner = OTLPMetricExporter(
            endpoint=url, session=self._session, preferred_temporality=_CUMULATIVE
        )
        super().__init__(inner._preferred_temporality, inner._preferred_aggregation)
        self._inner = inner
        self._what = f"{who}: OTLP export to {url}"
        self._failing = False
        self._reason = _LastReason()
        log = logging.getLogger(_CLIENT_LOGGER)
        log.addHandler(self._reason)
        log.propagate = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self._reason.text = self._session.failure = ""
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as e:  # not into the SDK's thread, which logs a traceback
            self._reason.text, result = str(e), MetricExportResult.FAILURE
        failed = result is not MetricExportResult.SUCCESS
        if failed and not self._failing:  # said once, until one goes through
            why = self._session.failure or self._reason.text or "no reason given"
            _say(f"{self._what} failed (the next one carries its counts): {why}")
        elif not failed and self._failing:
            _say(f"{self._what} works again")
        self._failing = failed
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class Pusher:
    """The counters of *segments* pushed to *url* every *interval* seconds, until :meth:`stop`.

    As a context manager, it stops on leaving, but for a ``KeyboardInterrupt``
    (a second stop signal): then the process leaves at once, without a
    final export.
    """

    def __init__(
        self,
        url: str,
        interval: float,
        segments: Mapping[str, Registry],
        who: str,
        patterns: Sequence[str] | None = None,
    ):
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        limits: dict[str, Any] = {}
        if "cardinality_limits" in inspect.signature(PeriodicExportingMetricReader).parameters:
            limits["cardinality_limits"] = {ObservableCounter: CARDINALITY_LIMIT}  # older: none
        exporter = _Said(url, who)
        _say(f"{who}: pushing OpenTelemetry metrics to {url} every {interval:g} s")
        # The reader's thread starts at once; a beat before the provider has
        # it is only a warning (dropped), and the next beat collects.
        logging.getLogger(_SDK_READER_LOGGER).addFilter(_not_registered_yet)
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=interval * 1000, **limits
        )
        self._provider = MeterProvider(metric_readers=[reader], resource=resource)
        instrument(self._provider, segments=segments, patterns=patterns, reopen=True)

    def stop(self) -> None:
        """Shut the provider down: a final export, within :data:`SHUTDOWN_TIMEOUT` seconds."""
        self._provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT * 1000)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            return  # a second stop signal: out at once, no final export (the next run's has it)
        self.stop()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
