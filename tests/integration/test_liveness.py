"""Alive means working (issue #26): a part whose NATS connection is closed for good exits non-zero
instead of carrying on deaf, and every part answers for its duties on `$SRV.DUTIES`.

The connection is closed from outside the way the server does it for good: the part's user is
revoked (an account JWT update through `$SYS`), the server cuts the connection with an error and
nats-py closes it without reconnecting, the state a read-loop failure also ends in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from fleet.probe import probe
from shared.auth import jwt
from shared.auth.authority import Authority, push_account
from shared.auth.roles import FLEET
from shared.config import Settings
from shared.connection import connect_nats
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.liveness import PartReport, PartStopped, gather_reports, keep_alive
from tests.conftest import Creds

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture
async def system(nats_server: EmbeddedNats, creds: Creds) -> AsyncIterator[NATS]:
    """A connection as the system account's user (pushes account updates)."""
    client = await nats.connect(nats_server.url, user_credentials=creds("sys", "revoker"))
    yield client
    await client.close()


class Revoker:
    """Cuts an identity off the server, and lets it back."""

    def __init__(self, authority: Authority, system: NATS) -> None:
        self.authority = authority
        self.system = system

    async def revoke(self, creds_path: str) -> str:
        user = jwt.read_claims(jwt.jwt_of_creds(Path(creds_path).read_text())).sub
        await push_account(self.system, self.authority.revoke_key(user, int(time.time()) + 1))
        return user

    async def restore(self, user: str) -> None:
        self.authority.state.revocations.pop(user, None)
        await push_account(self.system, self.authority.account_jwt(FLEET))


@pytest.fixture
def revoker(authority: Authority, system: NATS) -> Revoker:
    return Revoker(authority, system)


async def test_keep_alive_ends_when_the_connection_is_closed_for_good(
        nats_server: EmbeddedNats, creds: Creds, revoker: Revoker) -> None:
    path = creds("admin", "keep-alive-victim")
    nc = await connect_nats(Settings(nats_url=nats_server.url, nats_creds=path), "victim")
    watching = asyncio.create_task(keep_alive(nc, every=0.05))
    await asyncio.sleep(0.2)
    assert not watching.done()  # a working connection: it waits
    user = await revoker.revoke(path)
    try:
        with pytest.raises(PartStopped, match="closed for good"):
            await asyncio.wait_for(watching, 30)
    finally:
        await revoker.restore(user)


async def test_keep_alive_ends_when_a_loop_of_the_part_ends(nc: NATS) -> None:
    async def follower() -> None:
        raise RuntimeError("the follower gave up")

    loop = asyncio.create_task(follower(), name="follow")
    with pytest.raises(PartStopped, match=r"follow ended .*gave up"):
        await asyncio.wait_for(keep_alive(nc, [loop], every=0.05), 30)


def _spawn(server: EmbeddedNats, data: Path, creds_path: str, slot: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_NATS_CREDS": creds_path,
           "FLEET_DATA_DIR": str(data), "FLEET_INSTANCE": slot, "FLEET_HEARTBEAT_INTERVAL": "1s"}
    return subprocess.Popen([sys.executable, "-m", "fleet", "service", "drift"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def reaped() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _report_of(nc: NATS, slot: str) -> PartReport:
    for _ in range(300):
        for report in await gather_reports(nc, "drift", wait=0.2):
            if report.instance == slot and any(d.name == "heartbeats" for d in report.duties):
                return report
    raise AssertionError(f"drift {slot} never answered with its duties")


async def test_drift_cut_off_for_good_exits_non_zero_instead_of_carrying_on_deaf(
        nats_server: EmbeddedNats, nc: NATS, eventlog: EventLog, creds: Creds, revoker: Revoker,
        tmp_path: Path, reaped: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    path = creds("admin", "drift-victim")
    drift = _spawn(nats_server, tmp_path, path, "live-drift")
    reaped.append(drift)
    report = await _report_of(nc, "live-drift")
    assert report.part == "drift" and report.stalled == []
    monkeypatch.setenv("FLEET_NATS_URL", nats_server.url)
    monkeypatch.setenv("FLEET_INSTANCE", "live-drift")
    outcome = await probe("drift")  # what the Kubernetes probe runs
    assert outcome["ok"] is True and "stalled" not in outcome
    user = await revoker.revoke(path)
    try:
        code = await asyncio.to_thread(drift.wait, 60)
    finally:
        await revoker.restore(user)
    assert code != 0  # its supervisor restarts it
