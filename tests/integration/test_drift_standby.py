"""Two drift instances on one partition (DESIGN §13, docs/decisions.md): one holds the `drift`
lease and serves, the other stands by; when the holder is killed (SIGKILL) the standby takes over
and the devices it now watches are observed again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from services.drift.main import lease_name
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.lease import holder_of
from tests.integration.test_drift import Device, observed, register, types

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def spawn(server: EmbeddedNats, data: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_DATA_DIR": str(data), "FLEET_LEASE_TTL": "1.5s",
           "FLEET_HEARTBEAT_INTERVAL": "0.5s", "FLEET_OFFLINE_AFTER": "4", "FLEET_DRIFT_GRACE": "2s"}
    return subprocess.Popen([sys.executable, "-m", "fleet", "service", "drift"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def holder_pid(nc: NATS, among: set[int], not_: int | None = None) -> int:
    for _ in range(300):
        holder = await holder_of(nc, lease_name(None))
        if holder is not None:
            pid = int(holder.rsplit(":", 1)[1])
            if pid in among and pid != not_:
                return pid
        await asyncio.sleep(0.05)
    raise AssertionError("no drift instance took the lease")


async def wait_for(eventlog: EventLog, device: Device, kinds: list[str]) -> None:
    """Until the device's observed events begin with `kinds`, the device heartbeating meanwhile
    (the instances run on the wall clock: separate processes)."""
    for _ in range(300):
        await device.beat()
        if types(await observed(eventlog, device.device))[:len(kinds)] == kinds:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{device.device}: {types(await observed(eventlog, device.device))}")


async def test_the_standby_takes_over_when_the_holder_is_killed(
        nats_server: EmbeddedNats, nc: NATS, eventlog: EventLog, tmp_path: Path) -> None:
    await register(eventlog, "site-a", "sb-1", "sb-2")
    procs = {p.pid: p for p in (spawn(nats_server, tmp_path), spawn(nats_server, tmp_path))}
    try:
        first = await holder_pid(nc, set(procs))
        await wait_for(eventlog, Device(nc, "sb-1", "site-a"), ["DeviceCameOnline"])
        os.kill(first, signal.SIGKILL)
        procs[first].wait(10)
        second = await holder_pid(nc, set(procs), not_=first)
        assert second != first
        # a device only the new holder can have seen
        await wait_for(eventlog, Device(nc, "sb-2", "site-a"), ["DeviceCameOnline"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
