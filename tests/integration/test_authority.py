"""The identity duties as a part (`fleet service authority`) against the real nats-server in JWT
mode: a revocation made by command stays made through later retirements and a restart of the
part, and a device flooding its renewal subject gets nothing signed while another device's
retirement still cuts it off at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from services.authority.main import connect_renewals, duties
from services.authority.main import run as run_authority
from services.registry.handlers import start as start_registry
from shared.auth.authority import Authority, push_account
from shared.auth.renewal import ANSWER_DECODER, RenewalGate
from shared.cluster import ensure_log
from shared.commands import CommandClient
from shared.config import Settings
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog

Connect = Callable[..., Awaitable[NATS]]
Creds = Callable[[str, str], str]


@pytest.fixture
async def registry(eventlog: EventLog, nc: NATS, connect_as: Connect) -> AsyncIterator[CommandClient]:
    """The registry under its own identity, and an operator to command it."""
    await ensure_log(nc, Settings())  # the log and buckets, as `fleet up` (admin) makes them
    own = await connect_as("service:registry", "registry")
    _, service = await start_registry(own, EventLog(own))
    operator = CommandClient(await connect_as("operator", "alice"))
    await operator.send("registry", "add_site", {"site_id": "s1"})
    yield operator
    await service.stop()


@pytest.fixture
async def clean_account(nats_server: EmbeddedNats, authority: Authority, creds: Creds) -> AsyncIterator[None]:
    """Leave FLEET's revocations as they were for the next test."""
    yield
    authority.prune_revocations(-1e9)
    with authority._changing() as state:  # the next test's log starts at seq 1 again
        state.handled_seq = 0
    system = await nats.connect(nats_server.url, user_credentials=creds("sys", "revoker"))
    await push_account(system, authority.account_jwt("FLEET"))
    await system.close()


def _settings(nats_server: EmbeddedNats, authority: Authority, creds: Creds) -> Settings:
    authority.write_creds(authority.directory / "system.creds", Path(creds("sys", "revoker")).read_text())
    return Settings(nats_url=nats_server.url, nats_creds=creds("service:authority", "authority"),
                    data_dir=str(authority.directory.parent), lease_ttl=2.0)


async def _connects(nats_server: EmbeddedNats, path: str, device: str) -> bool:
    client = NATS()
    try:
        await client.connect(nats_server.url, user_credentials=path, allow_reconnect=False,
                             max_reconnect_attempts=0, connect_timeout=2, inbox_prefix=f"_INBOX.{device}")
    except nats.errors.Error:
        transport = getattr(client, "_transport", None)
        if transport is not None:
            transport.close()
        return False
    await client.close()
    return True


async def _connected(nats_server: EmbeddedNats, path: str, device: str) -> tuple[NATS, asyncio.Event]:
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    client = await nats.connect(nats_server.url, user_credentials=path, inbox_prefix=f"_INBOX.{device}",
                                closed_cb=on_closed, max_reconnect_attempts=2, reconnect_time_wait=0.1)
    return client, closed


async def test_a_revocation_by_command_survives_retirements_and_a_restart(
        registry: CommandClient, nats_server: EmbeddedNats, authority: Authority, creds: Creds,
        clean_account: None, tmp_path: Path) -> None:
    settings = _settings(nats_server, authority, creds)
    files = {}
    for device in ("dev-x", "dev-y", "dev-z"):
        await registry.send("registry", "add_device", {"device_id": device, "site_id": "s1"})
        files[device] = str(authority.write_creds(tmp_path / f"{device}.creds", authority.issue_device(device)))
    part = asyncio.create_task(run_authority(settings))
    try:
        await registry.wait_ready("authority")
        reply = await registry.send("authority", "revoke_device", {"device_id": "dev-x"})
        assert reply.result == {"device_id": "dev-x", "revoked": True}
        assert not await _connects(nats_server, files["dev-x"], "dev-x")
        _, closed = await _connected(nats_server, files["dev-y"], "dev-y")
        await registry.send("registry", "retire_device", {"device_id": "dev-y"})
        await asyncio.wait_for(closed.wait(), 10)  # the part follows the log and cuts dev-y off
        assert not await _connects(nats_server, files["dev-x"], "dev-x")  # and dev-x stays out
    finally:
        part.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await part
    part = asyncio.create_task(run_authority(settings))  # restarted: from the same state
    try:
        _, closed = await _connected(nats_server, files["dev-z"], "dev-z")
        await registry.send("registry", "retire_device", {"device_id": "dev-z"})
        await asyncio.wait_for(closed.wait(), 30)
        for device in ("dev-x", "dev-y", "dev-z"):
            assert not await _connects(nats_server, files[device], device), device
    finally:
        part.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await part


async def test_a_renewal_flood_gets_nothing_signed_and_delays_no_revocation(
        registry: CommandClient, nats_server: EmbeddedNats, authority: Authority, creds: Creds,
        clean_account: None, connect_as: Connect, nc: NATS, tmp_path: Path) -> None:
    for device in ("dev-flood", "dev-gone"):
        await registry.send("registry", "add_device", {"device_id": device, "site_id": "s1"})
    flood_file = authority.write_creds(tmp_path / "flood.creds", authority.issue_device("dev-flood", expires_in=3600))
    gone_file = authority.write_creds(tmp_path / "gone.creds", authority.issue_device("dev-gone"))
    settings = _settings(nats_server, authority, creds)
    part_nc = await connect_as("service:authority", "authority")
    gate = RenewalGate(3600)
    renewals = await connect_renewals(settings, gate)  # as the part connects them
    system = await nats.connect(nats_server.url, user_credentials=str(authority.directory / "system.creds"))
    duty = asyncio.create_task(duties(EventLog(part_nc), system, renewals, authority, gate))
    flooder = await nats.connect(nats_server.url, user_credentials=str(flood_file), inbox_prefix="_INBOX.dev-flood")
    try:
        first = ANSWER_DECODER.decode((await flooder.request("fleet.renew.dev-flood", b"", timeout=10)).data)
        assert first.jwt is not None  # a due renewal is answered
        _, closed = await _connected(nats_server, str(gone_file), "dev-gone")
        for n in range(20_000):  # then the flood: with and without a reply subject
            await flooder.publish("fleet.renew.dev-flood", b"", reply=f"_INBOX.dev-flood.x{n % 2}" if n % 2 else "")
        await flooder.flush()
        retired_at = time.monotonic()
        await registry.send("registry", "retire_device", {"device_id": "dev-gone"})
        await asyncio.wait_for(closed.wait(), 10)
        print(f"cut off {time.monotonic() - retired_at:.3f} s after its retirement, during a flood; "
              f"renewals {gate.counts}")
        assert gate.counts["renewed"] == 1  # one JWT signed for 20,001 requests
    finally:
        duty.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await duty
        for conn in (flooder, system, renewals):
            await conn.close()
