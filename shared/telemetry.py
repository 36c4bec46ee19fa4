"""OpenTelemetry set-up: one tracer per process, W3C `traceparent` carried in NATS headers
(commands, and every event appended under a command); log lines carry the trace and span ids
(shared/logs.py).

Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (with the
opentelemetry-exporter-otlp package installed), and appended as JSON lines to FLEET_TRACE_FILE
when that is set (handy on one machine, and what the tests read); otherwise nothing is exported.
Metrics are Prometheus's, not OpenTelemetry's: shared/metrics.py."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

tracer = trace.get_tracer("fleetplane")

_log = logging.getLogger(__name__)
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
    if os.environ.get("FLEET_TRACE_FILE"):
        tracer_provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(os.environ["FLEET_TRACE_FILE"])))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            _log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp "
                         "is not installed; nothing is exported")
        else:
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)


def inject_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for NATS message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> otel_context.Context:
    """The trace context carried by incoming NATS headers (or the empty context)."""
    return propagate.extract(headers or {})


def child_span(name: str, traceparent: str | None, start_ns: int, end_ns: int,
               attributes: dict[str, Any] | None = None) -> None:
    """Record a finished span under the trace an event carried (no-op for untraced events), e.g.
    the projection applying an event appended by a traced command."""
    if not traceparent:
        return
    parent = propagate.extract({"traceparent": traceparent})
    span = tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)
