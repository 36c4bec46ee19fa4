"""The rollout service against a real nats-server. Devices are played by a small reporter that
follows the desired-state KV subjects (as agents do) and appends the observed events the drift
service would append, so the rollout's progress, gates and rollback run over real NATS."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.rollout import domain
from services.rollout.handlers import RolloutService
from shared.commands import CommandClient
from shared.configs import snapshot_id
from shared.desired import DESIRED_WILDCARD, get_desired
from shared.devices import DESIRED_DECODER
from shared.envelope import Event, seal
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.eventlog import EventLog, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import DeviceCameOnline, DeviceHealthChanged, DeviceReportedState
from shared.events.registry import DeviceAdded, SiteAdded
from shared.events.rollout import RolloutDevicesAssigned, RolloutStarted, RolloutWavePlanned
from shared.events.snapshot import SnapshotCreated
from shared.times import utcnow

SITES = ("s0", "s1", "s2", "s3")


async def append(log: EventLog, events: list[Event]) -> None:
    now = utcnow()
    by_subject: dict[str, list[Event]] = {}
    for event in events:
        by_subject.setdefault(event.subject, []).append(event)
    await log.append_batch([Write(subject, [seal(e, actor="test", at=now) for e in group], None)
                            for subject, group in by_subject.items()])


async def seed(log: EventLog, devices: int = 40) -> dict[str, str]:
    """Sites, devices (online, reporting nothing yet) and snapshots v1, v2, bad."""
    fleet = {f"d{i:03d}": SITES[i % len(SITES)] for i in range(devices)}
    events: list[Event] = [SiteAdded(site_id=s) for s in SITES]
    events += [DeviceAdded(device_id=d, site_id=s, labels={"tier": "edge"}) for d, s in fleet.items()]
    events += [DeviceCameOnline(device_id=d, site_id=s) for d, s in fleet.items()]
    for name, config in (("v1", {"level": 1}), ("v2", {"level": 2}), ("bad", {"level": 666})):
        events.append(SnapshotCreated(snapshot_id=snapshot_id(name, config, {}, {}), name=name, version=1,
                                      config=config))
    for start in range(0, len(events), 900):
        await append(log, events[start:start + 900])
    return fleet


def snap(name: str) -> str:
    return snapshot_id(name, {"level": {"v1": 1, "v2": 2, "bad": 666}[name]}, {}, {})


class Devices:
    """Obedient devices: apply every desired value they see; unhealthy if `sick` says so."""

    def __init__(self, nc: NATS, log: EventLog, fleet: dict[str, str],
                 sick: Callable[[str, str], bool] = lambda device, snapshot: False) -> None:
        self.nc, self.log, self.fleet, self.sick = nc, log, fleet, sick
        self.applied: Counter[str] = Counter()

    async def __aenter__(self) -> Devices:
        self.sub = await self.nc.subscribe(DESIRED_WILDCARD, cb=self._on_desired)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def _on_desired(self, msg: Msg) -> None:
        value = DESIRED_DECODER.decode(msg.data)
        self.applied[value.device_id] += 1
        events: list[Event] = [DeviceReportedState(device_id=value.device_id, snapshot_id=value.snapshot_id,
                                                   config_hash=value.config_hash)]
        health = "failed" if self.sick(value.device_id, value.snapshot_id) else "ok"
        events.append(DeviceHealthChanged(device_id=value.device_id, health=health, previous="ok",
                                          metrics={"error_rate": 0.5 if health == "failed" else 0.001}))
        await append(self.log, events)


@pytest.fixture
async def service(nc: NATS, eventlog: EventLog) -> AsyncIterator[RolloutService]:
    svc = RolloutService(nc, eventlog, tick_interval=0.05)
    await svc.start()
    yield svc
    await svc.stop()


async def wait_status(client: CommandClient, rollout_id: str, statuses: tuple[str, ...],
                      timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await client.send("rollout", "get", {"rollout_id": rollout_id})
        if reply.result["status"] in statuses:
            result: dict[str, Any] = reply.result
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"rollout stuck at {reply.result}")
        await asyncio.sleep(0.05)


async def desired_events(log: EventLog) -> list[DesiredStateAssigned]:
    events: list[DesiredStateAssigned] = []
    async for r in log.replay():
        if r.subject.startswith("fleet.evt.desired."):
            event = r.event
            assert isinstance(event, DesiredStateAssigned)  # the one event type of the family
            events.append(event)
    return events


async def test_healthy_rollout_completes_and_assigns_each_device_once(
    service: RolloutService, nc: NATS, eventlog: EventLog
) -> None:
    fleet = await seed(eventlog)
    client = CommandClient(nc, actor="operator:alice")
    async with Devices(nc, eventlog, fleet) as devices:
        reply = await client.send("rollout", "start", {
            "rollout_id": "r-v1", "snapshot_id": snap("v1"), "target": "tier=edge", "canary": {"sites": ["s1"]},
            "waves": [50, 100], "max_in_flight": 4,
            "metrics": [{"metric": "error_rate", "aggregate": "p95", "op": "<=", "value": 0.02}]})
        assert reply.result["waves"] == 3
        done = await wait_status(client, "r-v1", ("completed",))
    assert done["assigned"] == len(fleet)
    assert done["last_gate"]["passed"]
    assert done["last_gate"]["inputs"]["metrics"]["error_rate p95"] == 0.001
    assigned = Counter(e.device_id for e in await desired_events(eventlog))
    assert assigned == Counter(dict.fromkeys(fleet, 1))
    assert set(devices.applied) == set(fleet)
    value = await get_desired(nc, "d001")
    assert value is not None
    assert (value.snapshot_id, value.config, value.rollout_id) == (snap("v1"), {"level": 1}, "r-v1")
    # the canary wave was exactly the canary site
    first_wave = [event async for r in eventlog.replay()
                  if isinstance(event := r.event, RolloutWavePlanned) and event.wave == 0]
    assert {fleet[d] for d in first_wave[0].devices} == {"s1"}


async def test_unhealthy_canary_fails_the_gate_and_rolls_back_to_the_previous_snapshot(
    service: RolloutService, nc: NATS, eventlog: EventLog
) -> None:
    fleet = await seed(eventlog)
    client = CommandClient(nc)
    async with Devices(nc, eventlog, fleet, sick=lambda d, s: s == snap("bad") and fleet[d] == "s0"):
        await client.send("rollout", "start", {"rollout_id": "r-good", "snapshot_id": snap("v1"),
                                                "target": "tier=edge", "max_in_flight": 50})
        await wait_status(client, "r-good", ("completed",))
        await client.send("rollout", "start", {
            "rollout_id": "r-bad", "snapshot_id": snap("bad"), "target": "tier=edge", "canary": {"sites": ["s0"]},
            "waves": [100], "on_failure": "rollback", "max_in_flight": 50})
        result = await wait_status(client, "r-bad", ("rolled_back",))
    gate = result["last_gate"]
    assert not gate["passed"]
    assert gate["inputs"]["failed"] == gate["inputs"]["devices"] == 10
    assert any("failed 10/10" in reason for reason in gate["reasons"])
    touched = [d for d, s in fleet.items() if s == "s0"]
    assert result["assigned"] == len(touched)  # the wave after the canary was never assigned
    for device in touched:
        value = await get_desired(nc, device)
        assert value is not None
        assert value.snapshot_id == snap("v1")
    again = await client.send("rollout", "rollback", {"rollout_id": "r-bad"})
    assert again.events == []  # rolling back twice is a no-op


async def test_pause_resume_abort_and_overlap(service: RolloutService, nc: NATS, eventlog: EventLog) -> None:
    await seed(eventlog)
    client = CommandClient(nc)
    # no devices report: the rollout stays in flight
    await client.send("rollout", "start", {"rollout_id": "r1", "snapshot_id": snap("v1"),
                                            "target": "site in (s0,s1)", "max_in_flight": 2,
                                            "apply_timeout_seconds": 3600})
    with pytest.raises(Conflict, match="already in an active rollout") as err:
        await client.send("rollout", "start", {"rollout_id": "r2", "snapshot_id": snap("v2"), "target": "site=s1"})
    assert err.value.field == "target"
    paused = await client.send("rollout", "pause", {"rollout_id": "r1"})
    assert paused.result["status"] == "paused"
    assigned = paused.result["assigned"]
    await service.tick_all(utcnow() + timedelta(hours=2))  # long past every deadline: still nothing
    assert (await client.send("rollout", "get", {"rollout_id": "r1"})).result["assigned"] == assigned
    assert (await client.send("rollout", "resume", {"rollout_id": "r1"})).result["status"] == "running"
    aborted = await client.send("rollout", "abort", {"rollout_id": "r1"})
    assert aborted.result["status"] == "aborted"
    with pytest.raises(Conflict):
        await client.send("rollout", "resume", {"rollout_id": "r1"})
    # an aborted rollout no longer holds its devices
    await client.send("rollout", "start", {"rollout_id": "r2", "snapshot_id": snap("v2"), "target": "site=s1"})
    listed = await client.send("rollout", "list", {})
    assert [r["rollout_id"] for r in listed.result["rollouts"]] == ["r2", "r1"]


async def test_dry_run_and_bad_starts_change_nothing(service: RolloutService, nc: NATS, eventlog: EventLog) -> None:
    await seed(eventlog)
    before = await eventlog.last_stream_seq()
    client = CommandClient(nc)
    plan = await client.send("rollout", "start", {"snapshot_id": snap("v2"), "target": "tier=edge",
                                                  "canary": {"count": 5}, "waves": [50, 100], "dry_run": True})
    assert plan.result["dry_run"]
    assert [len(w) for w in plan.result["plan"]] == [5, 15, 20]
    assert set(plan.result["config_hashes"]) == set(SITES)
    # in flight: the default rule (the larger of 500 and a quarter of the wave), a count, a share
    assert [e["in_flight"] for e in plan.result["schedule"]] == [500, 500, 500]
    assert plan.result["expected_seconds"] is not None and plan.result["expected_seconds"] >= 0
    shared = await client.send("rollout", "start", {"snapshot_id": snap("v2"), "target": "tier=edge",
                                                    "waves": [100], "max_in_flight_percent": 10, "dry_run": True})
    assert [(e["in_flight"], e["rounds"]) for e in shared.result["schedule"]] == [(4, 10)]  # 10% of 40
    floored = await client.send("rollout", "start", {"snapshot_id": snap("v2"), "target": "tier=edge", "waves": [100],
                                                     "max_in_flight": 8, "max_in_flight_percent": 10, "dry_run": True})
    assert [(e["in_flight"], e["rounds"]) for e in floored.result["schedule"]] == [(8, 5)]
    cases: list[tuple[dict[str, Any], type[FleetError], str]] = [
        ({"snapshot_id": "nope", "target": ""}, NotFound, "snapshot_id"),
        ({"snapshot_id": snap("v1"), "target": "tier=cloud"}, Invalid, "target"),
        ({"snapshot_id": snap("v1"), "target": "tier in (a"}, Invalid, "target"),
        ({"snapshot_id": snap("v1"), "waves": [50]}, Invalid, "waves"),
        ({"snapshot_id": snap("v1"), "waves": "10,100"}, Invalid, "waves"),  # the short form is the CLI's only
        ({"snapshot_id": snap("v1"), "canary": {"sites": ["nowhere"]}}, Invalid, "canary"),
        ({"snapshot_id": snap("v1"), "metrics": [{"metric": "error_rate"}]}, Invalid, "metrics[0].value"),
        ({"snapshot_id": snap("v1"), "metrics": [{"metric": "e", "op": "=", "value": 1}]}, Invalid, "metrics[0].op"),
        ({"snapshot_id": snap("v1"), "bake_seconds": -1}, Invalid, "bake_seconds"),
        ({"snapshot_id": snap("v1"), "approve_after": [0]}, Invalid, "approve_after[0]"),  # waves count from 1
        ({"snapshot_id": snap("v1"), "max_in_flight_percent": 0}, Invalid, "max_in_flight_percent"),
        ({"snapshot_id": snap("v1"), "max_in_flight_percent": 150}, Invalid, "max_in_flight_percent"),
    ]
    for body, error, field in cases:
        with pytest.raises(error) as err:
            await client.send("rollout", "start", body)
        assert err.value.field == field, body
    with pytest.raises(NotFound):
        await client.send("rollout", "pause", {"rollout_id": "missing"})
    assert await eventlog.last_stream_seq() == before


async def test_restart_mid_wave_continues_without_skipping_or_repeating(nc: NATS, eventlog: EventLog) -> None:
    fleet = await seed(eventlog, devices=40)
    client = CommandClient(nc)
    first = RolloutService(nc, eventlog, tick_interval=0.05)
    await first.start()
    try:
        async with Devices(nc, eventlog, fleet) as devices:
            await client.send("rollout", "start", {"rollout_id": "r1", "snapshot_id": snap("v2"),
                                                    "target": "tier=edge", "canary": {"count": 4}, "waves": [50, 100],
                                                    "max_in_flight": 3})
            while len(devices.applied) < 10:
                await asyncio.sleep(0.02)
            await first.stop()  # the "crash": nothing more from this instance
            second = RolloutService(nc, eventlog, tick_interval=0.05)
            await second.start()
            try:
                await wait_status(client, "r1", ("completed",))
            finally:
                await second.stop()
    finally:
        with contextlib.suppress(Exception):
            await first.stop()
    assigned = Counter(e.device_id for e in await desired_events(eventlog))
    assert assigned == Counter(dict.fromkeys(fleet, 1))


async def test_a_batch_an_earlier_instance_landed_late_gets_its_kv_values(
        service: RolloutService, nc: NATS, eventlog: EventLog) -> None:
    """The follower does not read desired events back (this service writes them all); a batch
    written by an earlier instance that lands after this one caught up is noticed through its
    rollout event, and its devices' desired events are folded in and their KV values written."""
    fleet = await seed(eventlog, devices=8)
    client = CommandClient(nc)
    await client.send("rollout", "start", {"rollout_id": "r-late", "snapshot_id": snap("v2"), "target": "tier=edge",
                                            "waves": [100], "max_in_flight": 2, "apply_timeout_seconds": 600})
    await client.send("rollout", "pause", {"rollout_id": "r-late"})
    assigned = {e.device_id for e in await desired_events(eventlog)}
    late = sorted(set(fleet) - assigned)[0]
    before = await get_desired(nc, late)  # the bucket outlives a test's stream: another test's value
    assert before is None or before.rollout_id != "r-late"
    digest = service.index.snapshots[snap("v2")].hash_for_site(fleet[late])
    now = utcnow()
    await eventlog.append_batch([
        Write(f"fleet.evt.desired.{late}", [seal(DesiredStateAssigned(
            device_id=late, site_id=fleet[late], snapshot_id=snap("v2"), config_hash=digest, revision=1,
            rollout_id="r-late"), actor="service:rollout", at=now)], 0),
        Write("fleet.evt.rollout.r-late", [seal(RolloutDevicesAssigned(rollout_id="r-late", wave=0, at="2026-01-01T00:00:00Z",
                                                                   devices=[late]), actor="service:rollout", at=now)],
              await eventlog.last_seq("fleet.evt.rollout.r-late")),
    ])
    for _ in range(200):
        value = await get_desired(nc, late)
        if value is not None and value.rollout_id == "r-late":
            break
        await asyncio.sleep(0.05)
    assert value is not None and value.snapshot_id == snap("v2") and value.config_hash == digest
    assert service.index.view.desired[late].snapshot_id == snap("v2")
    assert late in service.store.get("r-late").state.assigned


async def test_a_rollout_started_elsewhere_a_moment_ago_is_found_not_refused(
        service: RolloutService, nc: NATS, eventlog: EventLog) -> None:
    """Read your writes across instances: a client whose start another instance answered may ask
    this one next, before its follower has folded the start in. It waits for the follower
    (held back here by holding the lock it applies under) instead of answering not_found."""
    await seed(eventlog, devices=4)
    client = CommandClient(nc)
    async with service._lock:
        await append(eventlog, [RolloutStarted(rollout_id="r-elsewhere", snapshot_id=snap("v1"), target="tier=edge")])
        asking = asyncio.ensure_future(client.send("rollout", "get", {"rollout_id": "r-elsewhere"}))
        done, _ = await asyncio.wait({asking}, timeout=1.0)
        assert not done, "answered before its follower had read the log to its head"
    assert (await asking).result["rollout_id"] == "r-elsewhere"
    with pytest.raises(NotFound):  # one that exists nowhere is still not found, once caught up
        await client.send("rollout", "get", {"rollout_id": "r-nowhere"})


async def test_a_large_wave_is_assigned_in_pipelined_chunks_and_a_refused_chunk_is_redone(
        service: RolloutService, nc: NATS, eventlog: EventLog) -> None:
    """2,200 devices: three chunks of up to 999 in flight together. One device was given a desired
    state behind the service's back, so the chunk holding it is refused (its expected sequence is
    stale) while the others land; the service reloads and assigns that chunk on a later tick.
    Every device gets exactly one desired event of the rollout and its KV value."""
    fleet = await seed(eventlog, devices=2200)
    stray = "d1234"
    await append(eventlog, [DesiredStateAssigned(device_id=stray, site_id=fleet[stray], snapshot_id=snap("v1"),
                                                 config_hash="0" * 64, revision=1, reason="manual")])
    client = CommandClient(nc)
    await client.send("rollout", "start", {"rollout_id": "r-big", "snapshot_id": snap("v2"), "target": "tier=edge",
                                            "waves": [100], "max_in_flight": 5000, "apply_timeout_seconds": 600})
    for _ in range(600):
        status = (await client.send("rollout", "get", {"rollout_id": "r-big"})).result
        if status["assigned"] == len(fleet):
            break
        await asyncio.sleep(0.05)
    assert status["assigned"] == len(fleet), status
    ours = Counter(e.device_id for e in await desired_events(eventlog) if e.rollout_id == "r-big")
    assert ours == Counter(dict.fromkeys(fleet, 1))
    for device in (stray, "d000", "d2199"):
        value = await get_desired(nc, device)
        assert value is not None and value.rollout_id == "r-big"
    chunks = [r.event async for r in eventlog.replay(subjects="fleet.evt.rollout.r-big")
              if isinstance(r.event, RolloutDevicesAssigned)]
    assert sorted(d for c in chunks for d in c.devices) == sorted(fleet)
    restarted = RolloutService(nc, eventlog)
    await restarted.start()
    try:
        assert restarted.store.get("r-big").state.assigned.keys() == service.store.get("r-big").state.assigned.keys()
    finally:
        await restarted.stop()


async def test_a_rollout_whose_tick_fails_does_not_hold_back_the_others(
    service: RolloutService, nc: NATS, eventlog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1: one rollout's tick raised (OverflowError from a huge bake) on every tick and
    stalled every other rollout. Now the failure stays with that rollout, counted and logged."""
    fleet = await seed(eventlog)
    client = CommandClient(nc, actor="operator:alice")
    real_tick = domain.tick

    def tick(state: Any, view: Any, now: Any) -> Any:
        if state.rollout_id == "r-broken":
            raise OverflowError("date value out of range")
        return real_tick(state, view, now)

    monkeypatch.setattr(domain, "tick", tick)  # the pure domain misbehaving for one rollout
    async with Devices(nc, eventlog, fleet):
        await client.send("rollout", "start", {"rollout_id": "r-broken", "snapshot_id": snap("v1"),
                                               "target": "site=s0"})
        await client.send("rollout", "start", {"rollout_id": "r-fine", "snapshot_id": snap("v1"),
                                               "target": "site in (s1,s2,s3)", "waves": [50, 100]})
        done = await wait_status(client, "r-fine", ("completed",))
    assert done["assigned"] == sum(1 for s in fleet.values() if s != "s0")
    assert service.tick_errors["r-broken"] >= 1 and "r-fine" not in service.tick_errors
    assert (await client.send("rollout", "get", {"rollout_id": "r-broken"})).result["status"] == "running"
