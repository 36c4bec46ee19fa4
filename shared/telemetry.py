"""OpenTelemetry set-up: one tracer and one meter per process, W3C `traceparent` carried in NATS
headers (commands, and every event appended under a command), JSON logs stamped with the trace id.

Spans and metrics are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (with the
opentelemetry-exporter-otlp package installed), and spans are appended as JSON lines to
FLEET_TRACE_FILE when that is set (handy on one machine, and what the tests read); otherwise
nothing is exported. Metrics are always readable in-process (`metrics_snapshot`), which is what
each service reports in its `$SRV.STATS`."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

tracer = trace.get_tracer("fleetplane")
meter = metrics.get_meter("fleetplane")

_log = logging.getLogger(__name__)
_state: dict[str, InMemoryMetricReader] = {}  # "reader": the process's in-memory metric reader
_SPAN_ENCODER = msgspec.json.Encoder()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (several processes may share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            parent = span.parent
            lines.append(_SPAN_ENCODER.encode({
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None, "name": span.name,
                "service": span.resource.attributes.get("service.name"), "start": span.start_time,
                "end": span.end_time, "attributes": dict(span.attributes or {})}))
        with self._lock, open(self.path, "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def setup(service_name: str) -> None:
    """Install SDK providers for this process (call once, at start-up)."""
    resource = Resource.create({"service.name": f"fleet-{service_name}"})
    tracer_provider = TracerProvider(resource=resource)
    reader = _state["reader"] = InMemoryMetricReader()
    readers: list[MetricReader] = [reader]
    if os.environ.get("FLEET_TRACE_FILE"):
        tracer_provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(os.environ["FLEET_TRACE_FILE"])))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            _log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp "
                         "is not installed; nothing is exported")
        else:
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


def metrics_snapshot() -> list[tuple[str, dict[str, str], float]]:
    """This process's metrics as (name, labels, value); a histogram gives `<name>_count` and
    `<name>_sum`. Empty before `setup`."""
    reader = _state.get("reader")
    data = reader.get_metrics_data() if reader is not None else None
    out: list[tuple[str, dict[str, str], float]] = []
    if data is None:
        return out
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = {k: str(v) for k, v in (point.attributes or {}).items()}
                    if hasattr(point, "value"):
                        out.append((metric.name, labels, float(point.value)))
                    else:  # a histogram
                        out.append((f"{metric.name}_count", labels, float(point.count)))
                        out.append((f"{metric.name}_sum", labels, float(point.sum)))
    return out


def inject_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for NATS message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> otel_context.Context:
    """The trace context carried by incoming NATS headers (or the empty context)."""
    return propagate.extract(headers or {})


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, with the current trace id when there is one."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"at": self.formatTime(record), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            body["trace_id"] = f"{ctx.trace_id:032x}"
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(body).decode()


def setup_logging(level: str) -> None:
    """JSON logs on stderr at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def child_span(name: str, traceparent: str | None, start_ns: int, end_ns: int,
               attributes: dict[str, Any] | None = None) -> None:
    """Record a finished span under the trace an event carried (no-op for untraced events), e.g.
    the projection applying an event appended by a traced command."""
    if not traceparent:
        return
    parent = propagate.extract({"traceparent": traceparent})
    span = tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)
