"""Every command of every service, every field replaced by hostile values (hypothesis draws them):
the service answers ok or a clear refusal naming what is wrong (never `internal`, never silence),
and a refusal writes nothing to the log (DESIGN §11, "edges validate")."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from services.drift.domain import Policy
from services.drift.handlers import DriftService
from services.registry.handlers import start as start_registry
from services.rollout.handlers import RolloutService
from services.snapshot.handlers import start as start_snapshots
from services.snapshot.handlers import stop as stop_snapshots
from shared.commands import CommandClient
from shared.desired import ensure_bucket
from shared.eventlog import EventLog
from shared.ids import new_command_id
from shared.subjects import EVENTS_STREAM

REFUSALS = {"invalid", "not_found", "conflict", "forbidden"}
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 but tab, LF, CR; and DEL


def strings(value: Any) -> list[str]:
    """Every string and key in a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


# What a careless or hostile client sends in place of a field's value.
hostile = st.one_of(
    st.sampled_from([
        "", " ", "a" * 6000, "nul\x00here", "bell\x07", "\x7f", "../../etc/passwd", "fleet.evt.>", "*",
        10**30, -(10**30), -1, 0, 1e308, -1e308, True, None, [], {}, deep(60), {"a": deep(60)},
        "99999999999999h", "-5s", "1e400", {f"k{i}": "v" for i in range(200)},
    ]),
    st.text(max_size=300),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
)


@pytest.fixture
async def services(nc: NATS, eventlog: EventLog) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The four services, running; each one's command types by command name."""
    await ensure_bucket(nc)
    registry, registry_cmds = await start_registry(nc, eventlog)
    snapshots, snapshot_cmds = await start_snapshots(nc, eventlog)
    rollout = RolloutService(nc, eventlog, tick_interval=0.05)
    await rollout.start()
    drift = DriftService(nc, eventlog, Policy(interval=1, drift_grace=1, reconcile_backoff=1), tick=0.05)
    await drift.start()
    [drift_cmds] = drift.command_services()
    await drift_cmds.start()
    try:
        yield {
            "registry": registry_cmds.command_types,
            "snapshot": snapshot_cmds.command_types,
            "rollout": rollout.commands.command_types,
            "drift": drift_cmds.command_types,
        }
    finally:
        await drift_cmds.stop()
        await drift.stop()
        await rollout.stop()
        await stop_snapshots(snapshots, snapshot_cmds)
        await registry_cmds.stop()
        del registry


def fields_of(command_type: type[Any]) -> list[str]:
    """The body fields a client fills in (the idempotency key is checked by its own test)."""
    info = msgspec.inspect.type_info(command_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return [f.encode_name for f in info.fields if f.encode_name != "command_id"]


async def test_every_command_refuses_hostile_fields_cleanly(
    nc: NATS, eventlog: EventLog, services: dict[str, dict[str, Any]]
) -> None:
    client = CommandClient(nc, actor="operator:fuzz", timeout=10)
    await client.send("registry", "add_site", {"site_id": "s1"})
    await client.send("registry", "add_device", {"device_id": "d1", "site_id": "s1"})
    created = await client.send("snapshot", "create", {"name": "base", "config": {"a": 1}})
    snapshot = created.result["snapshot_id"]
    await client.send("rollout", "start", {"rollout_id": "r1", "snapshot_id": snapshot, "target": "site=s1"})
    fresh = iter(range(10**9))

    def valid_body(command: str) -> dict[str, Any]:
        """A body the command accepts (fresh ids where it creates something)."""
        adds = command.startswith("add")
        return {"site_id": f"site-{next(fresh)}" if command == "add_site" else "s1",
                "device_id": f"dev-{next(fresh)}" if adds else "d1",
                "labels": {"tier": "edge"}, "devices": [{"device_id": f"dev-{next(fresh)}", "site_id": "s1"}],
                "name": f"snap-{next(fresh)}", "config": {"a": 1}, "snapshot_id": snapshot, "a": snapshot,
                "b": snapshot, "rollout_id": "r1"}

    cases = [(service, command, field, fields_of(command_type))
             for service, commands in services.items()
             for command, command_type in commands.items()
             for field in fields_of(command_type)]
    assert len(cases) > 40  # every command of every service takes part
    answers: dict[str, int] = {}
    js = nc.jetstream()

    @settings(max_examples=6, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(values=st.lists(hostile, min_size=len(cases), max_size=len(cases)))
    def draw(values: list[Any]) -> None:
        drawn.append(values)

    drawn: list[list[Any]] = []
    draw()
    for values in drawn:
        for (service, command, field, fields), value in zip(cases, values, strict=True):
            base = valid_body(command)
            body = {"command_id": new_command_id(), **{f: base[f] for f in fields if f in base}, field: value}
            before = await eventlog.last_stream_seq()
            reply = await client.request(service, command, body)
            where = f"{service}.{command} {field}={str(value)[:80]!r}"
            if reply.ok:
                answers["ok"] = answers.get("ok", 0) + 1
                for ref in reply.events:  # what was accepted holds no control character
                    stored = await js.get_msg(EVENTS_STREAM, ref.seq)
                    assert not any(CONTROL.search(t) for t in strings(msgspec.json.decode(stored.data or b"{}"))), (
                        f"{where} stored {stored.data!r}")
                continue
            assert reply.error is not None, where
            assert reply.error.code in REFUSALS, f"{where}: {reply.error}"
            assert reply.error.message, where
            after = await eventlog.last_stream_seq()  # the running rollout writes meanwhile: look at whose
            for seq in range(before + 1, after + 1):
                stored = await js.get_msg(EVENTS_STREAM, seq)
                assert body["command_id"] not in (stored.data or b"").decode(), f"{where} was refused but wrote"
            answers[reply.error.code] = answers.get(reply.error.code, 0) + 1
    assert answers.get("invalid", 0) > len(cases) and answers.get("ok", 0) > len(cases) / 4, answers


async def test_a_deeply_nested_body_is_invalid_not_internal(
    nc: NATS, eventlog: EventLog, services: dict[str, dict[str, Any]]
) -> None:
    client = CommandClient(nc, actor="operator:fuzz")
    body = b'{"command_id": "c1", "name": "n", "config": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    msg = await nc.request("fleet.cmd.snapshot.create", body, timeout=10)
    reply = msgspec.json.decode(msg.data)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid", reply
    refused = await client.request("snapshot", "create", {"name": "n", "config": {"a": deep(40)}})
    assert refused.error is not None and (refused.error.code, refused.error.field) == ("invalid", "config")
