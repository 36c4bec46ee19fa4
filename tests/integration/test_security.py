"""DESIGN §11 against the real nats-server in JWT mode: for each role, every probe an attacker
tried (the issue's list) is refused by the server with a permissions violation and leaves the
log unchanged, and what the role is for works. The actor of an event is who authenticated, a
forged one never reaches the log, a forwarder's hand-over is honoured from the API alone, and a
retired device is cut off and cannot come back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from services.registry.handlers import start as start_registry
from shared.auth.actor import ON_BEHALF_OF
from shared.auth.authority import Authority, inbox_of_creds, push_account
from shared.commands import CommandClient
from shared.connection import settled
from shared.desired import DESIRED_STREAM, ensure_bucket
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.lease import LEASE_BUCKET, lease_bucket
from shared.subjects import CHECKPOINTED, EVENTS_STREAM, checkpoint_bucket
from tests.node import NODE, node_modules

Connect = Callable[..., Awaitable[NATS]]
SETTLE = 30.0  # bound on waiting for the server's verdict (never a sleep: we wait for an answer)


@dataclass
class Probe:
    """One connection under test: it records the server's asynchronous permission errors."""

    nc: NATS
    violations: list[str] = field(default_factory=list)
    refused: asyncio.Event = field(default_factory=asyncio.Event)


async def probe_as(connect_as: Connect, role: str, name: str) -> Probe:
    probe: Probe

    async def on_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            probe.violations.append(str(exc))
            probe.refused.set()

    nc = await connect_as(role, name, error_cb=on_error, max_reconnect_attempts=0)
    probe = Probe(nc)
    return probe


async def verdict(probe: Probe, witness: Awaitable[Any]) -> str:
    """`refused` when the server reports a permissions violation first, `allowed` when the
    action's effect is seen first."""
    seen = asyncio.ensure_future(witness)
    refused = asyncio.ensure_future(probe.refused.wait())
    done, _ = await asyncio.wait({seen, refused}, timeout=SETTLE, return_when=asyncio.FIRST_COMPLETED)
    if refused in done:
        answer = "refused"
    elif seen in done and seen.exception() is None:
        answer = "allowed"
    else:
        answer = f"no verdict ({probe.violations}, {seen.exception() if seen.done() else 'pending'!r})"
    for task in (seen, refused):
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    return answer


async def published(probe: Probe, admin: NATS, subject: str, data: bytes = b"{}") -> str:
    """Publish `subject` as the probe; allowed when admin sees the message."""
    sub = await admin.subscribe(subject)
    await settled(admin)
    try:
        await probe.nc.publish(subject, data)
        await settled(probe.nc)
        return await verdict(probe, sub.next_msg(SETTLE))
    finally:
        await sub.unsubscribe()


async def requested(probe: Probe, subject: str, data: bytes = b"{}", headers: dict[str, str] | None = None) -> str:
    """Send a request as the probe; allowed when any reply comes back."""
    return await verdict(probe, probe.nc.request(subject, data, timeout=SETTLE, headers=headers))


async def subscribed(probe: Probe, admin: NATS, subject: str, sample: str, queue: str = "") -> str:
    """Subscribe as the probe; allowed when it receives what admin publishes on `sample`."""
    sub = await probe.nc.subscribe(subject, queue=queue)
    await settled(probe.nc)
    try:
        await admin.publish(sample, b"{}")
        await settled(admin)
        return await verdict(probe, sub.next_msg(SETTLE))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _direct_get_key(device: str) -> str:
    return f"$JS.API.DIRECT.GET.{DESIRED_STREAM}.$KV.fleet_desired.{device}"


# Every probe of the issue, as (name, how to try it). `me` is the probe's own name.
PROBES: dict[str, Callable[[Probe, NATS, str], Awaitable[str]]] = {
    "own heartbeat": lambda p, a, me: published(p, a, f"fleet.hb.s1.{me}"),
    "another device's heartbeat": lambda p, a, me: published(p, a, "fleet.hb.s1.victim"),
    "read own key": lambda p, a, me: requested(p, _direct_get_key(me)),
    "read another device's key": lambda p, a, me: requested(p, _direct_get_key("victim")),
    "write a device's key": lambda p, a, me: published(p, a, "$KV.fleet_desired.victim"),
    # an event of a family the role does not own (a service may append to its own only)
    "publish fleet.evt.*": lambda p, a, me: published(
        p, a, "fleet.evt.rollout.forged" if me != "rollout" else "fleet.evt.device.forged"),
    "send a command": lambda p, a, me: requested(p, "fleet.cmd.registry.add_site", b'{"command_id": "c-1"}'),
    "join a service's queue group": lambda p, a, me: subscribed(p, a, "fleet.cmd.registry.*",
                                                                "fleet.cmd.registry.probe", queue="fleet-registry"),
    "delete the stream": lambda p, a, me: requested(p, f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}", b""),
    "update the stream": lambda p, a, me: requested(p, f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}",
                                                    msgspec.json.encode({"name": EVENTS_STREAM, "max_msgs": 2})),
    "purge the stream": lambda p, a, me: requested(p, f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}", b""),
    "purge the bucket": lambda p, a, me: requested(p, f"$JS.API.STREAM.PURGE.{DESIRED_STREAM}", b""),
    "delete the bucket": lambda p, a, me: requested(p, f"$JS.API.STREAM.DELETE.{DESIRED_STREAM}", b""),
    "subscribe to fleet.>": lambda p, a, me: subscribed(p, a, "fleet.>", "fleet.hb.s1.someone"),
    "read every inbox": lambda p, a, me: subscribed(p, a, "_INBOX.>", "_INBOX.victim.x"),
    "read the log": lambda p, a, me: requested(p, f"$JS.API.DIRECT.GET.{EVENTS_STREAM}",
                                               msgspec.json.encode({"seq": 1})),
    # checkpoints: a checkpointed service writes (and purges replaced chunks of) its own bucket only
    "write its checkpoint": lambda p, a, me: published(p, a, f"$O.{_own_bucket(me)}.C.probe"),
    "purge its checkpoint bucket": lambda p, a, me: requested(p, f"$JS.API.STREAM.PURGE.OBJ_{_own_bucket(me)}", b""),
    "delete its checkpoint bucket": lambda p, a, me: requested(p, f"$JS.API.STREAM.DELETE.OBJ_{_own_bucket(me)}", b""),
    "write another's checkpoint": lambda p, a, me: published(p, a, f"$O.{checkpoint_bucket('drift')}.M.probe"),
    # leases: each part takes its own keys only (a stolen snapshot identity squatting rollout-ticks
    # held every rollout still; the projections' squatted drift, the read models and audit)
    "take the rollout lease": lambda p, a, me: published(p, a, f"$KV.{LEASE_BUCKET}.rollout-ticks",
                                                         b'{"holder": "squatter", "name": "rollout-ticks"}'),
    "take the audit lease": lambda p, a, me: published(p, a, f"$KV.{LEASE_BUCKET}.audit"),
    "read the rollout lease": lambda p, a, me: requested(
        p, f"$JS.API.DIRECT.GET.KV_{LEASE_BUCKET}.$KV.{LEASE_BUCKET}.rollout-ticks", b""),
    # readers leave no state in the log's stream: no durable consumer (990 of them filled the
    # stream's consumer limit), and a push consumer aimed at a device's key is refused to the auditor
    "create a durable consumer": lambda p, a, me: requested(
        p, f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.probe-{me}", msgspec.json.encode(
            {"stream_name": EVENTS_STREAM, "config": {"durable_name": f"probe-{me}", "name": f"probe-{me}",
                                                      "ack_policy": "none"}})),
    "create a durable consumer (legacy)": lambda p, a, me: requested(
        p, f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.probe-{me}", msgspec.json.encode(
            {"stream_name": EVENTS_STREAM, "config": {"durable_name": f"probe-{me}", "ack_policy": "none"}})),
    "push the log onto a device's key": lambda p, a, me: requested(
        p, f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}", msgspec.json.encode(
            {"stream_name": EVENTS_STREAM, "config": {"deliver_subject": "$KV.fleet_desired.victim",
                                                      "ack_policy": "none", "inactive_threshold": 1_000_000_000}})),
}


def _own_bucket(me: str) -> str:
    return checkpoint_bucket(me if me in CHECKPOINTED else "registry")


# role -> (name, the probes it is allowed; every other probe must be refused)
# Residual (docs/security.md, finding 5): a role that follows the log (the services) reads it
# through ordered consumers, which are push consumers, and the server does not check the deliver
# subject a client names; the auditor and the API, which read with direct gets alone, are refused.
FOLLOWS = "push the log onto a device's key"
ALLOWED: dict[str, tuple[str, set[str]]] = {
    "device": ("dev-1", {"own heartbeat", "read own key"}),
    "operator": ("alice", {"send a command"}),
    "auditor": ("audrey", {"read the log"}),
    "service:registry": ("registry", {"join a service's queue group", "read the log", "write its checkpoint",
                                      "purge its checkpoint bucket", FOLLOWS}),
    "service:snapshot": ("snapshot", {"read the log", FOLLOWS}),
    "service:rollout": ("rollout", {"read the log", "read own key", "read another device's key",
                                    "write a device's key", "write its checkpoint", "purge its checkpoint bucket",
                                    "take the rollout lease", "read the rollout lease", FOLLOWS}),
    "service:projections": ("projections", {"read the log", FOLLOWS}),
    "service:audit": ("audit", {"read the log", "take the audit lease", FOLLOWS}),
    "api": ("api", {"read the log", "send a command", "read own key", "read another device's key"}),
    "simulator": ("sim", {"own heartbeat", "another device's heartbeat", "read own key",
                          "read another device's key", "send a command"}),
}


@pytest.fixture
async def world(nc: NATS, eventlog: EventLog) -> AsyncIterator[EventLog]:
    """The log, the bucket, and a stand-in responder on the registry's commands."""
    await ensure_bucket(nc)
    await lease_bucket(nc)
    async def respond(msg: Any) -> None:
        if msg.reply:
            await msg.respond(b'{"ok": true}')

    responder = await nc.subscribe("fleet.cmd.registry.*", queue="probe-responder", cb=respond)
    yield eventlog
    await responder.unsubscribe()


async def log_state(nc: NATS) -> tuple[int, int, int]:
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    return info.state.messages, info.state.last_seq, info.state.first_seq


@pytest.mark.parametrize("role", list(ALLOWED))
async def test_each_role_is_refused_everything_else(role: str, world: EventLog, nc: NATS, connect_as: Connect) -> None:
    name, allowed = ALLOWED[role]
    before = await log_state(nc)
    results: dict[str, str] = {}
    probes = PROBES
    for probe_name, attempt in probes.items():
        probe = await probe_as(connect_as, role, name)  # a fresh connection: verdicts do not mix
        results[probe_name] = await attempt(probe, nc, name)
        await probe.nc.close()
    expected = {p: ("allowed" if p in allowed else "refused") for p in probes}
    assert results == expected
    assert await log_state(nc) == before  # nothing any probe tried reached the log
    assert (await nc.jetstream().stream_info(EVENTS_STREAM)).config.max_msgs == -1
    assert (await nc.jetstream().stream_info(DESIRED_STREAM)).config.deny_purge


async def test_the_bucket_denies_purge_even_to_admin(world: EventLog, nc: NATS) -> None:
    await nc.jetstream().publish("$KV.fleet_desired.x", b"{}")
    with pytest.raises(nats.js.errors.APIError):
        await nc.jetstream().purge_stream(DESIRED_STREAM)
    assert (await nc.jetstream().stream_info(DESIRED_STREAM)).state.messages >= 1


async def test_a_device_reads_its_own_key_only_from_its_own_inbox(world: EventLog, nc: NATS,
                                                                  connect_as: Connect) -> None:
    """Replies to a device go to `_INBOX.<id>`; another inbox is someone else's."""
    probe = await probe_as(connect_as, "device", "dev-2")
    assert await subscribed(probe, nc, "_INBOX.dev-1.>", "_INBOX.dev-1.x") == "refused"
    probe = await probe_as(connect_as, "device", "dev-2")
    assert await subscribed(probe, nc, "_INBOX.dev-2.>", "_INBOX.dev-2.x") == "allowed"


# --- the actor is who authenticated --------------------------------------------------------------


@pytest.fixture
async def registry(eventlog: EventLog, connect_as: Connect) -> AsyncIterator[None]:
    """The registry service under its own identity."""
    own = await connect_as("service:registry", "registry")
    _, service = await start_registry(own, EventLog(own))
    yield
    await service.stop()


async def actor_of_site(eventlog: EventLog, site: str) -> str:
    events, _ = await eventlog.load(f"fleet.evt.site.{site}")
    return events[-1].envelope.actor


async def test_a_forged_actor_never_reaches_the_log(registry: None, eventlog: EventLog, connect_as: Connect) -> None:
    alice = await connect_as("operator", "alice")
    body = msgspec.json.encode({"command_id": "c-forged", "site_id": "s-forged", "actor": "operator:mallory"})
    # the body names someone else, the hand-over header too, and so does a forged server stamp
    reply = await alice.request("fleet.cmd.registry.add_site", body, timeout=10, headers={
        ON_BEHALF_OF: "operator:mallory",
        "Nats-Request-Info": '{"acc": "x", "name_tag": "mallory", "tags": ["fleet-role:admin"]}'})
    assert msgspec.json.decode(reply.data)["ok"] is True
    assert await actor_of_site(eventlog, "s-forged") == "operator:alice"


async def test_the_api_hands_over_its_callers_principal(registry: None, eventlog: EventLog,
                                                        connect_as: Connect) -> None:
    api = await connect_as("api", "api")
    await CommandClient(api, actor="operator:bob").send("registry", "add_site", {"site_id": "s-api"})
    assert await actor_of_site(eventlog, "s-api") == "operator:bob"


async def test_only_forwarders_may_hand_over_a_principal(registry: None, eventlog: EventLog, nc: NATS,
                                                         connect_as: Connect) -> None:
    """An operator's `Fleet-On-Behalf-Of` is ignored; services and devices cannot send commands."""
    carol = await connect_as("operator", "carol")
    await CommandClient(carol, actor="operator:bob").send("registry", "add_site", {"site_id": "s-carol"})
    assert await actor_of_site(eventlog, "s-carol") == "operator:carol"
    before = await log_state(nc)
    for role, name in (("service:snapshot", "snapshot"), ("device", "dev-3"), ("auditor", "audrey")):
        probe = await probe_as(connect_as, role, name)
        body = msgspec.json.encode({"command_id": f"c-{name}", "site_id": f"s-{name}"})
        assert await requested(probe, "fleet.cmd.registry.add_site", body, {ON_BEHALF_OF: "operator:bob"}) == "refused"
    assert await log_state(nc) == before


# --- revocation ----------------------------------------------------------------------------------


async def test_a_retired_device_is_cut_off_and_cannot_reconnect(
    registry: None, eventlog: EventLog, nc: NATS, nats_server: EmbeddedNats, authority: Authority,
    creds: Callable[[str, str], str], connect_as: Connect,
) -> None:
    from shared.auth.revoker import revoke_retired

    operator = CommandClient(await connect_as("operator", "alice"))
    await operator.send("registry", "add_site", {"site_id": "s-rev"})
    await operator.send("registry", "add_device", {"device_id": "dev-gone", "site_id": "s-rev"})
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    device = await connect_as("device", "dev-gone", closed_cb=on_closed, max_reconnect_attempts=3,
                              reconnect_time_wait=0.1)
    await device.publish("fleet.hb.s-rev.dev-gone", b"{}")
    await device.flush()
    system = await nats.connect(nats_server.url, user_credentials=creds("sys", "revoker"))
    revoker = asyncio.create_task(revoke_retired(EventLog(nc), system, authority))
    try:
        await operator.send("registry", "retire_device", {"device_id": "dev-gone"})
        await asyncio.wait_for(closed.wait(), 10)  # cut off within seconds
        refused = NATS()
        with pytest.raises(nats.errors.Error):
            await refused.connect(nats_server.url, user_credentials=creds("device", "dev-gone"),
                                  allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        _close_refused(refused)
        # re-enrolment (rotation) after the revocation issues credentials that work again
        fresh = authority.write_creds(authority.directory / "dev-gone-new.creds", await _later(authority, "dev-gone"))
        again = await nats.connect(nats_server.url, user_credentials=str(fresh), inbox_prefix="_INBOX.dev-gone")
        await again.close()
    finally:
        revoker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await revoker
        # leave the account as it was for the next tests of this module
        authority.state.revocations.clear()
        await push_account(system, authority.account_jwt("FLEET"))
        await system.close()


async def test_re_enrolment_rotates_the_device_key(world: EventLog, nats_server: EmbeddedNats, authority: Authority,
                                                   creds: Callable[[str, str], str], tmp_path: Path) -> None:
    """After revoke + re-enrol the device has a new key: the old (stolen) seed spliced with the new
    JWT is refused, while the new credentials work."""
    stolen = authority.write_creds(tmp_path / "old.creds", authority.issue_device("dev-rot"))
    system = await nats.connect(nats_server.url, user_credentials=creds("sys", "revoker"))
    try:
        await push_account(system, authority.revoke_device("dev-rot"))
        fresh = authority.write_creds(tmp_path / "new.creds", await _later(authority, "dev-rot"))
        spliced = fresh.read_text().replace(_seed(fresh), _seed(stolen))
        for name, text, works in (("new", fresh.read_text(), True), ("spliced", spliced, False)):
            path = authority.write_creds(tmp_path / f"{name}-try.creds", text)
            client = NATS()
            try:
                await client.connect(nats_server.url, user_credentials=str(path), allow_reconnect=False,
                                     max_reconnect_attempts=0, connect_timeout=2, inbox_prefix="_INBOX.dev-rot")
                connected = True
                await client.close()
            except nats.errors.Error:
                connected = False
                _close_refused(client)
            assert connected is works, name
        assert _seed(fresh) != _seed(stolen)
    finally:
        authority.prune_revocations(-1e9)  # leave the account as it was for the next tests
        await push_account(system, authority.account_jwt("FLEET"))
        await system.close()


def _seed(path: Path) -> str:
    lines = path.read_text().splitlines()
    return lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1]


def _close_refused(client: NATS) -> None:
    """nats-py leaves the socket of a refused connect open (for the garbage collector, whose
    ResourceWarning would surface in some later test): close it here."""
    transport = getattr(client, "_transport", None)
    if transport is not None:
        transport.close()


async def _later(authority: Authority, device: str) -> str:
    """Credentials issued after the revocation (revocations refuse JWTs issued up to then)."""
    import time

    revoked_at = max(authority.state.revocations.values())
    while int(time.time()) <= revoked_at:  # wait for the clock: JWT times have one-second resolution
        await asyncio.sleep(0.05)
    return authority.issue_device(device)


# --- a device in another language ------------------------------------------------------------------

def _node_nats() -> Path:
    """The Node `nats` package (tests.node)."""
    return node_modules("nats@2")


async def test_a_device_in_node_works_for_its_own_subjects_only(world: EventLog, nc: NATS, nats_server: EmbeddedNats,
                                                                creds: Callable[[str, str], str]) -> None:
    modules = _node_nats()
    beats = await nc.subscribe("fleet.hb.s1.*")
    await settled(nc)
    script = Path(__file__).with_name("foreign_device.js")
    proc = await asyncio.create_subprocess_exec(
        str(NODE), str(script), nats_server.url, creds("device", "node-1"), "node-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    report = json.loads(out.decode().strip().splitlines()[-1])
    # its own heartbeats arrive; the other device's, sent between them, never does
    first, last = await beats.next_msg(10), await beats.next_msg(10)
    assert [m.subject for m in (first, last)] == ["fleet.hb.s1.node-1"] * 2
    assert [json.loads(m.data)["seq"] for m in (first, last)] == [1, 3]
    assert report["own"] == 404  # its own key answers (404: no desired state yet)
    assert report["other"] == "refused: PERMISSIONS_VIOLATION"
    assert "PERMISSIONS_VIOLATION" in report["errors"], report


async def test_an_agent_renews_short_lived_credentials_and_stays_connected(
    world: EventLog, nc: NATS, nats_server: EmbeddedNats, authority: Authority, tmp_path: Path,
) -> None:
    """Credentials that expire in seconds: the agent asks `fleet.renew.<id>` for a new JWT before
    then, and is still heartbeating after the first one has expired (the server ended that
    session; nats-py reconnected with the renewed file)."""
    import time

    from fleet_agent.agent import Agent, AgentOptions

    from shared.auth.renewal import claims_of, serve_renewals

    path = authority.write_creds(tmp_path / "short.creds", authority.issue_device("dev-short", expires_in=3))
    first = claims_of(path)
    assert first.exp is not None
    renewer = await serve_renewals(nc, authority, lifetime=3600)
    beats = await nc.subscribe("fleet.hb.s1.dev-short")
    agent = Agent(AgentOptions(device_id="dev-short", site_id="s1", state_dir=tmp_path / "state", interval=0.2,
                               servers=(nats_server.url,), creds=path))
    task = asyncio.create_task(agent.run())
    try:
        while time.time() <= first.exp + 1:  # heartbeats keep coming past the first JWT's expiry
            await beats.next_msg(SETTLE)
        await beats.next_msg(SETTLE)
        assert (claims_of(path).exp or 0) > first.exp + 3000
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await renewer.unsubscribe()


async def test_each_identity_reads_only_its_own_inbox(world: EventLog, nc: NATS, connect_as: Connect) -> None:
    """A stolen service identity cannot read the replies meant for others in its account."""
    for role, name in (("service:registry", "registry"), ("auditor", "audrey"), ("api", "api")):
        probe = await probe_as(connect_as, role, name)
        assert await subscribed(probe, nc, "_INBOX.>", "_INBOX.dev-1.x") == "refused"
        probe = await probe_as(connect_as, role, name)
        own = probe.nc._inbox_prefix.decode()
        assert await subscribed(probe, nc, f"{own}.>", f"{own}.x") == "allowed"


async def test_enroll_create_and_revoke_from_the_cli(world: EventLog, nc: NATS, nats_server: EmbeddedNats,
                                                     authority: Authority, creds: Callable[[str, str], str],
                                                     tmp_path: Path) -> None:
    """`fleet device enroll`, `fleet creds create` and `fleet creds revoke-device` against the keys
    in `<data-dir>/secrets/`: the files are 0600 and work, and a revoked device is refused."""
    import sys

    data = authority.directory.parent
    authority.write_creds(authority.directory / "system.creds", authority.issue("sys", "cli"))
    env = {**os.environ, "FLEET_NATS_URL": nats_server.url}

    async def fleet(*args: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet", "--data-dir", str(data), *args, "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        decoded: dict[str, Any] = json.loads(out)
        return decoded

    device_file, operator_file = tmp_path / "dev-cli.creds", tmp_path / "zed.creds"
    enrolled = await fleet("device", "enroll", "dev-cli", "--out", str(device_file))
    assert enrolled["name"] == "dev-cli" and device_file.stat().st_mode & 0o777 == 0o600
    created = await fleet("creds", "create", "--role", "operator", "--name", "zed", "--out", str(operator_file))
    assert created["name"] == "zed" and operator_file.stat().st_mode & 0o777 == 0o600

    beats = await nc.subscribe("fleet.hb.s1.dev-cli")
    await settled(nc)
    device = await nats.connect(nats_server.url, user_credentials=str(device_file), inbox_prefix="_INBOX.dev-cli")
    await device.publish("fleet.hb.s1.dev-cli", b"{}")
    await device.flush()
    await beats.next_msg(SETTLE)
    await device.close()
    zed = await nats.connect(nats_server.url, user_credentials=str(operator_file),
                             inbox_prefix=inbox_of_creds(operator_file) or "_INBOX")  # its own inbox
    reply = await zed.request("fleet.cmd.registry.add_site", b'{"command_id": "c-zed"}', timeout=SETTLE)
    assert reply.data  # the stand-in responder answered an operator's command
    await zed.close()

    try:
        assert (await fleet("creds", "revoke-device", "dev-cli"))["revoked"] is True
        # a revocation younger than the longest credential lifetime is kept
        assert (await fleet("creds", "prune-revocations", "--older-than", "1h"))["dropped"] == 0
        refused = NATS()
        with pytest.raises(nats.errors.Error):
            await refused.connect(nats_server.url, user_credentials=str(device_file),
                                  allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        _close_refused(refused)
    finally:
        system = await nats.connect(nats_server.url, user_credentials=creds("sys", "restore"))
        authority.state.revocations.clear()  # the CLI saved its revocation: drop it again
        authority._save()
        await push_account(system, authority.account_jwt("FLEET"))
        await system.close()


async def test_operators_cannot_read_each_others_replies(registry: None, nc: NATS, connect_as: Connect) -> None:
    """Each operator has an inbox prefix of its own (`_INBOX_operator.<name>`): another operator
    listening on inboxes is refused and never sees the reply to alice's command, which she gets."""
    alice = CommandClient(await connect_as("operator", "alice"))
    for index, (name, pattern) in enumerate((("bob", "_INBOX.>"), ("carol", "_INBOX_operator.alice.>"))):
        probe = await probe_as(connect_as, "operator", name)
        sub = await probe.nc.subscribe(pattern)
        await settled(probe.nc)
        assert (await alice.send("registry", "add_site", {"site_id": f"s-inbox-{index}"})).ok
        assert await verdict(probe, sub.next_msg(SETTLE)) == "refused"
