"""`fleet agent` against a real nats-server: it applies desired state and reports the hash of what
is on disk, runs the apply and health commands, repairs local tampering, rides out a NATS
restart, and never leaves a partial config file even when killed mid-write."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from fleet_agent.agent import Agent, AgentOptions, disk_hash
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.configs import config_hash
from shared.desired import ensure_bucket, put_desired
from shared.devices import HEARTBEAT_DECODER, DesiredState, Heartbeat
from shared.embedded import EmbeddedNats
from shared.subjects import heartbeat_subject


def desired(device: str, config: dict[str, Any], snapshot: str = "snap-1", revision: int = 1) -> DesiredState:
    return DesiredState(device_id=device, snapshot_id=snapshot, config=config,
                        config_hash=config_hash(config), revision=revision)


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Beats:
    """Heartbeats of one device as they arrive."""

    def __init__(self) -> None:
        self.received: list[Heartbeat] = []

    async def on(self, msg: Msg) -> None:
        self.received.append(HEARTBEAT_DECODER.decode(msg.data))

    def last(self) -> Heartbeat | None:
        return self.received[-1] if self.received else None


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)
        assert done, "the agent did not stop within 15 s of being cancelled"


async def listen(nc: NATS, site: str, device: str) -> Beats:
    beats = Beats()
    await nc.subscribe(heartbeat_subject(site, device), cb=beats.on)
    return beats


async def test_applies_reports_and_repairs_tampering(nc: NATS, nats_server: EmbeddedNats, tmp_path: Path,
                                                     creds: Callable[[str, str], str]) -> None:
    await ensure_bucket(nc)
    marker = tmp_path / "applied.txt"
    health = tmp_path / "health.sh"
    health.write_text("echo error_rate=0.25\necho queue=7\nexit \"$(cat " + str(tmp_path / "code") + ")\"\n")
    (tmp_path / "code").write_text("1")
    options = AgentOptions(device_id="a1", site_id="s1", state_dir=tmp_path / "state",
                           apply_cmd=f'echo "$FLEET_SNAPSHOT_ID" >> {marker}',
                           health_cmd=f"sh {health}", interval=0.2)
    beats = await listen(nc, "s1", "a1")
    agent = Agent(replace(options, servers=(nats_server.url,), creds=Path(creds("device", "a1"))))  # its own identity
    async with running(agent):
        # no desired state yet: heartbeats with nulls
        await wait_for(lambda: beats.last() is not None, "a first heartbeat")
        first = beats.received[0]
        assert (first.snapshot_id, first.config_hash, first.site) == (None, None, "s1")

        config = {"mode": "edge", "limits": {"cpu": 2}}
        await put_desired(nc, [desired("a1", config)])
        await wait_for(lambda: (beats.last() or first).config_hash == config_hash(config), "the applied hash")
        assert msgspec.json.decode((options.state_dir / "config.json").read_bytes()) == config
        # the apply command runs after the write (the heartbeat may report the file before it ends)
        await wait_for(lambda: marker.exists() and marker.read_text().split() == ["snap-1"], "apply command")
        await wait_for(lambda: (beats.last() or first).health == "degraded", "health from the command")
        last = beats.last()
        assert last is not None
        assert last.metrics == {"error_rate": 0.25, "queue": 7.0}
        (tmp_path / "code").write_text("3")
        await wait_for(lambda: (beats.last() or first).health == "failed", "failed health")
        (tmp_path / "code").write_text("0")
        await wait_for(lambda: (beats.last() or first).health == "ok", "ok health")

        # a new desired state replaces the old one
        newer = {"mode": "edge", "limits": {"cpu": 4}}
        await put_desired(nc, [desired("a1", newer, snapshot="snap-2", revision=2)])
        await wait_for(lambda: (beats.last() or first).snapshot_id == "snap-2", "the new snapshot")
        last = beats.last()
        assert last is not None
        assert last.config_hash == config_hash(newer)
        await wait_for(lambda: marker.read_text().split() == ["snap-1", "snap-2"], "second apply command")

        # someone edits the file on the device: the agent notices and writes desired state back
        edited = options.state_dir / "edited.tmp"
        edited.write_text('{"mode": "hand-edited"}')
        edited.replace(options.state_dir / "config.json")  # in one step, so the agent sees one edit
        await wait_for(lambda: agent.repairs >= 1, "the repair")
        await wait_for(lambda: disk_hash(options.state_dir / "config.json") == config_hash(newer), "repaired file")
        await wait_for(lambda: marker.read_text().split() == ["snap-1", "snap-2", "snap-2"], "re-applied")
        assert agent.repairs == 1

        # a re-put of the same state with a bumped revision (reconciliation) is applied again
        applies = agent.applies
        await put_desired(nc, [desired("a1", newer, snapshot="snap-2", revision=3)])
        await wait_for(lambda: len(marker.read_text().split()) == 4, "the re-applied state")
        assert agent.applied is not None
        assert agent.applies == applies + 1 and agent.applied.revision == 3


async def test_reported_hash_is_of_the_file_on_disk(nc: NATS, nats_server: EmbeddedNats, tmp_path: Path,
                                                    creds: Callable[[str, str], str]) -> None:
    await ensure_bucket(nc)
    options = AgentOptions(device_id="a2", site_id="s1", state_dir=tmp_path / "state", interval=0.2)
    agent = Agent(replace(options, servers=(nats_server.url,), creds=Path(creds("device", "a2"))))
    config = {"k": "v"}
    async with running(agent):
        await put_desired(nc, [desired("a2", config)])
        await wait_for(lambda: agent.applied is not None, "apply")
    # not running: the file is tampered with; the heartbeat body reports that hash, not desired's
    (options.state_dir / "config.json").write_text('{"k": "w"}')
    body = agent.heartbeat_body()
    assert body.config_hash == config_hash({"k": "w"}) != config_hash(config)
    (options.state_dir / "config.json").write_text("{broken")
    reported = agent.heartbeat_body().config_hash
    assert reported is not None
    assert reported.startswith("unparseable-")


async def test_survives_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        await ensure_bucket(nc)
        options = AgentOptions(device_id="a3", site_id="s1", state_dir=tmp_path / "state", interval=0.2)
        agent = Agent(replace(options, servers=(server.url,)))
        beats = await listen(nc, "s1", "a3")
        first = {"gen": 1}
        async with running(agent):
            await put_desired(nc, [desired("a3", first)])
            await wait_for(lambda: agent.applied is not None and agent.applied.config == first, "first apply")
            server.stop()
            sent = agent.heartbeats_sent
            await asyncio.sleep(1.0)  # down: the agent keeps its config and sends nothing
            assert agent.heartbeats_sent == sent
            assert msgspec.json.decode((options.state_dir / "config.json").read_bytes()) == first
            await server.start()
            second = {"gen": 2}
            # likely before the agent has reconnected: it must read its key again on reconnect
            await wait_for(lambda: nc.is_connected, "test client reconnect")
            await put_desired(nc, [desired("a3", second, revision=2)])
            await wait_for(lambda: agent.applied is not None and agent.applied.config == second, "second apply")
            count = len(beats.received)
            await wait_for(lambda: len(beats.received) > count + 2, "heartbeats after the restart")
            last = beats.last()
            assert last is not None
            assert last.config_hash == config_hash(second)
        await nc.close()
    finally:
        server.stop()


async def test_killed_mid_write_leaves_old_or_new_config(nc: NATS, nats_server: EmbeddedNats,
                                                         tmp_path: Path) -> None:
    """SIGKILL the agent process while it rewrites a large config over and over."""
    await ensure_bucket(nc)
    blob = "x" * 400_000
    configs = [{"gen": n, "blob": blob} for n in range(400)]
    hashes = {config_hash(c) for c in configs}
    state = tmp_path / "state"
    fleet = str(Path(sys.executable).parent / "fleet")
    rng = random.Random(5)
    env = {**os.environ, "FLEET_NATS_URL": nats_server.url}
    gen = 0
    for _ in range(4):
        proc = await asyncio.create_subprocess_exec(
            fleet, "agent", "--device", "k1", "--site", "s1", "--state-dir", str(state), "--interval", "0.2",
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await put_desired(nc, [desired("k1", configs[gen])])
            await wait_for(lambda: disk_hash(state / "config.json") in hashes, "a first write", timeout=30)
            deadline = asyncio.get_running_loop().time() + rng.uniform(0.2, 0.6)
            while asyncio.get_running_loop().time() < deadline:  # a stream of new configs
                gen = (gen + 1) % len(configs)
                await put_desired(nc, [desired("k1", configs[gen], revision=gen + 1)])
                await asyncio.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        on_disk = disk_hash(state / "config.json")
        assert on_disk in hashes, f"config.json is not a whole config after SIGKILL: {on_disk}"


_WRITER = """
import sys
from pathlib import Path
from fleet_agent.files import write_atomically
path, size = Path(sys.argv[1]), int(sys.argv[2])
versions = [bytes([65]) * size, bytes([66]) * size]
n = 0
while True:
    print(n, flush=True)  # about to write: the test kills a few milliseconds into the write
    write_atomically(path, versions[n % 2])
    n += 1
"""


def test_write_atomically_survives_sigkill_during_large_writes(tmp_path: Path) -> None:
    """The agent's writer, killed a few milliseconds into replacing a 64 MB file: the file is
    always one whole version (a write in place would be caught half-done)."""
    target = tmp_path / "config.json"
    size = 64 * 1024 * 1024
    rng = random.Random(11)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(size)],
                                cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            for _ in range(rng.randint(2, 3)):  # let one or two versions land first
                proc.stdout.readline()
            subprocess.run(["sleep", str(rng.uniform(0.002, 0.01))], check=True)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        data = target.read_bytes()
        assert len(data) == size and data.count(data[:1]) == size, "a partial or mixed file"
