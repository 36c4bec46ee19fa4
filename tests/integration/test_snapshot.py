"""The snapshot service through NATS: create (content-addressed, versioned per name), retire,
mark known-good, queries and diff, every refusal, the site view built from registry events, and a
restarted service answering the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from services.registry.handlers import start as start_registry
from services.snapshot.handlers import Snapshots, start, stop
from shared.commands import CommandClient, Context, Reply
from shared.configs import snapshot_id
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.eventlog import EventLog
from shared.times import utcnow

CONFIG = {"db": {"pool": 10, "host": "db.local"}, "log": "info"}


@pytest.fixture
async def services(nc: NATS, eventlog: EventLog) -> AsyncIterator[Snapshots]:
    _registry, registry_service = await start_registry(nc, eventlog)
    snapshots, service = await start(nc, eventlog)
    yield snapshots
    await stop(snapshots, service)
    await registry_service.stop()


@pytest.fixture
def client(nc: NATS) -> CommandClient:
    return CommandClient(nc, actor="operator:test")


async def send(client: CommandClient, command: str, **body: Any) -> Reply:
    return await client.send("snapshot", command, body)


async def refused(client: CommandClient, command: str, **body: Any) -> FleetError:
    with pytest.raises(FleetError) as info:
        await send(client, command, **body)
    return info.value


async def test_create_is_content_addressed_and_versioned(services: Snapshots, client: CommandClient,
                                                         eventlog: EventLog) -> None:
    first = await send(client, "create", name="web", config=CONFIG, artifacts={"app": "1.0"},
                       description="first")
    assert first.result == {"snapshot_id": snapshot_id("web", CONFIG, {"app": "1.0"}, {}),
                            "name": "web", "version": 1, "created": True}
    assert len(first.events) == 1
    # same content in another key order (and another description): same id, no event
    again = await send(client, "create", name="web", artifacts={"app": "1.0"},
                       config={"log": "info", "db": {"host": "db.local", "pool": 10}}, description="x")
    assert again.result == {**first.result, "created": False} and again.events == []
    second = await send(client, "create", name="web", config={**CONFIG, "log": "debug"},
                        artifacts={"app": "1.1"}, parent_id="web@1")
    assert second.result["version"] == 2 and second.result["created"]
    assert second.result["snapshot_id"] == snapshot_id("web", {**CONFIG, "log": "debug"}, {"app": "1.1"}, {},
                                                       first.result["snapshot_id"])
    other = await send(client, "create", name="api", config={})
    assert other.result["version"] == 1
    got = await send(client, "get", snapshot_id=first.result["snapshot_id"])
    assert got.result["config"] == CONFIG and got.result["author"] == "operator:test"
    assert got.result["description"] == "first"
    assert (await send(client, "get", snapshot_id="web")).result["version"] == 2
    assert (await send(client, "get", snapshot_id="web@1")).result["snapshot_id"] == first.result["snapshot_id"]
    listed = await send(client, "list")
    assert [(s["name"], s["version"]) for s in listed.result["snapshots"]] == [("api", 1), ("web", 2), ("web", 1)]
    assert await eventlog.last_stream_seq() == 3


async def test_overrides_need_known_sites(services: Snapshots, client: CommandClient, nc: NATS) -> None:
    registry = CommandClient(nc)
    err = await refused(client, "create", name="web", config={}, overrides={"berlin": {"log": "debug"}})
    assert isinstance(err, Invalid) and err.field == "overrides.berlin"
    # the site is added through the registry; the snapshot service learns it from the log only
    await registry.send("registry", "add_site", {"site_id": "berlin"})
    made = await send(client, "create", name="web", config={"db": {"pool": 1}},
                      overrides={"berlin": {"db": {"pool": 5}}})
    assert made.result["created"]
    await registry.send("registry", "add_site", {"site_id": "paris"})
    for _ in range(500):  # the follower picks the site up from the live log
        if services.site_status("paris") == "active":
            break
        await asyncio.sleep(0.02)
    assert services.site_status("paris") == "active"
    await registry.send("registry", "retire_site", {"site_id": "paris"})
    # refused at once, whether or not the follower has seen the retirement yet
    err = await refused(client, "create", name="web", config={}, overrides={"paris": {}})
    assert isinstance(err, Invalid) and err.field == "overrides.paris" and "retired" in err.message


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"name": "bad name", "config": {}}, Invalid, "name"),
        ({"name": "web", "config": [1, 2]}, Invalid, "config"),
        ({"name": "web", "config": "text"}, Invalid, "config"),
        ({"name": "web"}, Invalid, "config"),
        ({"name": "web", "config": {"blob": "x" * (256 * 1024)}}, Invalid, "config"),
        ({"name": "web", "config": {}, "artifacts": {"app": ""}}, Invalid, "artifacts.app"),
        ({"name": "web", "config": {}, "artifacts": {"bad name": "1"}}, Invalid, "artifacts.bad name"),
        ({"name": "web", "config": {}, "artifacts": {"app": 1}}, Invalid, "artifacts.app"),
        ({"name": "web", "config": {}, "overrides": {"nowhere": {}}}, Invalid, "overrides.nowhere"),
        ({"name": "web", "config": {}, "overrides": {"nowhere": 3}}, Invalid, "overrides.nowhere"),
        ({"name": "web", "config": {}, "parent_id": "ghost-123"}, NotFound, "parent_id"),
        ({"name": "web", "config": {}, "description": "d" * 3000}, Invalid, "description"),
        ({"name": "web", "config": {}, "version": 3}, Invalid, "version"),
    ],
)
async def test_create_refusals_change_nothing(services: Snapshots, client: CommandClient, eventlog: EventLog,
                                              body: dict[str, Any], error: type[FleetError], field: str) -> None:
    err = await refused(client, "create", **body)
    assert type(err) is error, err
    assert err.field == field, err
    assert await eventlog.last_stream_seq() == 0


async def test_retire_and_mark_good(services: Snapshots, client: CommandClient, eventlog: EventLog) -> None:
    sid = (await send(client, "create", name="web", config=CONFIG)).result["snapshot_id"]
    good = await send(client, "mark_good", snapshot_id=sid, target="tier=edge, site in (b,a)")
    assert good.result["known_good"] == [{"target": "tier=edge,site in (b,a)", "rollout_id": None}]
    same = await send(client, "mark_good", snapshot_id=sid, target="tier=edge,site in (b, a)")
    assert same.events == []
    everywhere = await send(client, "mark_good", snapshot_id=sid, rollout_id="r-1")
    assert everywhere.result["known_good"][-1] == {"target": "", "rollout_id": "r-1"}
    err = await refused(client, "mark_good", snapshot_id=sid, target="tier in (a")
    assert isinstance(err, Invalid) and err.field == "target" and "position 10" in err.message
    err = await refused(client, "mark_good", snapshot_id="ghost")
    assert isinstance(err, NotFound) and err.field == "snapshot_id"
    err = await refused(client, "retire", snapshot_id="ghost")
    assert isinstance(err, NotFound)
    retired = await send(client, "retire", snapshot_id=sid, reason="bad build")
    assert retired.result["status"] == "retired"
    assert (await send(client, "retire", snapshot_id=sid)).events == []
    err = await refused(client, "mark_good", snapshot_id=sid)
    assert isinstance(err, Conflict)
    # re-creating a retired snapshot's content is a no-op that names the (retired) snapshot
    again = await send(client, "create", name="web", config=CONFIG)
    assert again.result["snapshot_id"] == sid and not again.result["created"]
    active = await send(client, "list", include_retired=False)
    assert active.result["snapshots"] == []


async def test_rollout_completed_hook_marks_good_once(services: Snapshots, client: CommandClient) -> None:
    sid = (await send(client, "create", name="web", config=CONFIG)).result["snapshot_id"]
    ctx = Context(now=utcnow())
    first = await services.on_rollout_completed(sid, "tier=edge", "r-7", "evt-1", ctx)
    second = await services.on_rollout_completed(sid, "tier=edge", "r-7", "evt-1", ctx)
    assert first == second and len(first) == 1
    assert services.snapshot(sid).known_good[-1].rollout_id == "r-7"


async def test_diff(services: Snapshots, client: CommandClient, nc: NATS) -> None:
    await CommandClient(nc).send("registry", "add_site", {"site_id": "berlin"})
    a = await send(client, "create", name="web", config=CONFIG, artifacts={"app": "1.0", "fw": "7"})
    b = await send(client, "create", name="web", config={"db": {"pool": 20, "host": "db.local"}, "tls": True},
                   artifacts={"app": "1.1", "agent": "2"}, overrides={"berlin": {"log": "debug"}})
    diff = await send(client, "diff", a="web@1", b=b.result["snapshot_id"])
    assert diff.result["a"] == a.result["snapshot_id"]
    assert diff.result["changes"] == [
        {"path": "config.db.pool", "op": "changed", "old": 10, "new": 20},
        {"path": "config.log", "op": "removed", "old": "info"},
        {"path": "config.tls", "op": "added", "new": True},
        {"path": "artifacts.agent", "op": "added", "new": "2"},
        {"path": "artifacts.app", "op": "changed", "old": "1.0", "new": "1.1"},
        {"path": "artifacts.fw", "op": "removed", "old": "7"},
        {"path": "overrides.berlin", "op": "added", "new": {"log": "debug"}},
    ]
    assert (await send(client, "diff", a="web@1", b="web@1")).result["changes"] == []
    err = await refused(client, "diff", a="web@1", b="web@9")
    assert isinstance(err, NotFound) and err.field == "b"


async def test_restart_rebuilds_the_same_answers(nc: NATS, eventlog: EventLog, client: CommandClient) -> None:
    _registry, registry_service = await start_registry(nc, eventlog)
    snapshots, service = await start(nc, eventlog)
    try:
        await CommandClient(nc).send("registry", "add_site", {"site_id": "berlin"})
        a = await send(client, "create", name="web", config=CONFIG, overrides={"berlin": {"x": 1}})
        await send(client, "create", name="web", config={}, parent_id=a.result["snapshot_id"])
        await send(client, "mark_good", snapshot_id=a.result["snapshot_id"], target="site=berlin")
        await send(client, "retire", snapshot_id=a.result["snapshot_id"])
        queries = [("list", {}), ("get", {"snapshot_id": "web@1"}), ("diff", {"a": "web@1", "b": "web@2"})]
        before = [msgspec.json.encode((await send(client, q, **b)).result) for q, b in queries]
        await stop(snapshots, service)
        snapshots2, service2 = await start(nc, eventlog)
        try:
            after = [msgspec.json.encode((await send(client, q, **b)).result) for q, b in queries]
            assert after == before
            assert snapshots2.site_status("berlin") == "active"
            # versions continue, and known content is still recognised
            again = await send(client, "create", name="web", config=CONFIG, overrides={"berlin": {"x": 1}})
            assert not again.result["created"]
            third = await send(client, "create", name="web", config={"v": 3})
            assert third.result["version"] == 3
        finally:
            await stop(snapshots2, service2)
    finally:
        await registry_service.stop()
