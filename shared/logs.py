"""One log format for every process (DESIGN §16, docs/monitoring.md): JSON lines on stderr with
`at`, `level`, `logger`, `msg`, `service`, `instance`, `trace_id` and `span_id` (null outside a
traced span), and `exc` with the traceback when there is one.

The formatter is the device agent's (fleet_agent.logs: the agent may not import the control
plane, the control plane imports the agent); trace ids come from OpenTelemetry when it is
installed."""

from __future__ import annotations

import logging

from fleet_agent.logs import JsonLines

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - a device install without OpenTelemetry
    _trace = None  # type: ignore[assignment]

# Loggers that install handlers of their own; theirs go through ours instead.
THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")


class JsonLogFormatter(JsonLines):
    """The agent's JSON lines (fleet_agent.logs), with the current span's trace ids."""

    def trace_ids(self) -> tuple[str | None, str | None]:
        """The trace and span of the current OpenTelemetry span (none outside one)."""
        if _trace is not None:
            ctx = _trace.get_current_span().get_span_context()
            if ctx.is_valid:
                return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        return None, None


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
        logger.setLevel(logging.NOTSET)  # FLEET_LOG_LEVEL governs them too, whatever they set before
        logger.disabled = False
