"""The registry service through NATS: every command and refusal, the bulk import report, and a
restarted service rebuilding the same state from the log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from services.registry.handlers import Registry, start
from shared.commands import CommandClient, CommandService, Reply
from shared.envelope import seal
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.eventlog import EventLog
from shared.events.registry import DeviceAdded, SiteAdded
from shared.times import utcnow


@pytest.fixture
async def registry(nc: NATS, eventlog: EventLog) -> AsyncIterator[Registry]:
    reg, service = await start(nc, eventlog)
    yield reg
    await service.stop()


@pytest.fixture
def client(nc: NATS) -> CommandClient:
    return CommandClient(nc, actor="operator:test")


async def send(client: CommandClient, command: str, **body: Any) -> Reply:
    return await client.send("registry", command, body)


async def refused(client: CommandClient, command: str, **body: Any) -> FleetError:
    with pytest.raises(FleetError) as info:
        await send(client, command, **body)
    return info.value


async def count_events(eventlog: EventLog) -> int:
    return await eventlog.last_stream_seq()


async def test_sites_lifecycle(registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    reply = await send(client, "add_site", site_id="berlin-1", name="Berlin", labels={"region": "eu"})
    assert reply.result["status"] == "active" and reply.result["labels"] == {"region": "eu"}
    assert [e.subject for e in reply.events] == ["fleet.evt.site.berlin-1"]
    again = await send(client, "add_site", site_id="berlin-1", name="Berlin", labels={"region": "eu"})
    assert again.events == []  # identical re-add: no-op
    err = await refused(client, "add_site", site_id="berlin-1", name="Other")
    assert isinstance(err, Conflict) and err.field == "site_id"
    reply = await send(client, "update_site", site_id="berlin-1", metadata={"tz": "Europe/Berlin"})
    assert reply.result["metadata"] == {"tz": "Europe/Berlin"} and reply.result["name"] == "Berlin"
    assert (await send(client, "update_site", site_id="berlin-1", name="Berlin")).events == []
    err = await refused(client, "update_site", site_id="nowhere")
    assert isinstance(err, NotFound) and err.field == "site_id"
    got = await send(client, "get_site", site_id="berlin-1")
    assert got.result["active_devices"] == 0
    reply = await send(client, "retire_site", site_id="berlin-1", reason="closed")
    assert reply.result["status"] == "retired"
    assert (await send(client, "retire_site", site_id="berlin-1")).events == []
    err = await refused(client, "add_device", device_id="d1", site_id="berlin-1")
    assert isinstance(err, Conflict) and err.field == "site_id"
    err = await refused(client, "update_site", site_id="berlin-1", name="x")
    assert isinstance(err, Conflict)
    listed = await send(client, "list_sites")
    assert listed.result["sites"] == []
    listed = await send(client, "list_sites", include_retired=True)
    assert [s["site_id"] for s in listed.result["sites"]] == ["berlin-1"]
    assert await count_events(eventlog) == 3


@pytest.mark.parametrize(
    ("command", "body", "error", "field"),
    [
        ("add_site", {"site_id": "bad id"}, Invalid, "site_id"),
        ("add_site", {"site_id": "s", "labels": {"Bad": "x"}}, Invalid, "labels.Bad"),
        ("add_site", {"site_id": "s", "metadata": {"x": "y" * 20000}}, Invalid, "metadata"),
        ("add_site", {"site_id": "s", "extra": 1}, Invalid, "extra"),
        ("add_device", {"device_id": "d!", "site_id": "s1"}, Invalid, "device_id"),
        ("add_device", {"device_id": "d", "site_id": "nowhere"}, NotFound, "site_id"),
        ("add_device", {"device_id": "d", "site_id": "s1", "kind": "no way"}, Invalid, "kind"),
        ("add_device", {"device_id": "d", "site_id": "s1", "parent_id": "ghost"}, NotFound, "parent_id"),
        ("add_device", {"device_id": "d", "site_id": "s1", "parent_id": "d"}, Invalid, "parent_id"),
        ("add_device", {"device_id": "d", "site_id": "s1", "labels": {"site": "x"}}, Invalid, "labels.site"),
        ("add_device", {"device_id": "d", "site_id": "s1", "labels": {"k": "v" * 300}}, Invalid, "labels.k"),
        ("add_device", {"device_id": "d", "site_id": "s1", "labels": ["a"]}, Invalid, "labels"),
        ("add_device", {"device_id": "d"}, Invalid, "site_id"),
        ("update_device", {"device_id": "ghost", "kind": "x"}, NotFound, "device_id"),
        ("relabel_device", {"device_id": "ghost", "labels": {}}, NotFound, "device_id"),
        ("move_device", {"device_id": "ghost", "site_id": "s1"}, NotFound, "device_id"),
        ("retire_device", {"device_id": "ghost"}, NotFound, "device_id"),
        ("retire_site", {"site_id": "ghost"}, NotFound, "site_id"),
        ("get_device", {"device_id": "ghost"}, NotFound, "device_id"),
        ("list_devices", {"selector": "tier in (a,"}, Invalid, "selector"),
        ("list_devices", {"limit": 0}, Invalid, "limit"),
    ],
)
async def test_refusals_change_nothing(registry: Registry, client: CommandClient, eventlog: EventLog,
                                       command: str, body: dict[str, Any], error: type[FleetError],
                                       field: str) -> None:
    await send(client, "add_site", site_id="s1")
    before = await count_events(eventlog)
    err = await refused(client, command, **body)
    assert type(err) is error, err
    assert err.field == field, err
    assert await count_events(eventlog) == before


async def test_device_lifecycle(registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    await send(client, "add_site", site_id="s1")
    await send(client, "add_site", site_id="s2")
    gw = await send(client, "add_device", device_id="gw-1", site_id="s1", kind="gateway")
    assert gw.result["kind"] == "gateway"
    reply = await send(client, "add_device", device_id="press-1", site_id="s1", parent_id="gw-1",
                       labels={"tier": "edge"}, metadata={"serial": "A1"})
    assert reply.result == {"device_id": "press-1", "status": "active", "site_id": "s1", "kind": "device",
                            "parent_id": "gw-1", "labels": {"tier": "edge"}, "metadata": {"serial": "A1"},
                            "retired_reason": ""}
    same = await send(client, "add_device", device_id="press-1", site_id="s1", parent_id="gw-1",
                      labels={"tier": "edge"}, metadata={"serial": "A1"})
    assert same.events == []
    err = await refused(client, "add_device", device_id="press-1", site_id="s1", labels={"tier": "core"})
    assert isinstance(err, Conflict) and err.field == "parent_id"

    # a cycle through the parent chain is refused
    err = await refused(client, "update_device", device_id="gw-1", parent_id="press-1")
    assert isinstance(err, Conflict) and err.field == "parent_id"
    upd = await send(client, "update_device", device_id="press-1", parent_id="", metadata={"serial": "B2"})
    assert upd.result["parent_id"] is None and upd.result["metadata"] == {"serial": "B2"}
    lab = await send(client, "relabel_device", device_id="press-1", labels={"tier": "core", "line": "3"})
    assert lab.result["labels"] == {"tier": "core", "line": "3"}
    assert (await send(client, "relabel_device", device_id="press-1", labels={"tier": "core", "line": "3"})).events == []
    err = await refused(client, "move_device", device_id="press-1", site_id="nowhere")
    assert isinstance(err, NotFound) and err.field == "site_id"
    moved = await send(client, "move_device", device_id="press-1", site_id="s2")
    assert moved.result["site_id"] == "s2"

    listed = await send(client, "list_devices", selector="site=s2,tier=core")
    assert [d["device_id"] for d in listed.result["devices"]] == ["press-1"]
    listed = await send(client, "list_devices", selector="kind=gateway")
    assert [d["device_id"] for d in listed.result["devices"]] == ["gw-1"]
    listed = await send(client, "list_devices", site_id="s1")
    assert [d["device_id"] for d in listed.result["devices"]] == ["gw-1"]

    err = await refused(client, "retire_site", site_id="s2")
    assert isinstance(err, Conflict) and "1 active" in err.message
    retired = await send(client, "retire_device", device_id="press-1", reason="scrapped")
    assert retired.result["status"] == "retired"
    assert (await send(client, "retire_device", device_id="press-1")).events == []
    changes: list[tuple[str, dict[str, Any]]] = [("relabel_device", {"labels": {}}),
                                                 ("move_device", {"site_id": "s1"}), ("update_device", {"kind": "x"})]
    for command, body in changes:
        err = await refused(client, command, device_id="press-1", **body)
        assert isinstance(err, Conflict), command
    err = await refused(client, "add_device", device_id="press-1", site_id="s1")
    assert isinstance(err, Conflict) and "not reused" in err.message
    # retired devices are not listed (cannot be targeted) unless asked
    assert (await send(client, "list_devices", selector="tier=core")).result["devices"] == []
    everything = await send(client, "list_devices", include_retired=True)
    assert everything.result["total"] == 2
    assert (await send(client, "retire_site", site_id="s2")).result["status"] == "retired"


async def test_same_command_id_appends_once(registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    await send(client, "add_site", site_id="s1")
    body = {"command_id": "cmd-1", "device_id": "d1", "site_id": "s1"}
    first = await client.send("registry", "add_device", body)
    second = await client.send("registry", "add_device", body)
    assert first.events == second.events and len(first.events) == 1


async def test_list_pages(registry: Registry, client: CommandClient) -> None:
    await send(client, "add_site", site_id="s1")
    await send(client, "import_devices", devices=[{"device_id": f"d{i:02d}", "site_id": "s1"} for i in range(25)])
    seen: list[str] = []
    after = None
    while True:
        page = await send(client, "list_devices", limit=10, after=after)
        seen += [d["device_id"] for d in page.result["devices"]]
        after = page.result["next"]
        if after is None:
            break
    assert seen == [f"d{i:02d}" for i in range(25)]


async def test_import_report(registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    await send(client, "add_site", site_id="s1")
    await send(client, "add_device", device_id="existing", site_id="s1", labels={"a": "1"})
    lines: list[Any] = [
        {"device_id": "gw", "site_id": "s1", "kind": "gateway"},
        {"device_id": "child", "site_id": "s1", "parent_id": "gw"},  # parent from an earlier line
        {"device_id": "bad id", "site_id": "s1"},
        {"device_id": "x1", "site_id": "nowhere"},
        {"device_id": "existing", "site_id": "s1", "labels": {"a": "1"}},  # identical: unchanged
        {"device_id": "existing", "site_id": "s1", "labels": {"a": "2"}},  # different: conflict
        {"device_id": "x2", "site_id": "s1", "labels": {"Bad": "1"}},
        {"device_id": "x3"},
        {"device_id": "x4", "site_id": "s1", "colour": "red"},
        "not an object",
        {"device_id": "gw", "site_id": "s1", "kind": "gateway"},  # repeated in the same file
    ]
    reply = await send(client, "import_devices", devices=lines)
    report = reply.result
    assert report["added"] == 2 and report["unchanged"] == 2
    refusals = {(r["index"], r["device_id"], r["code"], r["field"]) for r in report["refused"]}
    assert refusals == {
        (2, "bad id", "invalid", "device_id"),
        (3, "x1", "not_found", "site_id"),
        (5, "existing", "conflict", "labels"),
        (6, "x2", "invalid", "labels.Bad"),
        (7, "x3", "invalid", "site_id"),
        (8, "x4", "invalid", "colour"),
        (9, None, "invalid", None),
    }
    assert all(r["message"] for r in report["refused"])
    child = await send(client, "get_device", device_id="child")
    assert child.result["parent_id"] == "gw"
    before = await count_events(eventlog)
    again = (await send(client, "import_devices", devices=lines)).result
    assert again["added"] == 0 and again["unchanged"] == 4 and len(again["refused"]) == 7
    assert await count_events(eventlog) == before


async def test_import_batches_are_atomic_and_large_imports_land(
        registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    await send(client, "add_site", site_id="s1")
    lines = [{"device_id": f"dev-{i}", "site_id": "s1", "labels": {"n": str(i % 7)}} for i in range(2500)]
    reply = await send(client, "import_devices", devices=lines)
    assert reply.result["added"] == 2500 and reply.result["refused"] == []
    assert len(reply.events) == 2500
    assert len(registry.devices.slots) == 2500
    assert (await send(client, "list_devices", selector="n=3", limit=5000)).result["total"] == len(range(3, 2500, 7))
    err = await refused(client, "import_devices", devices=[{}] * 2501)
    assert isinstance(err, Invalid) and err.field == "devices"


async def test_import_falls_back_when_another_writer_got_there_first(
        registry: Registry, client: CommandClient, eventlog: EventLog, nc: NATS) -> None:
    """A device written by someone else after the import decided is reported, not duplicated."""
    await send(client, "add_site", site_id="s1")
    # a second, independent registry instance writes d-5 behind this one's back
    other = Registry(eventlog)
    await other.rebuild()
    other_service = CommandService(nc, "registry-other")
    other.register(other_service)
    await other_service.start()
    try:
        await client.send("registry-other", "add_device", {"device_id": "d-5", "site_id": "s1", "kind": "plc"})
    finally:
        await other_service.stop()
    lines = [{"device_id": f"d-{i}", "site_id": "s1"} for i in range(10)]
    report = (await send(client, "import_devices", devices=lines)).result
    assert report["added"] == 9
    assert [(r["index"], r["code"], r["field"]) for r in report["refused"]] == [(5, "conflict", "kind")]
    added = [r async for r in eventlog.replay(subjects="fleet.evt.device.*")]
    assert sorted(r.subject for r in added) == sorted(f"fleet.evt.device.d-{i}" for i in range(10))
    assert all(isinstance(r.event, DeviceAdded) for r in added)


async def test_restart_rebuilds_the_same_answers(nc: NATS, eventlog: EventLog, client: CommandClient) -> None:
    reg, service = await start(nc, eventlog)
    await send(client, "add_site", site_id="s1", name="One")
    await send(client, "add_site", site_id="s2")
    await send(client, "import_devices", devices=[{"device_id": f"d{i}", "site_id": "s1"} for i in range(20)])
    await send(client, "relabel_device", device_id="d3", labels={"tier": "edge"})
    await send(client, "move_device", device_id="d4", site_id="s2")
    await send(client, "retire_device", device_id="d5")
    await send(client, "add_device", device_id="d6b", site_id="s1", parent_id="d6")
    queries: list[tuple[str, dict[str, Any]]] = [
        ("list_sites", {"include_retired": True}), ("list_devices", {"include_retired": True}),
        ("get_device", {"device_id": "d3"}), ("get_site", {"site_id": "s2"})]
    before = [msgspec.json.encode((await send(client, q, **b)).result) for q, b in queries]
    await service.stop()
    reg2, service2 = await start(nc, eventlog)
    try:
        after = [msgspec.json.encode((await send(client, q, **b)).result) for q, b in queries]
        assert after == before
        assert {k: v.state for k, v in reg2.devices.slots.items()} == {k: v.state for k, v in reg.devices.slots.items()}
        # the restarted service still refuses what it should and accepts what it should
        err = await refused(client, "add_device", device_id="d5", site_id="s1")
        assert isinstance(err, Conflict)
        assert (await send(client, "add_device", device_id="d1", site_id="s1")).events == []
    finally:
        await service2.stop()


async def fleet(nats_url: str, *args: str, creds: str | None = None) -> tuple[int, str, str]:
    """Run the real `fleet` CLI against the test's server (as a subprocess, so this loop keeps
    serving), as the fixture's admin or as the identity of `creds`."""
    import os
    import sys

    env = {**os.environ, "FLEET_NATS_URL": nats_url, "COLUMNS": "200",
           **({"FLEET_NATS_CREDS": creds} if creds is not None else {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from fleet.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_against_a_running_registry(registry: Registry, nats_server: Any, tmp_path: Any) -> None:
    from services.snapshot.handlers import start as start_snapshot
    from services.snapshot.handlers import stop as stop_snapshot

    snapshots, snapshot_service = await start_snapshot(registry.log.nc, registry.log)
    url = nats_server.url
    try:
        code, out, _ = await fleet(url, "site", "add", "berlin-1", "--name", "Berlin", "--label", "region=eu", "--json")
        assert code == 0 and json.loads(out)["result"]["labels"] == {"region": "eu"}
        code, _, err = await fleet(url, "site", "add", "berlin-1", "--name", "Other")
        assert code == 4 and "conflict" in err
        csv_file = tmp_path / "devices.csv"
        csv_file.write_text("device_id,site_id,kind,labels,metadata\n"
                            "gw-1,berlin-1,gateway,tier=edge;line=3,\n"
                            "cam-1,nowhere,camera,,\n"
                            "cam-2,berlin-1,camera,Bad=x,\n"
                            'cam-3,berlin-1,camera,,"{""serial"": ""C3""}"\n')
        code, out, _ = await fleet(url, "device", "import", str(csv_file), "--json")
        report = json.loads(out)
        assert code == 2  # some lines were refused
        assert (report["added"], report["unchanged"]) == (2, 0)
        assert [(r["line"], r["device_id"], r["code"], r["field"]) for r in report["refused"]] == [
            (3, "cam-1", "not_found", "site_id"), (4, "cam-2", "invalid", "labels.Bad")]
        code, out, _ = await fleet(url, "device", "import", str(csv_file), "--json")
        assert code == 2 and json.loads(out)["unchanged"] == 2 and json.loads(out)["added"] == 0
        jsonl = tmp_path / "more.jsonl"
        jsonl.write_text('{"device_id": "plc-1", "site_id": "berlin-1", "kind": "plc", "parent_id": "gw-1"}\n'
                         "{broken\n")
        code, out, _ = await fleet(url, "device", "import", str(jsonl), "--json")
        assert code == 2 and json.loads(out)["added"] == 1 and json.loads(out)["refused"][0]["line"] == 2
        code, out, _ = await fleet(url, "device", "list", "--selector", "kind in (gateway,plc)", "--json")
        assert code == 0 and [d["device_id"] for d in json.loads(out)["result"]["devices"]] == ["gw-1", "plc-1"]
        code, out, _ = await fleet(url, "device", "list", "--selector", "kind in (gateway")
        assert code == 2
        code, out, _ = await fleet(url, "device", "label", "plc-1", "tier=edge")
        assert code == 0 and "relabeled device plc-1" in out
        code, out, _ = await fleet(url, "device", "update", "plc-1", "--parent", "", "--metadata", '{"rack": 4}', "--json")
        assert code == 0 and json.loads(out)["result"]["parent_id"] is None
        assert json.loads(out)["result"]["metadata"] == {"rack": 4}
        code, out, _ = await fleet(url, "device", "move", "plc-1", "--site", "nowhere")
        assert code == 3
        code, out, _ = await fleet(url, "device", "retire", "plc-1", "--json")
        assert code == 0 and json.loads(out)["result"]["status"] == "retired"
        code, out, _ = await fleet(url, "device", "show", "ghost")
        assert code == 3
        code, out, _ = await fleet(url, "site", "list")
        assert code == 0 and "berlin-1" in out and "region=eu" in out

        base = tmp_path / "base.json"
        base.write_text('{"db": {"pool": 10}}')
        override = tmp_path / "berlin.json"
        override.write_text('{"db": {"pool": 20}}')
        code, out, _ = await fleet(url, "snapshot", "create", "web", "--config", str(base), "--artifact", "app=1.0", "--json")
        assert code == 0 and json.loads(out)["result"]["version"] == 1
        code, out, _ = await fleet(url, "snapshot", "create", "web", "--config", str(base),
                                   "--override", f"berlin-1={override}", "--artifact", "app=1.1")
        assert code == 0 and "created web v2" in out
        code, out, _ = await fleet(url, "snapshot", "create", "web", "--config", str(base), "--override", f"lyon={override}")
        assert code == 2
        code, out, _ = await fleet(url, "snapshot", "diff", "web@1", "web@2")
        assert code == 0 and '~ artifacts.app: "1.0" -> "1.1"' in out and '+ overrides.berlin-1: {"db": {"pool": 20}}' in out
        code, out, _ = await fleet(url, "snapshot", "mark-good", "web@7")
        assert code == 3
        code, out, _ = await fleet(url, "snapshot", "mark-good", "web@1", "--target", "site=berlin-1")
        assert code == 0 and "known-good" in out
        code, out, _ = await fleet(url, "snapshot", "show", "web@1", "--json")
        assert json.loads(out)["result"]["known_good"] == [{"target": "site=berlin-1", "rollout_id": None}]
    finally:
        await stop_snapshot(snapshots, snapshot_service)


async def test_import_conflict_in_a_later_batch_only_redoes_that_batch(
        registry: Registry, client: CommandClient, eventlog: EventLog, nc: NATS) -> None:
    """Batches go out in order; a batch refused for a concurrent write is redone line by line."""
    await send(client, "add_site", site_id="s1")
    other = Registry(eventlog)
    await other.rebuild()
    other_service = CommandService(nc, "registry-other")
    other.register(other_service)
    await other_service.start()
    try:  # d-2050 (third batch, 2,000-2,099) is written behind this registry's back
        await client.send("registry-other", "add_device", {"device_id": "d-2050", "site_id": "s1", "kind": "plc"})
    finally:
        await other_service.stop()
    lines = [{"device_id": f"d-{i}", "site_id": "s1", "parent_id": "d-0" if i else None} for i in range(2100)]
    reply = await client.send("registry", "import_devices", {"devices": lines}, timeout=60)
    report = reply.result
    assert report["added"] == 2099
    assert [(r["index"], r["code"]) for r in report["refused"]] == [(2050, "conflict")]
    stored = [r async for r in eventlog.replay(subjects="fleet.evt.device.*")]
    assert len(stored) == 2100  # 2,099 imported + the other writer's one, nothing twice
    first = next(r for r in stored if r.subject == "fleet.evt.device.d-0")
    assert first.seq == min(r.seq for r in stored if r.subject != "fleet.evt.device.d-2050")  # parent first
    envelope = first.envelope
    assert (envelope.type, envelope.aggregate, envelope.aggregate_id, envelope.actor) == (
        "DeviceAdded", "device", "d-0", "operator:test")
    assert envelope.causation_id == envelope.correlation_id
    assert envelope.at.endswith("Z") and len(envelope.at) == len("2026-11-28T05:14:03.412233Z")
    assert sorted(r.seq for r in stored) == [r.seq for r in stored]
    assert registry.device("d-2099").parent_id == "d-0"
    seqs = {r.subject: r.seq for r in stored}
    assert all(registry.devices.get(f"d-{i}").seq == seqs[f"fleet.evt.device.d-{i}"] for i in range(2100))


async def test_registry_process_killed_and_restarted_answers_the_same(nats_server: Any, eventlog: EventLog,
                                                                      client: CommandClient) -> None:
    """`fleet service registry` killed with SIGKILL comes back with the same state, from the log alone."""
    import os
    import signal
    import sys

    env = {**os.environ, "FLEET_NATS_URL": nats_server.url, "FLEET_LOG_LEVEL": "warning"}

    async def launch() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from fleet.cli import main; main()", "service", "registry", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(200):
            try:
                await client.send("registry", "list_sites", {}, timeout=0.5)
                return proc
            except FleetError:
                await asyncio.sleep(0.05)
        raise AssertionError("registry did not start")

    proc = await launch()
    try:
        await send(client, "add_site", site_id="s1")
        await send(client, "import_devices", devices=[{"device_id": f"d{i}", "site_id": "s1", "labels": {"n": str(i % 3)}}
                                                      for i in range(50)])
        await send(client, "retire_device", device_id="d7")
        before = msgspec.json.encode((await send(client, "list_devices", include_retired=True)).result)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await launch()
        after = msgspec.json.encode((await send(client, "list_devices", include_retired=True)).result)
        assert after == before
        assert (await send(client, "list_devices", selector="n=1")).result["total"] == 16  # 17, less retired d7
        err = await refused(client, "add_device", device_id="d7", site_id="s1")
        assert isinstance(err, Conflict)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_replies_fit_in_one_message_whatever_the_input(registry: Registry, client: CommandClient,
                                                             nc: NATS) -> None:
    """A full import whose every line is refused, and a page of large devices, still get answers."""
    await send(client, "add_site", site_id="s1")
    long_id = "x" * 2000
    report = (await send(client, "import_devices",
                         devices=[{"device_id": f"{long_id}{i}", "site_id": "s1"} for i in range(2500)])).result
    assert len(report["refused"]) == 2500
    assert all(len(r["device_id"]) <= 64 and len(r["message"]) <= 200 for r in report["refused"])
    big = {"blob": "y" * 15000}
    await send(client, "import_devices", devices=[{"device_id": f"big-{i:03d}", "site_id": "s1", "metadata": big}
                                                  for i in range(100)])
    page = (await send(client, "list_devices", limit=100)).result
    assert 0 < len(page["devices"]) < 100 and page["next"] == page["devices"][-1]["device_id"]
    assert page["total"] == 100
    assert len(msgspec.json.encode(page)) < nc.max_payload


async def test_a_site_another_instance_added_a_moment_ago_is_read_from_the_log(
        registry: Registry, client: CommandClient, eventlog: EventLog) -> None:
    # The fixture's registry does not follow the log: a site appended by someone else (another
    # instance) is unknown to it until it reads the log. Both ways of adding devices do.
    for site in ("elsewhere-1", "elsewhere-2"):
        await eventlog.append(f"fleet.evt.site.{site}", [seal(SiteAdded(site_id=site), actor="operator:x",
                                                               at=utcnow())], 0)
    assert registry.sites.slots.keys().isdisjoint({"elsewhere-1", "elsewhere-2"})
    await send(client, "add_device", device_id="one-by-one", site_id="elsewhere-1")
    reply = await send(client, "import_devices", devices=[
        {"device_id": "imported", "site_id": "elsewhere-2"},
        {"device_id": "nowhere", "site_id": "never-added"},
        {"device_id": "bad-site", "site_id": "a.>"},
    ])
    assert reply.result["added"] == 1
    assert [(r["device_id"], r["code"]) for r in reply.result["refused"]] == [
        ("nowhere", "not_found"), ("bad-site", "invalid")]
