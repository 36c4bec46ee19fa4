"""The scale-out topology of `fleet up --cluster 3` under failure (DESIGN §13): three nats-server
nodes from deploy/nats/, two instances of every part, 1,000 simulated devices and a rollout in
progress; then the stream's leader node and one instance of every part are killed with SIGKILL.

The rollout completes; every device is assigned exactly once; every command the client saw
acknowledged is in the log; the log is identical on the two surviving replicas and, after the
killed node is restarted (by `fleet up` itself), on all three; the read models equal a fresh
rebuild. A second test kills the holder of the rollout-ticks lease and checks another instance
takes over and drives on.

Run by `make test-cluster` (and `.ci/run`), not by `make test`: it takes a few minutes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from services.rollout.main import TICKS_LEASE
from shared.commands import CommandClient
from shared.config import load_settings
from shared.embedded_cluster import log_digests, move_leader, stream_leader
from shared.errors import FleetError
from shared.eventlog import EventLog
from shared.lease import holder_of
from shared.subjects import EVENTS_STREAM
from tests.integration.test_projections import differ_from_rebuild
from tests.integration.test_simulator import until

# Connections to the nodes this test kills leave nats-py's stream writers to the garbage collector.
KILLED_CONNECTIONS = [pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
                      pytest.mark.filterwarnings("ignore:Exception ignored in. <function StreamWriter.__del__"
                                                 ":pytest.PytestUnraisableExceptionWarning")]
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(600), *KILLED_CONNECTIONS]

SERVICES = ("registry", "snapshot", "rollout")
FAST = {"heartbeat_interval": 1.0, "offline_after": 6, "drift_grace": 5.0, "reconcile_backoff": 1.0,
        "lease_ttl": 3.0}


@contextlib.asynccontextmanager
async def scaled_out(data: Path) -> AsyncIterator[tuple[Supervisor, NATS, CommandClient]]:
    settings = load_settings({"data_dir": str(data), **FAST}, env={})
    supervisor = Supervisor(settings, cluster=3)
    try:
        await supervisor.start()
        assert supervisor.cluster is not None
        nc = await supervisor.cluster.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                                              user_credentials=supervisor.admin_creds)
        try:
            client = CommandClient(nc, actor="operator:test", timeout=10)
            await client.wait_ready(*SERVICES, timeout=120)
            yield supervisor, nc, client
        finally:
            await nc.close()
    finally:
        await supervisor.stop()


async def retrying(client: CommandClient, service: str, command: str, body: dict[str, Any],
                   timeout: float = 60) -> Any:
    """A command sent again (same command_id) until some instance answers: what a client does
    through a failover."""
    body = {"command_id": f"t-{time.monotonic_ns()}", **body}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.send(service, command, body)
        except FleetError as exc:
            if exc.code != "unavailable" or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def rollout(client: CommandClient, rollout_id: str) -> dict[str, Any]:
    reply = await retrying(client, "rollout", "get", {"rollout_id": rollout_id})
    result: dict[str, Any] = reply.result
    return result


async def wait_rollout(client: CommandClient, rollout_id: str, done: Any, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await rollout(client, rollout_id)
        if done(state):
            return state
        assert time.monotonic() < deadline, f"rollout {rollout_id} stuck: {state}"
        await asyncio.sleep(0.25)


def kill_part(supervisor: Supervisor, name: str) -> int:
    proc = supervisor.parts[name].proc
    assert proc is not None and proc.returncode is None, name
    os.kill(proc.pid, signal.SIGKILL)
    return proc.pid


def _node_status(supervisor: Supervisor, index: int) -> bool:
    assert supervisor.cluster is not None
    name = supervisor.cluster.nodes[index].name
    server = next(s.status for s in supervisor.servers if s.status.name == name)
    return server.restarts >= 1 and server.state == "running"


async def start_rollout(client: CommandClient, rollout_id: str, snapshot: str) -> None:
    await retrying(client, "rollout", "start", {
        "rollout_id": rollout_id, "snapshot_id": snapshot, "target": "", "canary": {"percent": 5.0},
        "waves": [20, 40, 60, 80, 100], "bake_seconds": 1, "max_in_flight": 100, "min_healthy": 0.9,
        "max_offline": 0.2})


async def test_a_rollout_survives_the_loss_of_the_stream_leader_and_of_an_instance_of_each_part(
        tmp_path: Path) -> None:
    async with scaled_out(tmp_path / "data") as (supervisor, nc, client):
        cluster = supervisor.cluster
        assert cluster is not None
        sim = FleetSimulator(nc, SimOptions(devices=1000, sites=10, interval=1.0, apply_delay=0.2, seed=11))
        await sim.start()
        acked: list[str] = []  # command ids the client saw acknowledged
        stop = asyncio.Event()

        async def operator() -> None:  # keeps sending commands through the failover
            n = 0
            while not stop.is_set():
                command_id = f"op-{n}"
                with contextlib.suppress(FleetError):
                    await client.send("registry", "add_site", {"command_id": command_id, "site_id": f"op-{n}"})
                    acked.append(command_id)
                n += 1
                await asyncio.sleep(0.05)

        commands = asyncio.create_task(operator())
        try:
            snap = (await retrying(client, "snapshot", "create", {"name": "app", "config": {"v": 2}})).result
            await start_rollout(client, "r-fail", snap["snapshot_id"])
            in_progress = await wait_rollout(client, "r-fail", lambda s: s["assigned"] >= 200)
            assert in_progress["status"] == "running", in_progress

            holder = await holder_of(nc, TICKS_LEASE)
            assert holder is not None
            rollout_holder = supervisor.part_holding(holder)
            assert rollout_holder is not None, holder
            leader = await stream_leader(nc, EVENTS_STREAM)
            killed_node = cluster.index_of(leader)
            cluster.kill(killed_node)
            for name in ("registry", "snapshot", "drift", "projections", "api"):
                kill_part(supervisor, name)
            kill_part(supervisor, rollout_holder)

            done = await wait_rollout(client, "r-fail", lambda s: s["status"] in ("completed", "paused", "failed"))
            assert done["status"] == "completed", done
            stop.set()
            await commands
            assert len(acked) > 0

            eventlog = EventLog(nc)
            assigned = Counter([r.envelope.aggregate_id async for r in eventlog.replay()
                                if r.envelope.type == "DesiredStateAssigned"])
            assert len(assigned) == 1000 and set(assigned.values()) == {1}, "every device assigned exactly once"
            causes = {r.envelope.causation_id async for r in eventlog.replay()}
            missing = [c for c in acked if c not in causes]
            assert not missing, f"acknowledged commands missing from the log: {missing[:5]}"

            survivors = [i for i in range(3) if i != killed_node]
            digests = []
            for index in survivors:
                await move_leader(nc, EVENTS_STREAM, cluster.nodes[index].name)
                digests.append(await log_digests(nc, EVENTS_STREAM))
            common = min(max(d) for d in digests)  # drift may append meanwhile: compare the common prefix
            assert {s: h for s, h in digests[0].items() if s <= common} == \
                   {s: h for s, h in digests[1].items() if s <= common}
            # `fleet up` restarts the killed node by itself, on its ports and store
            await until(lambda: _node_status(supervisor, killed_node), "the killed node restarted", timeout=60)
            await move_leader(nc, EVENTS_STREAM, cluster.nodes[killed_node].name, timeout=60)
            restarted = await log_digests(nc, EVENTS_STREAM)
            assert {s: h for s, h in restarted.items() if s <= common} == \
                   {s: h for s, h in digests[0].items() if s <= common}
        finally:
            stop.set()
            await commands
            await sim.stop()

        # The read models equal a fresh rebuild (with the fleet quiet: the simulator stopped and
        # the devices' offline events written).
        owner = supervisor.part_env["projections"]  # the projections' role and its password file
        assert await differ_from_rebuild(owner["FLEET_DATABASE_URL"], owner["PGPASSFILE"], EventLog(nc)) == []


async def test_the_rollout_lease_holder_killed_the_rollout_drives_on(tmp_path: Path) -> None:
    """kill -9 of the instance holding the ticks lease: the other instance takes the lease when
    it runs out, or the killed slot, restarted by `fleet up`, takes it back at once (same slot
    name); either way the rollout goes on and completes with every device assigned once."""
    async with scaled_out(tmp_path / "data") as (supervisor, nc, client):
        sim = FleetSimulator(nc, SimOptions(devices=300, sites=6, interval=1.0, apply_delay=0.2, seed=5))
        await sim.start()
        try:
            snap = (await retrying(client, "snapshot", "create", {"name": "app", "config": {"v": 3}})).result
            await start_rollout(client, "r-lease", snap["snapshot_id"])
            before = await wait_rollout(client, "r-lease", lambda s: s["assigned"] >= 60)
            holder = await holder_of(nc, TICKS_LEASE)
            assert holder is not None
            killed = supervisor.part_holding(holder)
            assert killed is not None, holder
            started = time.monotonic()
            pid = kill_part(supervisor, killed)

            def alive_holder(name: str | None) -> bool:  # held, and not by the killed process
                part = supervisor.part_holding(name) if name else None
                proc = supervisor.parts[part].proc if part else None
                return proc is not None and proc.pid != pid and proc.returncode is None

            while not alive_holder(now := await holder_of(nc, TICKS_LEASE)):
                await asyncio.sleep(0.1)
            took_over = time.monotonic() - started
            after = await wait_rollout(client, "r-lease", lambda s: s["assigned"] > before["assigned"])
            progressed = time.monotonic() - started
            print(f"lease held again after {took_over:.1f}s by {now}, rollout progressing again "
                  f"{progressed:.1f}s (lease time {FAST['lease_ttl']}s)")
            done = await wait_rollout(client, "r-lease", lambda s: s["status"] in ("completed", "paused"))
            assert done["status"] == "completed", done
            assert after["assigned"] > before["assigned"]
            assigned = Counter([r.envelope.aggregate_id async for r in EventLog(nc).replay()
                                if r.envelope.type == "DesiredStateAssigned"])
            assert len(assigned) == 300 and set(assigned.values()) == {1}
        finally:
            await sim.stop()
