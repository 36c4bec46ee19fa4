"""Maintenance windows through the real rollout service and nats-server, on an injected clock: the
service's own ticker is parked (a one-hour interval) and the test calls `tick_all(now)` with the
times it wants. A wave waits for a closed site and records it, the service restarts while waiting
and goes on when the window opens, without repeating a device."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from services.rollout.handlers import RolloutService
from shared.commands import CommandClient
from shared.configs import snapshot_id
from shared.envelope import Event, seal
from shared.eventlog import EventLog, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import DeviceCameOnline
from shared.events.registry import DeviceAdded, SiteAdded, SiteUpdated
from shared.events.rollout import RolloutWaveWaiting
from shared.events.snapshot import SnapshotCreated
from shared.times import utcnow

MONDAY_NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 13:00 in Berlin: its night window is closed
MONDAY_NIGHT = datetime(2026, 3, 2, 21, 0, 1, tzinfo=UTC)  # 22:00:01 in Berlin
SNAP = snapshot_id("v2", {"level": 2}, {}, {})
FLEET = {f"d{i}": ("ber", "tyo")[i % 2] for i in range(6)}


async def seed(log: EventLog) -> None:
    events: list[Event] = [SiteAdded(site_id="ber", windows=["Sun 01:00-02:00 UTC"]), SiteAdded(site_id="tyo"),
                           SiteUpdated(site_id="ber", windows=["Mon-Fri 22:00-04:00 Europe/Berlin"])]
    events += [DeviceAdded(device_id=d, site_id=s, labels={"tier": "edge"}) for d, s in FLEET.items()]
    events += [DeviceCameOnline(device_id=d, site_id=s) for d, s in FLEET.items()]
    events.append(SnapshotCreated(snapshot_id=SNAP, name="v2", version=1, config={"level": 2}))
    now = utcnow()
    for event in events:
        await log.append_batch([Write(event.subject, [seal(event, actor="test", at=now)], None)])


async def recorded(log: EventLog) -> list[Event]:
    return [r.event async for r in log.replay() if r.event is not None]


async def test_a_wave_waits_for_its_sites_window_across_a_restart(nc: NATS, eventlog: EventLog) -> None:
    await seed(eventlog)
    client = CommandClient(nc, actor="operator:alice")
    first = RolloutService(nc, eventlog, tick_interval=3600)
    await first.start()
    try:
        dry = (await client.send("rollout", "start", {"rollout_id": "r1", "snapshot_id": SNAP, "target": "tier=edge",
                                                      "bake_seconds": 600, "dry_run": True})).result
        assert dry["schedule"][0]["starts"] is not None
        await client.send("rollout", "start", {"rollout_id": "r1", "snapshot_id": SNAP, "target": "tier=edge",
                                               "bake_seconds": 600})
        await first.tick_all(MONDAY_NOON)
        status = (await client.send("rollout", "get", {"rollout_id": "r1"})).result
        assert status["waiting_for_windows"] == {"ber": "2026-03-02T21:00:00.000000Z"}
        assert status["assigned"] == 3
    finally:
        await first.stop()

    second = RolloutService(nc, eventlog, tick_interval=3600)  # the restart: rebuilt from the log
    await second.start()
    try:
        status = (await client.send("rollout", "get", {"rollout_id": "r1"})).result
        assert status["waiting_for_windows"] == {"ber": "2026-03-02T21:00:00.000000Z"}
        before = await eventlog.last_stream_seq()
        await second.tick_all(MONDAY_NOON.replace(hour=20))  # still closed: nothing new, not even the wait
        assert await eventlog.last_stream_seq() == before
        await second.tick_all(MONDAY_NIGHT)
        status = (await client.send("rollout", "get", {"rollout_id": "r1"})).result
        assert status["assigned"] == 6
        assert status["waiting_for_windows"] == {}
        plan = (await client.send("rollout", "rollback", {"rollout_id": "r1", "plan_only": True})).result
        assert plan["in_windows"] is False  # rollbacks ignore windows unless the rollout asked otherwise
    finally:
        await second.stop()
    events = await recorded(eventlog)
    assigned = Counter(e.device_id for e in events if isinstance(e, DesiredStateAssigned))
    assert assigned == Counter(dict.fromkeys(FLEET, 1))
    assert [e.opens for e in events if isinstance(e, RolloutWaveWaiting)] == [
        {"ber": "2026-03-02T21:00:00.000000Z"}, {}]
