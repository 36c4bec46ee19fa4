"""Fixtures that start real servers: a nats-server per test module (from the wheel, its own store
dir, a free port) and one PostgreSQL per session with a fresh database per test (DESIGN §10).

Server fixtures are synchronous (a server is a child process, not bound to an event loop);
clients are per-test async fixtures on the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from shared import tokens
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.eventlog import EventLog
from shared.subjects import EVENTS_STREAM
from shared.times import format_time, utcnow

_db_counter = itertools.count()
_token_counter = itertools.count()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream for this test module."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    asyncio.run(server.start())
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A NATS connection for one test."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def eventlog(nc: NATS) -> EventLog:
    """The event log, emptied for this test: the stream is dropped and created anew."""
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    log = EventLog(nc)
    for attempt in range(50):
        try:
            await log.ensure_stream()
            return log
        except nats.js.errors.ServerError:  # 10049: the deleted stream's store is still being removed
            if attempt == 49:
                raise
            await asyncio.sleep(0.05)
    return log


@pytest.fixture
async def issue_token(nc: NATS) -> Callable[[str], Awaitable[str]]:
    """Issues an HTTP API token of a role (a fresh name each time) in this module's NATS."""

    async def issue(role: str = "viewer") -> str:
        text, _ = await tokens.create(nc, f"{role}-{next(_token_counter)}", role, "operator:test",
                                      format_time(utcnow()))
        return text

    return issue


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL server for the whole test session."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), durable=False)
    asyncio.run(server.start())
    yield server
    server.stop()


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres) -> str:
    """A fresh, empty database for one test."""
    return await postgres.create_database(f"test_{next(_db_counter)}")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir for one test."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
async def dump_tasks_when_stuck(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """When an async test runs to within 15 s of its timeout, print every asyncio task's stack
    (pytest-timeout alone shows only the event loop waiting in select), so a hang says where."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)

    async def watch() -> None:
        await asyncio.sleep(max(limit - 15, 1))
        for task in asyncio.all_tasks():
            print(f"--- {task.get_name()} ({task.get_coro()})", file=sys.stderr)
            task.print_stack(file=sys.stderr)

    watcher = asyncio.create_task(watch()) if limit else None
    yield
    if watcher is not None:
        watcher.cancel()
