"""The agent's logs: one JSON object per line on stderr, with the keys every Fleetplane process
writes (shared/logs.py): `at`, `level`, `logger`, `msg`, `service`, `instance`, `trace_id` and
`span_id` (null here: the agent does not trace), and `exc` with a traceback. The one formatter
of every Fleetplane process: the control plane's (shared/logs.py) adds OpenTelemetry's trace ids
to it, the agent must not import the control plane."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec

_ENCODER = msgspec.json.Encoder()


class JsonLines(logging.Formatter):
    """A log record as one JSON line."""

    def __init__(self, service: str, instance: str = "") -> None:
        super().__init__()
        self.service, self.instance = service, instance

    def trace_ids(self) -> tuple[str | None, str | None]:
        """The trace and span the record was written in (none: the agent does not trace)."""
        return None, None

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = self.trace_ids()
        body: dict[str, object] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
            "service": self.service, "instance": self.instance, "trace_id": trace_id, "span_id": span_id}
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(body).decode()


def setup(level: str, instance: str, service: str = "agent") -> None:
    """JSON lines on stderr at `level` for the whole process."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines(service, instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
