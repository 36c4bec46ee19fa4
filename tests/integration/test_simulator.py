"""`fleet simulate` against a real nats-server, with the real registry and drift services: the
simulator registers its devices, follows desired state through one wildcard subscription,
heartbeats, and its knobs (tampering, unhealthy snapshots, failing sites, offline) show up as the
drift service's observed-state events. Also: determinism for a seed, and a clear error when no
registry answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.agent.simulator import FleetSimulator, SimOptions
from services.drift.domain import Policy
from services.drift.handlers import DriftService
from shared.configs import config_hash
from shared.desired import ensure_bucket, put_desired
from shared.devices import DesiredState
from shared.embedded import EmbeddedNats
from shared.envelope import Event, seal
from shared.errors import Unavailable
from shared.eventlog import EventLog, Recorded, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.registry import DeviceAdded, SiteAdded
from shared.subjects import event_subject
from shared.times import utcnow

POLICY = Policy(interval=0.2, offline_after=3, drift_grace=0.4, reconcile_backoff=0.2, reconcile_max_tries=2)


async def assign_all(nc: NATS, eventlog: EventLog, sim: FleetSimulator, devices: range, snapshot: str,
                     config: dict[str, Any]) -> str:
    """What the rollout service does for a wave: desired-state events and KV values, batched."""
    digest = config_hash(config)
    now = utcnow()
    writes = [Write(event_subject("desired", sim.ids[i]),
                    [seal(DesiredStateAssigned(device_id=sim.ids[i], site_id=sim.sites[i], snapshot_id=snapshot,
                                               config_hash=digest, revision=1), actor="test", at=now)], None)
              for i in devices]
    await eventlog.append_batch(writes)
    await put_desired(nc, [DesiredState(device_id=sim.ids[i], snapshot_id=snapshot, config=config,
                                        config_hash=digest) for i in devices])
    return digest


async def observed(eventlog: EventLog, device: str) -> list[Event]:
    recorded, _ = await eventlog.load(event_subject("observed", device))
    return [r.event for r in recorded if r.event is not None]


def names(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def added(record: Recorded) -> DeviceAdded:
    event = record.event
    assert isinstance(event, DeviceAdded)
    return event


async def until(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_register_fails_clearly_without_a_registry(nc: NATS, eventlog: EventLog) -> None:
    sim = FleetSimulator(nc, SimOptions(devices=3, sites=1, interval=0.2, prefix="lonely"))
    with pytest.raises(Unavailable, match="--no-register"):
        await sim.start()
    await sim.stop()


async def test_simulated_fleet_with_registry_and_drift(nc: NATS, eventlog: EventLog) -> None:
    from services.registry.handlers import start as start_registry

    await ensure_bucket(nc)
    _, registry = await start_registry(nc, eventlog)
    opts = SimOptions(devices=120, sites=4, interval=0.2, apply_delay=0.05, seed=7, prefix="t1",
                      fail_snapshots={"bad"}, fail_sites={"t1-s003"})
    sim = FleetSimulator(nc, opts)
    drift = DriftService(nc, eventlog, POLICY, tick=0.05)
    try:
        await sim.start()
        for i in range(120):
            recorded, _ = await eventlog.load(event_subject("device", sim.ids[i]))
            assert [(type(r.event), added(r).site_id) for r in recorded] == [
                (DeviceAdded, sim.sites[i])]
        for s in range(4):
            recorded, _ = await eventlog.load(event_subject("site", opts.site_id(s)))
            assert [type(r.event) for r in recorded] == [SiteAdded]
        await sim.register()  # registering again uses the existing devices
        await drift.start()
        await until(lambda: sum(d.online for d in drift.devices.values()) == 120, "all online")

        good = {"release": 1}
        healthy = range(60)
        digest = await assign_all(nc, eventlog, sim, healthy, "good", good)
        ok_site = [i for i in healthy if sim.sites[i] != "t1-s003"]
        await until(lambda: all(drift.devices[sim.ids[i]].reported_config_hash == digest for i in ok_site),
                    "healthy devices report the new hash")
        await drift.flush()
        assert names(await observed(eventlog, sim.ids[ok_site[0]])) == ["DeviceCameOnline", "DeviceReportedState"]

        # an unhealthy snapshot: devices apply it and report failed health
        await assign_all(nc, eventlog, sim, range(60, 64), "bad", {"release": 2})
        unhealthy = [sim.ids[i] for i in range(60, 64) if sim.sites[i] != "t1-s003"]
        await until(lambda: all(drift.devices[d].health == "failed" for d in unhealthy), "failed health")

        # local tampering: drift begins, a reconcile re-puts desired state, the device converges
        victim = ok_site[3]
        sim.tamper_with(victim)
        async def converged() -> bool:
            await drift.flush()
            return "DriftEnded" in names(await observed(eventlog, sim.ids[victim]))
        await until(converged, "the tampered device reconciled")
        events = names(await observed(eventlog, sim.ids[victim]))
        began = events.index("DriftBegan")
        assert events[began - 1] == "DeviceReportedState"  # the tampered hash
        assert events[began + 1] == "ReconcileAttempted"
        assert events[-2:] == ["DeviceReportedState", "DriftEnded"]  # back to desired
        assert sim.ids[victim] in sim.stats.repaired_at

        # a site where applies fail: the devices never converge, and end up stuck
        failing = [i for i in healthy if sim.sites[i] == "t1-s003"]
        async def all_stuck() -> bool:
            await drift.flush()
            return all(drift.devices[sim.ids[i]].stuck for i in failing)
        await until(all_stuck, "devices at the failing site stuck")
        # each got its first assignment and at least one re-put (re-puts close together may coalesce)
        assert sim.stats.failed_applies >= len(failing) * 2, drift.stats

        # devices dropping offline: the drift service notices, and sees them come back
        sim.options.offline = 0.2
        sim.options.offline_for = 6
        await until(lambda: any(not d.online for d in drift.devices.values()), "a device offline")
        assert sim.stats.went_offline > 0
    finally:
        await drift.stop()
        await sim.stop()
        await registry.stop()


async def test_fleet_simulate_command(nc: NATS, nats_server: EmbeddedNats) -> None:
    """The CLI: without a registry it fails clearly (exit 5); with --no-register it heartbeats."""
    import os
    import signal
    import sys
    from pathlib import Path

    fleet = str(Path(sys.executable).parent / "fleet")
    env = {**os.environ, "FLEET_NATS_URL": nats_server.url}
    args = [fleet, "simulate", "--devices", "6", "--sites", "2", "--interval", "0.2", "--prefix", "cli"]
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 5
    assert b"--no-register" in err

    seen: set[str] = set()

    async def on_heartbeat(msg: Msg) -> None:
        seen.add(msg.subject)
    sub = await nc.subscribe("fleet.hb.*.*", cb=on_heartbeat)
    proc = await asyncio.create_subprocess_exec(*args, "--no-register", env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        await until(lambda: len(seen) == 6, "heartbeats of all six simulated devices")
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()
        await sub.unsubscribe()
    assert seen == {f"fleet.hb.cli-s{i % 2:03d}.cli-d{i:06d}" for i in range(6)}
    assert proc.returncode == 0


async def test_failed_applies_keep_the_old_config_and_report_failed(nc: NATS) -> None:
    await ensure_bucket(nc)
    sim = FleetSimulator(nc, SimOptions(devices=4, sites=1, interval=0.2, apply_delay=0.0, prefix="fa",
                                        register=False, fail_apply=1.0))
    await sim.start()
    try:
        await put_desired(nc, [DesiredState(device_id=sim.ids[i], snapshot_id="s", config={"a": 1},
                                            config_hash=config_hash({"a": 1})) for i in range(4)])
        await until(lambda: sim.stats.failed_applies == 4, "four failed applies")
        assert sim.hash == [None] * 4 and sim.health == ["failed"] * 4
        sim.options.fail_apply = 0.0
        await put_desired(nc, [DesiredState(device_id=sim.ids[0], snapshot_id="s", config={"a": 1},
                                            config_hash=config_hash({"a": 1}), revision=2)])
        await until(lambda: sim.health[0] == "ok", "a successful apply")
        assert sim.hash[0] == config_hash({"a": 1})
    finally:
        await sim.stop()
