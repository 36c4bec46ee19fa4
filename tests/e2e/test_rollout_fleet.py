"""Rollouts end to end with the simulator: a healthy rollout over 1,000 devices completes; a
snapshot unhealthy at the canary site fails the gate and every touched device goes back to the
known-good snapshot; a rollout service killed with SIGKILL mid-wave completes after restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
from nats.aio.client import Client as NATS

from services.agent.simulator import FleetSimulator, SimOptions
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from tests.e2e.conftest import Stack


async def create(stack: Stack, name: str, level: int) -> str:
    reply = await stack.client.send("snapshot", "create", {"name": name, "config": {"level": level}})
    return str(reply.result["snapshot_id"])


async def desired_per_device(log: EventLog) -> Counter[str]:
    return Counter([r.envelope.aggregate_id async for r in log.replay() if r.envelope.type == "DesiredStateAssigned"])


@pytest.mark.timeout(300)
async def test_healthy_rollout_then_unhealthy_canary_rolls_back(stack: Stack, nc: NATS, eventlog: EventLog) -> None:
    sim = FleetSimulator(nc, SimOptions(devices=1000, sites=10, interval=0.5, apply_delay=0.05, seed=7))
    await sim.start()
    try:
        v1 = await create(stack, "app", 1)
        await stack.client.send("rollout", "start", {"rollout_id": "r-v1", "snapshot_id": v1, "target": "",
                                                     "canary": {"sites": ["sim-s000"]}, "waves": [50, 100],
                                                     "max_in_flight": 500, "min_healthy": 0.95})
        done = await stack.wait_rollout("r-v1", ("completed",))
        assert done["last_gate"]["passed"]
        assert Counter(sim.snapshot) == Counter({v1: 1000})

        bad = await create(stack, "app", 3)
        sim.options.fail_snapshots = {bad}
        await stack.client.send("rollout", "start", {"rollout_id": "r-bad", "snapshot_id": bad, "target": "",
                                                     "canary": {"sites": ["sim-s000"]}, "waves": [100],
                                                     "on_failure": "rollback", "max_in_flight": 500})
        result = await stack.wait_rollout("r-bad", ("rolled_back",))
        gate = result["last_gate"]
        assert not gate["passed"]
        assert gate["inputs"]["devices"] == 100  # the canary site only
        assert gate["inputs"]["failed"] == 100
        assert result["assigned"] == 100  # the rest of the fleet was never touched
        for _ in range(100):  # the canary devices apply v1 again
            if Counter(sim.snapshot) == Counter({v1: 1000}):
                break
            await asyncio.sleep(0.1)
        assert Counter(sim.snapshot) == Counter({v1: 1000})
        listed = await stack.client.send("snapshot", "get", {"snapshot_id": v1})
        assert listed.result["known_good"], "a completed rollout marks its snapshot known-good"
    finally:
        await sim.stop()


@pytest.mark.timeout(300)
async def test_rollout_service_killed_mid_wave_completes_after_restart(
    stack: Stack, nc: NATS, eventlog: EventLog, nats_server: EmbeddedNats
) -> None:
    await stack.stop("rollout")  # this test runs the rollout service as a real process
    env = {**os.environ, "FLEET_NATS_URL": nats_server.url}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "fleet", "service", "rollout"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = spawn()
    sim = FleetSimulator(nc, SimOptions(devices=300, sites=6, interval=0.5, apply_delay=0.3, seed=3))
    await sim.start()
    try:
        await stack.ready("rollout")
        v2 = await create(stack, "svc", 2)
        await stack.client.send("rollout", "start", {"rollout_id": "r-kill", "snapshot_id": v2, "target": "",
                                                     "canary": {"count": 10}, "waves": [30, 100], "max_in_flight": 40})
        for _ in range(1200):  # well into the waves (bounded: 60 s)
            if sum(s == v2 for s in sim.snapshot) >= 60:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the rollout did not get going: {await stack.wait_rollout('r-kill', ('none',), 0)}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = spawn()
        await stack.ready("rollout")
        await stack.wait_rollout("r-kill", ("completed",))
        assert Counter(sim.snapshot) == Counter({v2: 300})
        assert await desired_per_device(eventlog) == Counter(dict.fromkeys(sim.ids, 1))
    finally:
        await sim.stop()
        proc.terminate()
        proc.wait(10)
