"""The embedded servers: PostgreSQL under root runs as an unprivileged user, both servers start
again on the same data dir after a crash, and a NATS that is down gives a clear error."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import asyncpg
import pytest

from shared.config import load_settings
from shared.connection import connect_nats
from shared.embedded import PG_SYSTEM_USER, EmbeddedNats, EmbeddedPostgres, free_port
from shared.errors import Unavailable
from shared.eventlog import EventLog


async def test_postgres_starts_restarts_after_crash_and_keeps_data(tmp_path: Path) -> None:
    server = await EmbeddedPostgres(tmp_path / "pg").start()
    try:
        if os.geteuid() == 0:  # under root the server must run as the unprivileged user
            assert server.proc is not None
            owner = Path(f"/proc/{server.proc.pid}/status").read_text()
            uid = int(next(line for line in owner.splitlines() if line.startswith("Uid:")).split()[1])
            assert uid == pwd.getpwnam(PG_SYSTEM_USER).pw_uid
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.dsn().replace(server.password_file.read_text().strip(), "wrong"))
        assert server.password_file.stat().st_mode & 0o777 == 0o600
    finally:
        server.kill()
    again = await EmbeddedPostgres(tmp_path / "pg", port=server.port).start()
    try:
        conn = await asyncpg.connect(again.dsn())
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    finally:
        again.stop()
    assert again.proc is not None and again.proc.poll() is not None  # stopped, no orphan


async def test_nats_restarts_after_crash_with_the_log_intact(tmp_path: Path) -> None:
    server = await EmbeddedNats(tmp_path / "nats").start()
    settings = load_settings({"nats_url": server.url, "data_dir": str(tmp_path)})
    nc = await connect_nats(settings, "test")
    log = EventLog(nc)
    await log.ensure_stream()
    from tests.integration.test_eventlog import counted

    await log.append("fleet.evt.counter.k", [counted("k", 1)], 0)
    await nc.close()
    server.kill()
    again = await EmbeddedNats(tmp_path / "nats", port=server.port).start()
    try:
        nc = await connect_nats(settings, "test")
        recorded, _ = await EventLog(nc).load("fleet.evt.counter.k")
        assert len(recorded) == 1
        await nc.close()
    finally:
        again.stop()


async def test_nats_down_at_start_gives_a_clear_error(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = load_settings({"nats_url": url, "data_dir": str(tmp_path)})
    with pytest.raises(Unavailable, match=f"cannot reach NATS at {url}"):
        await connect_nats(settings, "test", connect_for=1.0)


async def test_nats_that_comes_up_late_is_waited_for(tmp_path: Path) -> None:
    import asyncio

    port = free_port()
    settings = load_settings({"nats_url": f"nats://127.0.0.1:{port}", "data_dir": str(tmp_path)})
    connecting = asyncio.create_task(connect_nats(settings, "test", connect_for=20.0))
    await asyncio.sleep(1.0)
    server = await EmbeddedNats(tmp_path / "nats", port=port).start()
    try:
        nc = await connecting
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()
