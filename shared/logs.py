"""One log format for every process (DESIGN §16, docs/monitoring.md): JSON lines on stderr with
`at`, `level`, `logger`, `msg`, `service`, `instance`, `trace_id` and `span_id` (null outside a
traced span), and `exc` with the traceback when there is one.

Needs only the standard library and msgspec, so the device agent's distribution can use it too;
trace ids come from OpenTelemetry when it is installed."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import msgspec

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - a device install without OpenTelemetry
    _trace = None  # type: ignore[assignment]

# Loggers that install handlers of their own; theirs go through ours instead.
THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; every line carries the same keys."""

    _encoder = msgspec.json.Encoder()

    def __init__(self, service: str, instance: str = "") -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        trace_id = span_id = None
        if _trace is not None:
            ctx = _trace.get_current_span().get_span_context()
            if ctx.is_valid:
                trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        body: dict[str, Any] = {
            "at": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(), "service": self.service, "instance": self.instance,
            "trace_id": trace_id, "span_id": span_id}
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(body).decode()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, RFC 3339 with microseconds, like every time on the wire."""
        return datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat().replace("+00:00", "Z")


def setup_logging(level: str, service: str, instance: str = "") -> None:
    """JSON lines on stderr at `level` for this process and the libraries' loggers alike."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service, instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
