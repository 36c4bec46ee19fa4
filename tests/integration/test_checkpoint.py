"""Checkpoints of a service's state (issue 15.5) against a real nats-server: a restart from a
checkpoint plus the log's tail gives exactly the state of a full replay, for every checkpointed
service; a checkpoint that does not match the log is ignored and the service replays from zero."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from benchmarks.synthetic import fleet_history
from services.drift.handlers import DriftImage, DriftService
from services.registry.handlers import RegistryImage
from services.registry.handlers import start as start_registry
from services.rollout.handlers import RolloutImage, RolloutService
from shared.checkpoint import Checkpoints, _Stored, ensure_buckets
from shared.commands import CommandClient
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.subjects import CHECKPOINTED, EVENTS_STREAM, checkpoint_bucket
from tests.conftest import Creds
from tests.integration.test_drift import POLICY
from tests.integration.test_registry import fleet
from tests.integration.test_simulator import until

START = datetime(2026, 11, 1, tzinfo=UTC)
IMAGES: dict[str, type[Any]] = {"registry": RegistryImage, "rollout": RolloutImage, "drift": DriftImage}


@dataclass
class Running:
    """One started service with its checkpoints: its state as a checkpoint would hold it."""

    checkpoints: Checkpoints[Any]
    image: Callable[[], Any]
    stop: Callable[[], Awaitable[None]]


async def run(kind: str, nc: NATS, eventlog: EventLog, *, every: int = 1, version: int = 1) -> Running:
    checkpoints: Checkpoints[Any] = Checkpoints(nc, eventlog, kind, IMAGES[kind], every=every,
                                                version=version, interval=0.05)
    if kind == "registry":
        registry, service = await start_registry(nc, eventlog, checkpoints)
        task = asyncio.create_task(registry.follow(checkpoints))

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await service.stop()
            await checkpoints.close()

        return Running(checkpoints, registry.image, stop)
    if kind == "rollout":
        rollout = RolloutService(nc, eventlog, checkpoints=checkpoints)
        await rollout.start()
        # the image leaves out what restore rebuilds (site_of): compare that too
        return Running(checkpoints, lambda: (rollout.image(), rollout.index.view.site_of), rollout.stop)
    drift = DriftService(nc, eventlog, POLICY, tick=0.05, clock=lambda: 1_000.0, checkpoints=checkpoints)
    await drift.start()
    return Running(checkpoints, drift.image, drift.stop)


async def append(eventlog: EventLog, rounds: list[Any]) -> int:
    for writes in rounds:
        await eventlog.append_batch(writes)
    return await eventlog.last_stream_seq()


@pytest.fixture
async def buckets(nc: NATS, eventlog: EventLog) -> None:
    """Fresh checkpoint buckets for the test's fresh log."""
    js = nc.jetstream()
    for kind in IMAGES:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_object_store(checkpoint_bucket(kind))
    await ensure_buckets(nc)


HISTORY = list(fleet_history(200, rounds=4, start=START))


@pytest.mark.parametrize("kind", ["registry", "rollout", "drift"])
async def test_a_restart_from_a_checkpoint_equals_a_full_replay(
        kind: str, nc: NATS, eventlog: EventLog, buckets: None) -> None:
    first_part = await append(eventlog, HISTORY[:5])
    first = await run(kind, nc, eventlog)
    await until(lambda: first.checkpoints.written >= 1 and first.checkpoints.through_seq == first_part,
                f"a checkpoint of {kind} through {first_part}")
    await first.stop()
    head = await append(eventlog, HISTORY[5:])  # the tail the restart must replay
    assert head > first_part

    resumed = await run(kind, nc, eventlog, every=10**9)
    try:
        assert resumed.checkpoints.loaded_through == first_part
        from_checkpoint = resumed.image()
    finally:
        await resumed.stop()
    full = await run(kind, nc, eventlog, every=0)  # no checkpoints: the whole log
    try:
        assert full.checkpoints.loaded_through == 0
        replayed = full.image()
    finally:
        await full.stop()
    assert from_checkpoint is not None and replayed is not None
    assert from_checkpoint == replayed


async def test_a_rollout_service_restarted_from_a_checkpoint_has_caught_up_at_once(
        nc: NATS, eventlog: EventLog, buckets: None) -> None:
    """Its checkpoint holds no rollout event (none happened): it has still read the log through
    the checkpoint's sequence, so a read that waits for the log's head does not wait."""
    head = await append(eventlog, HISTORY)
    first = await run("rollout", nc, eventlog)
    await until(lambda: first.checkpoints.through_seq == head, "a rollout checkpoint through the head")
    await first.stop()
    rollout = RolloutService(nc, eventlog, checkpoints=Checkpoints(nc, eventlog, "rollout", RolloutImage,
                                                                   every=10**9))
    await rollout.start()
    try:
        assert rollout.checkpoints is not None and rollout.checkpoints.loaded_through == head
        await rollout.caught_up(timeout=2.0)  # raised Unavailable when it counted rollout events only
    finally:
        await rollout.stop()


async def test_a_registry_restarted_from_a_checkpoint_answers_a_repeated_command_as_before(
        nc: NATS, eventlog: EventLog, buckets: None) -> None:
    first = await run("registry", nc, eventlog)
    client = CommandClient(nc, actor="operator:test")
    await client.send("registry", "add_site", {"site_id": "s1"})
    added = await client.send("registry", "add_device", {"device_id": "d1", "site_id": "s1", "command_id": "c-1"})
    head = await eventlog.last_stream_seq()
    await until(lambda: first.checkpoints.through_seq == head, "a checkpoint after the commands")
    await first.stop()
    resumed = await run("registry", nc, eventlog, every=10**9)
    try:
        assert resumed.checkpoints.loaded_through == head
        again = await client.send("registry", "add_device", {"device_id": "d1", "site_id": "s1", "command_id": "c-1"})
        assert again.events == added.events  # the original events, not a refusal nor new ones
        assert await eventlog.last_stream_seq() == head
    finally:
        await resumed.stop()


async def _stored(nc: NATS, eventlog: EventLog) -> tuple[Checkpoints[Any], _Stored, int]:
    """A registry checkpoint written through the current head, and what it holds."""
    await append(eventlog, HISTORY[:3])
    first = await run("registry", nc, eventlog)
    head = await eventlog.last_stream_seq()
    await until(lambda: first.checkpoints.written >= 1, "a registry checkpoint")
    await first.stop()
    store = await nc.jetstream().object_store(checkpoint_bucket("registry"))
    got = await store.get("registry")
    assert got.data is not None
    stored = msgspec.msgpack.decode(got.data, type=_Stored)
    return first.checkpoints, stored, head


async def _put(nc: NATS, data: bytes) -> None:
    store = await nc.jetstream().object_store(checkpoint_bucket("registry"))
    await store.put("registry", data)


@pytest.mark.parametrize("spoil", ["corrupt", "altered chunk", "older schema", "another stream", "other event",
                                   "beyond the log", "another service"])
async def test_a_checkpoint_that_does_not_match_the_log_is_ignored(
        spoil: str, nc: NATS, eventlog: EventLog, buckets: None, caplog: pytest.LogCaptureFixture) -> None:
    _, stored, head = await _stored(nc, eventlog)
    version = 1
    if spoil == "corrupt":
        await _put(nc, b"\x93not a checkpoint")
    elif spoil == "altered chunk":  # one more chunk on the object's subject: the digest no longer holds
        store = await nc.jetstream().object_store(checkpoint_bucket("registry"))
        info = await store.get_info("registry")
        await nc.jetstream().publish(f"$O.{checkpoint_bucket('registry')}.C.{info.nuid}", b"tampered")
    elif spoil == "older schema":
        version = 2
    elif spoil == "another stream":  # the same history appended again to a new FLEET_EVENTS
        await nc.jetstream().delete_stream(EVENTS_STREAM)
        for _ in range(50):
            with contextlib.suppress(nats.js.errors.ServerError):
                await eventlog.ensure_stream()
                break
        assert await append(eventlog, HISTORY[:3]) == head
    elif spoil == "another service":  # a checkpoint another service took, put in this one's place
        await _put(nc, msgspec.msgpack.encode(msgspec.structs.replace(stored, service="rollout")))
    elif spoil == "other event":
        await _put(nc, msgspec.msgpack.encode(msgspec.structs.replace(stored, through_digest="0" * 64)))
    else:
        await _put(nc, msgspec.msgpack.encode(msgspec.structs.replace(stored, through_seq=head + 5)))
    resumed = await run("registry", nc, eventlog, every=10**9, version=version)
    try:
        assert resumed.checkpoints.loaded_through == 0
        image = resumed.image()
    finally:
        await resumed.stop()
    assert "checkpoint ignored, replaying from zero" in caplog.text
    if spoil == "another service":
        assert "taken by 'rollout', not 'registry'" in caplog.text
    full = await run("registry", nc, eventlog, every=0)
    try:
        assert image == full.image()
        assert len(image.devices.slots) == 200
    finally:
        await full.stop()


async def test_a_service_identity_writes_and_reads_its_own_checkpoints_only(
        nc: NATS, eventlog: EventLog, buckets: None, connect_as: Callable[..., Awaitable[NATS]]) -> None:
    """Under JWT auth: the registry's identity writes, replaces (purging the old chunks) and
    loads its checkpoint; it cannot write the rollout service's."""
    await append(eventlog, HISTORY[:3])
    registry_nc = await connect_as("service:registry", "registry")
    as_registry = EventLog(registry_nc)
    first = await run("registry", registry_nc, as_registry)
    head = await eventlog.last_stream_seq()
    await until(lambda: first.checkpoints.written >= 1, "a checkpoint written as service:registry")
    # the chunks of a write killed half-way: stored, but no object refers to them
    await nc.jetstream().publish(f"$O.{checkpoint_bucket('registry')}.C.orphan", b"half a checkpoint")
    await append(eventlog, HISTORY[3:6])  # round 5 relabels devices: registry events
    await until(lambda: first.checkpoints.written >= 2, "a second one, replacing the first")
    await first.stop()
    info = await nc.jetstream().stream_info(f"OBJ_{checkpoint_bucket('registry')}", subjects_filter="$O.>")
    chunks = [s for s in (info.state.subjects or {}) if ".C." in s]
    assert len(chunks) == 1  # the replaced object's chunks and the orphan were purged
    resumed = await run("registry", registry_nc, as_registry, every=10**9)
    try:
        assert resumed.checkpoints.loaded_through > head
    finally:
        await resumed.stop()
    # Another service's bucket is out of reach altogether (the server refuses even its info).
    assert not await Checkpoints(registry_nc, as_registry, "rollout", RolloutImage, every=1).open()


async def test_fleet_init_creates_the_log_and_every_bucket_as_admin(nats_server: EmbeddedNats, nc: NATS,
                                                                    eventlog: EventLog) -> None:
    js = nc.jetstream()
    for service in CHECKPOINTED:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_object_store(checkpoint_bucket(service))
    code, out, err = await fleet(nats_server.url, "init", "--json")  # the fixture's admin identity
    assert code == 0, err
    assert json.loads(out)["buckets"][2:] == [checkpoint_bucket(s) for s in CHECKPOINTED]
    for service in CHECKPOINTED:
        await js.object_store(checkpoint_bucket(service))
    again = await fleet(nats_server.url, "init")  # only checks
    assert again[0] == 0 and "are in place" in again[1]


async def test_fleet_init_as_a_service_identity_refuses_and_creates_nothing(
        nats_server: EmbeddedNats, nc: NATS, eventlog: EventLog, creds: Creds) -> None:
    js = nc.jetstream()
    for service in CHECKPOINTED:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_object_store(checkpoint_bucket(service))
    code, out, err = await fleet(nats_server.url, "init", "--json", creds=creds("service:registry", "registry"))
    assert code == 5, (out, err)  # unavailable: what it needs is out of this identity's reach
    assert "needs admin credentials" in out + err
    for service in CHECKPOINTED:
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.object_store(checkpoint_bucket(service))
