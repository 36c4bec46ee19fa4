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
from fleet_agent.contract import RENEWED_DECODER
from nats.aio.client import Client as NATS

from services.authority.main import connect_renewals, duties
from services.authority.main import run as run_authority
from services.authority.state import KEY, SharedState
from services.registry.handlers import start as start_registry
from shared.auth.authority import Authority, push_account
from shared.auth.renewal import RenewalGate
from shared.auth.revoker import RevokeDevice, revoke_device
from shared.auth.roles import IDENTITY_BUCKET
from shared.cluster import ensure_log
from shared.commands import CommandClient
from shared.config import Settings
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.jetstream import IDENTITY, ensure

Connect = Callable[..., Awaitable[NATS]]
Creds = Callable[[str, str], str]


@pytest.fixture
async def registry(eventlog: EventLog, nc: NATS, connect_as: Connect) -> AsyncIterator[CommandClient]:
    """The registry under its own identity, and an operator to command it."""
    await ensure_log(nc, Settings())  # the log and buckets, as `fleet up` (admin) makes them
    await ensure(nc, IDENTITY)
    own = await connect_as("service:registry", "registry")
    _, service = await start_registry(own, EventLog(own))
    operator = CommandClient(await connect_as("operator", "alice"))
    await operator.send("registry", "add_site", {"site_id": "s1"})
    yield operator
    await service.stop()


@pytest.fixture
async def clean_account(nats_server: EmbeddedNats, authority: Authority, creds: Creds,
                        nc: NATS) -> AsyncIterator[None]:
    """Leave FLEET's revocations as they were for the next test."""
    yield
    authority.prune_revocations(-1e9)
    with authority._changing() as state:  # the next test's log starts at seq 1 again
        state.handled_seq = 0
    with contextlib.suppress(Exception):  # and the shared copy starts from the file again
        await (await nc.jetstream().key_value(IDENTITY_BUCKET)).purge(KEY)
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
        first = RENEWED_DECODER.decode((await flooder.request("fleet.renew.dev-flood", b"", timeout=10)).data)
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


async def test_two_instances_on_two_hosts_never_undo_each_others_revocations(
        registry: CommandClient, nats_server: EmbeddedNats, authority: Authority, creds: Creds,
        clean_account: None, connect_as: Connect, tmp_path: Path) -> None:
    """Each instance has its own copy of the state (two pods): a revocation made by one is in the
    next account the other pushes, because both change the one copy in NATS, each only at the
    revision it read."""
    import shutil

    other_dir = tmp_path / "pod-b" / "secrets"
    other_dir.mkdir(parents=True)
    for key in authority.directory.glob("*.nk"):
        shutil.copy(key, other_dir / key.name)
    shutil.copy(authority.directory / "device-seeds.key", other_dir / "device-seeds.key")
    pod_a, pod_b = authority, Authority.load_or_create(other_dir)
    shared_a = SharedState(await connect_as("service:authority", "authority"), pod_a)
    shared_b = SharedState(await connect_as("service:authority", "authority"), pod_b)
    await shared_a.start()
    await shared_b.start()
    files = {d: str(authority.write_creds(tmp_path / f"{d}.creds", authority.issue_device(d)))
             for d in ("dev-p", "dev-q")}
    system = await nats.connect(nats_server.url, user_credentials=creds("sys", "revoker"))
    try:
        await revoke_device(system, pod_b, RevokeDevice(command_id="c-1", device_id="dev-p"), shared_b)
        # pod A, which had read the state before, revokes another device and pushes its account
        await revoke_device(system, pod_a, RevokeDevice(command_id="c-2", device_id="dev-q"), shared_a)
        for device in ("dev-p", "dev-q"):
            assert not await _connects(nats_server, files[device], device), device
        await shared_b.pull()  # (what its subscription on the key does when the key changes)
        assert pod_a.device_revoked("dev-p") and pod_b.device_revoked("dev-q")
    finally:
        await shared_a.stop()
        await shared_b.stop()
        await system.close()
