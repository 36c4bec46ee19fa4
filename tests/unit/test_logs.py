"""One log format (shared/logs.py): JSON lines with the same keys everywhere, the trace and span
ids of the current span, and the libraries' own loggers (uvicorn's) through the same handler."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import JsonLogFormatter, setup_logging

KEYS = {"at", "level", "logger", "msg", "service", "instance", "trace_id", "span_id"}


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn_handlers, propagate = uvicorn.handlers[:], uvicorn.propagate
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        uvicorn.handlers[:], uvicorn.propagate = uvicorn_handlers, propagate


def _record(msg: str, exc: bool = False) -> logging.LogRecord:
    try:
        if exc:
            raise ValueError("boom")
    except ValueError:
        import sys

        return logging.LogRecord("services.x", logging.ERROR, __file__, 1, msg, None, sys.exc_info())
    return logging.LogRecord("services.x", logging.INFO, __file__, 1, msg, None, None)


def test_a_line_outside_a_span_has_every_key_with_null_ids() -> None:
    line = json.loads(JsonLogFormatter("registry", "registry@host:1").format(_record("hello")))
    assert set(line) == KEYS
    assert line["service"] == "registry" and line["instance"] == "registry@host:1"
    assert line["trace_id"] is None and line["span_id"] is None
    assert line["at"].endswith("Z") and "." in line["at"]  # UTC with microseconds


def test_a_line_inside_a_span_carries_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonLogFormatter("rollout").format(_record("inside")))
    ctx = span.get_span_context()
    assert line["trace_id"] == f"{ctx.trace_id:032x}" and line["span_id"] == f"{ctx.span_id:016x}"


def test_a_traceback_stays_in_one_line() -> None:
    text = JsonLogFormatter("drift").format(_record("failed", exc=True))
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc"]


@pytest.mark.usefixtures("root_restored")
def test_uvicorns_own_loggers_go_through_the_json_handler(capsys: pytest.CaptureFixture[str]) -> None:
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.addHandler(logging.StreamHandler())  # as uvicorn's default config would
    uvicorn.propagate = False
    setup_logging("info", "api", "api@host:2")
    uvicorn.info("Uvicorn running on http://127.0.0.1:8080")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["service"]) for line in lines] == [("uvicorn.error", "api")]
