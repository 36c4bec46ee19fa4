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
from shared.lease import instance_name
from tests.integration.leases import wait_for_holder
from tests.integration.test_drift import Device, observed, register, types

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def spawn(server: EmbeddedNats, data: Path, slot: str) -> subprocess.Popen[bytes]:
    """A drift instance in its own process, named by `slot` as `fleet up` names its instances."""
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_DATA_DIR": str(data), "FLEET_LEASE_TTL": "1.5s",
           "FLEET_HEARTBEAT_INTERVAL": "0.5s", "FLEET_OFFLINE_AFTER": "4", "FLEET_DRIFT_GRACE": "2s",
           "FLEET_INSTANCE": slot}
    return subprocess.Popen([sys.executable, "-m", "fleet", "service", "drift"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    procs = {instance_name("drift", slot): spawn(nats_server, tmp_path, slot) for slot in ("drift-1", "drift-2")}
    try:
        first = await wait_for_holder(nc, lease_name(None), procs)
        await wait_for(eventlog, Device(nc, "sb-1", "site-a"), ["DeviceCameOnline"])
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        second = await wait_for_holder(nc, lease_name(None), procs.keys() - {first})
        assert second != first
        # a device only the new holder can have seen
        await wait_for(eventlog, Device(nc, "sb-2", "site-a"), ["DeviceCameOnline"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
