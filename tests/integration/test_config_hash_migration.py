"""The config hash changed from msgspec's sorted JSON to RFC 8785 (docs/decisions.md): the drift
service of an upgraded control plane, against a real nats-server, reports neither an agent that
still sends the legacy form nor an upgraded agent whose desired state was recorded in the legacy
form as drifted; a device reporting some other hash still is."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as NATS

from services.drift.domain import DeviceState
from services.drift.handlers import DriftImage, DriftService
from shared.checkpoint import schema_of
from shared.configs import config_hash, legacy_config_hash
from shared.desired import ensure_bucket, put_desired
from shared.devices import DesiredState
from shared.eventlog import EventLog
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import DriftBegan
from shared.events.snapshot import SnapshotCreated
from tests.integration.test_drift import POLICY, Device, World, append, observed, register, types, until

FLOATY = {"gain": 1.0, "ratio": 0.1, "limit": 1e21, "site name": "Zürich ✓", "nested": [2.0, {"k": -0.0}]}
SNAPSHOT = "floaty-1"


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def drift(nc: NATS, eventlog: EventLog, world: World) -> AsyncIterator[DriftService]:
    await ensure_bucket(nc)
    service = DriftService(nc, eventlog, POLICY, clock=world, tick=0.05)
    world.watch(service)
    yield service
    await service.stop()


async def assign(nc: NATS, eventlog: EventLog, device: str, digest: str) -> None:
    """The desired state as a rollout service wrote it, with `digest` as its config hash."""
    await put_desired(nc, [DesiredState(device_id=device, snapshot_id=SNAPSHOT, config=FLOATY, config_hash=digest)])
    await append(eventlog, DesiredStateAssigned(device_id=device, site_id="s1", snapshot_id=SNAPSHOT,
                                                config_hash=digest, revision=1))


async def test_neither_hash_form_of_the_desired_config_is_drift(
        nc: NATS, eventlog: EventLog, drift: DriftService, world: World) -> None:
    old, new = legacy_config_hash(FLOATY), config_hash(FLOATY)
    assert old != new
    await append(eventlog, SnapshotCreated(snapshot_id=SNAPSHOT, name="floaty", version=1, config=FLOATY))
    await register(eventlog, "s1", "old-agent", "old-desired", "wrong")
    await assign(nc, eventlog, "old-agent", new)  # an upgraded rollout service assigned it ...
    await assign(nc, eventlog, "old-desired", old)  # ... a rollout before the upgrade assigned this one
    await assign(nc, eventlog, "wrong", new)
    await drift.start()
    devices = [Device(nc, name, "s1") for name in ("old-agent", "old-desired", "wrong")]
    reports = {"old-agent": old, "old-desired": new, "wrong": "0" * 64}  # a not-yet-upgraded agent, an upgraded one
    for device in devices:
        device.snapshot, device.hash = SNAPSHOT, reports[device.device]

    await until(drift, eventlog, "wrong", lambda e: any(isinstance(x, DriftBegan) for x in e), world, *devices)
    await world.spend(POLICY.drift_grace * 2, *devices)
    await drift.flush()
    for name in ("old-agent", "old-desired"):
        events = await observed(eventlog, name)
        assert "DriftBegan" not in types(events), name
        assert drift.devices[name].matches_desired and not drift.devices[name].drifted
        assert drift.devices[name].reported_config_hash == new  # recorded in the current form


async def test_the_alias_map_survives_a_checkpoint_and_older_checkpoints_are_not_taken(
        nc: NATS, eventlog: EventLog, drift: DriftService) -> None:
    """A checkpoint carries the map; one written before the map existed has another schema, so the
    first start of the upgraded service replays the log (and the snapshots) instead of taking it."""
    await append(eventlog, SnapshotCreated(snapshot_id=SNAPSHOT, name="floaty", version=1, config=FLOATY))
    await drift.start()
    assert drift.aliases == {legacy_config_hash(FLOATY): config_hash(FLOATY)}
    image = drift.image()
    assert image is not None
    again = DriftService(nc, eventlog, POLICY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(image), type=DriftImage))
    assert again.aliases == drift.aliases

    class DriftImageBefore(msgspec.Struct, frozen=True):  # DriftImage as the previous release wrote it
        devices: dict[str, DeviceState]
        seqs: dict[str, int]
    assert schema_of(DriftImage, 1) != schema_of(DriftImageBefore, 1)
