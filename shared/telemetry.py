"""OpenTelemetry set-up: one tracer and one meter for the process, and W3C `traceparent`
carried in NATS headers. Exports over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

tracer = trace.get_tracer("fleetplane")
meter = metrics.get_meter("fleetplane")

_log = logging.getLogger(__name__)


def setup(service_name: str) -> None:
    """Install SDK providers for this process (call once, at start-up)."""
    resource = Resource.create({"service.name": f"fleet-{service_name}"})
    tracer_provider = TracerProvider(resource=resource)
    readers = []
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


def inject_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for NATS message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> object:
    """The trace context carried by incoming NATS headers (or the empty context)."""
    return propagate.extract(headers or {})
