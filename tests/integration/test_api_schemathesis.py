"""Schemathesis against the query API's own `/openapi.json`: generated valid and invalid requests
for every query operation (GET), served by uvicorn over real read models; no answer may be a 5xx,
and 2xx answers must match the documented schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import hypothesis
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from projections.api.app import create_app
from projections.api.auth import AuthPolicy, default_allowed_hosts
from projections.api.queries import ReadModels
from projections.runner import create_pool
from shared.embedded import free_port
from shared.eventlog import EventLog
from shared.tokens import TokenVerifier
from tests.integration.test_projections import append_history, running, wait_caught_up

EXAMPLES = 12  # per operation and mode: ~15 operations x 2 modes, a few seconds in all


@pytest.fixture
async def served(eventlog: EventLog, database_url: str,
                 issue_token: Callable[[str], Awaitable[str]]) -> AsyncIterator[tuple[str, str]]:
    pool: asyncpg.Pool = await create_pool(database_url, min_size=1, max_size=8)
    await append_history(eventlog, 30, rounds=1)
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    port = free_port()
    auth = AuthPolicy(TokenVerifier(eventlog.nc), default_allowed_hosts(f"http://127.0.0.1:{port}"))
    server = uvicorn.Server(uvicorn.Config(create_app(ReadModels(pool, eventlog), auth), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", await issue_token("viewer")
    finally:
        server.should_exit = True
        await task
        await pool.close()


def _fuzz(base_url: str, token: str) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the schema of every operation loads
        operation = result.ok()
        if operation.method.upper() != "GET":
            # Commands are forwarded to their services over NATS; with none running here their
            # honest answer is 503, which schemathesis counts as a server error. They are tested
            # with the services that serve them.
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(checks=[not_a_server_error, response_schema_conformance],
                                       headers={"Authorization": f"Bearer {token}"})

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no parameter to get wrong (e.g. /healthz)
        checked.append(f"{operation.method.upper()} {operation.path}")
    return checked


async def test_schemathesis_finds_no_server_error(served: tuple[str, str]) -> None:
    checked = await asyncio.to_thread(_fuzz, *served)
    assert "GET /v1/devices" in checked
    assert len(checked) >= 12
