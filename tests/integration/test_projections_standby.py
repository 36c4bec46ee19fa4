"""Two projection processes on one database (DESIGN §13): each projection's runner is held by one
of them (its lease); when that process is killed (SIGKILL) the other takes the leases over and
the read models catch up with the log, equal to a rebuild."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from projections.main import all_projections
from projections.runner import create_pool, rebuild
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.lease import instance_name
from tests.integration.leases import wait_for_holder
from tests.integration.test_projections import append_history, dump, wait_caught_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


def spawn(server: EmbeddedNats, database_url: str, data: Path, slot: str) -> subprocess.Popen[bytes]:
    """A projections process, named by `slot` as `fleet up` names its instances."""
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_DATABASE_URL": database_url,
           "FLEET_DATA_DIR": str(data), "FLEET_LEASE_TTL": "1.5s", "FLEET_INSTANCE": slot}
    return subprocess.Popen([sys.executable, "-m", "fleet", "service", "projections"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_the_other_process_takes_the_runners_over(nats_server: EmbeddedNats, nc: NATS, eventlog: EventLog,
                                                        database_url: str, pool: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    await append_history(eventlog, devices=40, rounds=1)
    procs = {instance_name("projections", slot): spawn(nats_server, database_url, tmp_path, slot)
             for slot in ("projections-1", "projections-2")}
    try:
        await wait_caught_up(pool, eventlog, timeout=60)
        killed = await wait_for_holder(nc, "projection-fleet", procs)
        procs[killed].send_signal(signal.SIGKILL)
        procs[killed].wait(10)
        await append_history(eventlog, devices=40, rounds=1, seed=8, start=datetime(2031, 1, 1, tzinfo=UTC))
        await wait_caught_up(pool, eventlog, timeout=60)  # only the survivor can have applied these
        survivor = await wait_for_holder(nc, "projection-fleet", procs.keys() - {killed})
        assert survivor != killed
        incremental = await dump(pool)
        for projection in all_projections():
            await rebuild(pool, eventlog, projection)
        assert await dump(pool) == incremental
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)

