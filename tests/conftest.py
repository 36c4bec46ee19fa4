"""Fixtures that start real servers: a nats-server per test module (from the wheel, its own store
dir, a free port) and one PostgreSQL per session with a fresh database per test (DESIGN §10).

Server fixtures are synchronous (a server is a child process, not bound to an event loop);
clients are per-test async fixtures on the test's own loop.

The nats-server runs in JWT mode, as `fleet up` does (DESIGN §11): `nc` is the admin identity
(sets up streams and buckets, and is what in-process services use unless a test gives them their
own), `creds(role, name)` issues any other identity, `connect_as(role, name)` connects with one.
Child processes started by a test inherit the admin identity through `FLEET_NATS_CREDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from shared import aio, tokens
from shared.auth.authority import Authority, inbox_of_creds
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.eventlog import EventLog
from shared.subjects import EVENTS_STREAM
from shared.times import format_time, utcnow

aio.install()  # the tests' entry point, as `fleet` and the benchmarks install it

_db_counter = itertools.count()
_token_counter = itertools.count()


Creds = Callable[[str, str], str]


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """The operator and account keys of this module's server."""
    return Authority.load_or_create(tmp_path_factory.mktemp("secrets") / "secrets")


@pytest.fixture(scope="module")
def creds(authority: Authority) -> Creds:
    """`creds(role, name)`: the path of a credentials file for that identity (issued once)."""
    issued: dict[tuple[str, str], str] = {}

    def issue(role: str, name: str) -> str:
        if (role, name) not in issued:
            path = authority.directory / "issued" / f"{role.replace(':', '-')}-{name}.creds"
            issued[(role, name)] = str(authority.write_creds(path, authority.issue(role, name)))
        return issued[(role, name)]

    return issue


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory, authority: Authority, creds: Creds) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream, in JWT mode, for this test module; child processes
    of the module's tests connect as admin (FLEET_NATS_CREDS)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), authority=authority)
    asyncio.run(server.start())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_NATS_CREDS", creds("admin", "admin"))
        yield server
    server.stop()


@pytest.fixture
async def connect_as(nats_server: EmbeddedNats, creds: Creds) -> AsyncIterator[Callable[..., Awaitable[NATS]]]:
    """`await connect_as(role, name, **options)`: a connection under that identity, closed after
    the test, with the identity's own inbox prefix (a device's is `_INBOX.<id>`, DESIGN §11)."""
    opened: list[NATS] = []

    async def connect(role: str, name: str, **options: Any) -> NATS:
        prefix = inbox_of_creds(creds(role, name))  # its own inbox, as shared.connection does
        if prefix is not None:
            options.setdefault("inbox_prefix", prefix)
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.2)
        client = await nats.connect(nats_server.url, user_credentials=creds(role, name), **options)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """An admin NATS connection for one test."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                user_credentials=os.environ["FLEET_NATS_CREDS"])
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
