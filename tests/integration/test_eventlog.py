"""The event log against a real nats-server: append, load, replay, concurrency, atomicity,
immutability, and a server restart in the middle of a stream of appends."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from shared.atomic import HDR_BATCH_ID, HDR_BATCH_SEQ, publish_atomic
from shared.embedded import EmbeddedNats
from shared.envelope import Envelope, Event, seal
from shared.errors import Conflict, StreamMisconfigured
from shared.eventlog import _REPLAY_BUFFER, EventLog, Recorded, Write
from shared.jetstream import EVENTS
from shared.subjects import EVENTS_STREAM
from shared.times import utcnow


class Counted(Event, frozen=True, kw_only=True):
    """Test event: a counter moved to `value` (must be the previous value + 1)."""

    aggregate = "counter"
    id_field = "counter_id"
    counter_id: str
    value: int
    writer: str = ""


def counted(counter: str, value: int, writer: str = "") -> Envelope:
    return seal(Counted(counter_id=counter, value=value, writer=writer), actor="test", at=utcnow())


def counter_event(recorded: Recorded) -> Counted:
    event = recorded.event
    assert isinstance(event, Counted)
    return event


def values(recorded: list[Recorded]) -> list[int]:
    return [counter_event(r).value for r in recorded]


async def test_append_load_replay_round_trip(eventlog: EventLog) -> None:
    first = await eventlog.append("fleet.evt.counter.a", [counted("a", 1)], 0)
    assert [a.seq for a in first] == [1]
    more = await eventlog.append("fleet.evt.counter.a", [counted("a", 2), counted("a", 3)], 1)
    assert [a.seq for a in more] == [2, 3]
    await eventlog.append("fleet.evt.counter.b", [counted("b", 1)], 0)

    recorded, last = await eventlog.load("fleet.evt.counter.a")
    assert values(recorded) == [1, 2, 3]
    assert last == 3
    assert [r.seq for r in recorded] == [1, 2, 3]
    tail, last = await eventlog.load("fleet.evt.counter.a", after_seq=1)
    assert values(tail) == [2, 3]
    assert await eventlog.load("fleet.evt.counter.none") == ([], 0)
    assert await eventlog.last_seq("fleet.evt.counter.b") == 4

    replayed = [r async for r in eventlog.replay()]
    assert [(r.seq, r.subject) for r in replayed] == [
        (1, "fleet.evt.counter.a"), (2, "fleet.evt.counter.a"),
        (3, "fleet.evt.counter.a"), (4, "fleet.evt.counter.b")]
    assert isinstance(replayed[0].event, Counted)
    assert [r.seq async for r in eventlog.replay(2, 3)] == [2, 3]
    assert [r.seq async for r in eventlog.replay(subjects="fleet.evt.counter.b")] == [4]
    await eventlog.append("fleet.evt.counter.c", [counted("c", 1)], 0)
    several = ["fleet.evt.counter.b", "fleet.evt.counter.c"]
    assert [r.seq async for r in eventlog.replay(subjects=several)] == [4, 5]
    assert [r.seq async for r in eventlog.replay(5, subjects=several)] == [5]
    assert [r.seq async for r in eventlog.replay(6)] == []


async def test_load_spans_several_direct_get_batches(eventlog: EventLog) -> None:
    envelopes = [counted("big", i) for i in range(1, 1001)]
    await eventlog.append("fleet.evt.counter.big", envelopes, 0)
    await eventlog.append("fleet.evt.counter.big", [counted("big", i) for i in range(1001, 1501)], 1000)
    recorded, last = await eventlog.load("fleet.evt.counter.big")
    assert values(recorded) == list(range(1, 1501))
    assert last == 1500


async def test_stale_expected_sequence_is_a_conflict(eventlog: EventLog) -> None:
    await eventlog.append("fleet.evt.counter.a", [counted("a", 1)], 0)
    with pytest.raises(Conflict):
        await eventlog.append("fleet.evt.counter.a", [counted("a", 1)], 0)
    recorded, _ = await eventlog.load("fleet.evt.counter.a")
    assert values(recorded) == [1]


async def test_multi_event_append_is_all_or_nothing(eventlog: EventLog) -> None:
    await eventlog.append("fleet.evt.counter.a", [counted("a", 1)], 0)
    # Three good writes and one stale one in the same batch: nothing at all may be stored.
    writes = [Write(f"fleet.evt.counter.n{i}", [counted(f"n{i}", 1)], 0) for i in range(3)]
    writes.append(Write("fleet.evt.counter.a", [counted("a", 2)], 0))
    with pytest.raises(Conflict):
        await eventlog.append_batch(writes)
    assert await eventlog.last_stream_seq() == 1
    for i in range(3):
        assert await eventlog.last_seq(f"fleet.evt.counter.n{i}") == 0


async def test_batch_frames_carry_their_headers_and_refuse_forged_ones(eventlog: EventLog, nc: NATS) -> None:
    # The middle messages of a batch are written as HPUB frames by shared.atomic: they arrive
    # with every header; a value with a line break (which would forge a header) or a subject
    # with a blank is refused before anything is sent.
    batch = [(f"fleet.evt.counter.f{i}", msgspec.json.encode({"value": i}), {"Fleet-Event-Type": "Counted"})
             for i in range(3)]
    last = await publish_atomic(nc, batch, 5)
    middle = await nc.jetstream().get_msg(eventlog.stream, last - 1)
    assert middle.headers is not None
    assert middle.headers["Fleet-Event-Type"] == "Counted" and middle.headers[HDR_BATCH_SEQ] == "2"
    forged = {"Fleet-Event-Type": "Counted\r\nNats-Expected-Last-Subject-Sequence: 0"}
    for bad in ([batch[0], ("fleet.evt.counter.x", b"{}", forged), batch[2]],
                [batch[0], ("fleet.evt.counter x", b"{}", {}), batch[2]]):
        with pytest.raises(ValueError, match="would break the protocol"):
            await publish_atomic(nc, bad, 5)
    assert await eventlog.last_stream_seq() == last


async def test_a_batch_cut_off_mid_way_stores_nothing(eventlog: EventLog, nats_server: EmbeddedNats) -> None:
    # A writer that dies after sending part of an atomic batch (no commit): the server must
    # discard the partial batch, and a later append works normally.
    writer = await nats.connect(nats_server.url, user_credentials=os.environ["FLEET_NATS_CREDS"])
    for index in (1, 2):
        await writer.publish("fleet.evt.counter.cut", msgspec.json.encode({"value": index}),
                             headers={HDR_BATCH_ID: "cut-batch", HDR_BATCH_SEQ: str(index)})
    await writer.flush()
    await writer.close()  # the "crash"
    assert await eventlog.last_seq("fleet.evt.counter.cut") == 0
    appended = await eventlog.append("fleet.evt.counter.cut", [counted("cut", 1)], 0)
    recorded, _ = await eventlog.load("fleet.evt.counter.cut")
    assert values(recorded) == [1]
    assert appended[0].seq == recorded[0].seq


async def test_concurrent_writers_lose_no_update(eventlog: EventLog, nats_server: EmbeddedNats) -> None:
    """Two writers increment one counter with read-decide-append; each round exactly one wins,
    the loser re-reads and tries again; the log ends as 1..2N with no gap and no repeat."""
    rounds = 25
    conflicts = {"w1": 0, "w2": 0}

    async def writer(name: str) -> None:
        client = await nats.connect(nats_server.url, user_credentials=os.environ["FLEET_NATS_CREDS"])
        log = EventLog(client)
        done = 0
        while done < rounds:
            recorded, last = await log.load("fleet.evt.counter.shared")
            current = counter_event(recorded[-1]).value if recorded else 0
            try:
                await log.append("fleet.evt.counter.shared",
                                 [counted("shared", current + 1, name)], last)
                done += 1
            except Conflict:
                conflicts[name] += 1
        await client.close()

    await asyncio.gather(writer("w1"), writer("w2"))
    recorded, _ = await eventlog.load("fleet.evt.counter.shared")
    assert values(recorded) == list(range(1, 2 * rounds + 1))
    writers = [counter_event(r).writer for r in recorded]
    assert writers.count("w1") == rounds
    assert writers.count("w2") == rounds


async def test_server_refuses_delete_and_purge(eventlog: EventLog, nc: NATS) -> None:
    await eventlog.append("fleet.evt.counter.a", [counted("a", 1)], 0)
    js = nc.jetstream()
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg(EVENTS_STREAM, 1)
    with pytest.raises(nats.js.errors.APIError):
        await js.purge_stream(EVENTS_STREAM)
    recorded, _ = await eventlog.load("fleet.evt.counter.a")
    assert values(recorded) == [1]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"deny_delete": False}, "deny_delete"),
        ({"deny_purge": False}, "deny_purge"),
        ({"max_age": 3600.0}, "max_age"),
        ({"max_msgs": 1000}, "max_msgs"),
        ({"allow_atomic": False}, "allow_atomic"),
    ],
)
async def test_weaker_existing_stream_is_refused_not_changed(
    nc: NATS, change: dict[str, object], complaint: str
) -> None:
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    weak = EVENTS.config()
    for key, value in change.items():
        setattr(weak, key, value)
    await js.add_stream(weak)
    with pytest.raises(StreamMisconfigured, match=complaint):
        await EventLog(nc).ensure_stream()
    info = await js.stream_info(EVENTS_STREAM)
    for key, value in change.items():
        assert bool(getattr(info.config, key)) == bool(value)  # untouched
    await js.delete_stream(EVENTS_STREAM)


async def test_stream_is_created_as_the_contract_says(eventlog: EventLog, nc: NATS) -> None:
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    config = info.config
    assert config.subjects == ["fleet.evt.>"]
    assert config.storage == api.StorageType.FILE
    assert config.deny_delete and config.deny_purge and not config.allow_rollup_hdrs
    assert config.allow_atomic and config.allow_direct
    assert config.duplicate_window == 120.0
    assert (config.max_msgs, config.max_bytes, config.max_age) == (-1, -1, 0)
    await eventlog.ensure_stream()  # idempotent on a good stream


async def test_nats_restart_during_appends_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    log = EventLog(client, timeout=1.0, retry_for=30.0)
    await log.ensure_stream()
    acknowledged: list[int] = []

    async def append_many() -> None:
        last = 0
        for value in range(1, 301):
            appended = await log.append("fleet.evt.counter.r", [counted("r", value)], last)
            last = appended[0].seq
            acknowledged.append(value)

    task = asyncio.create_task(append_many())
    while len(acknowledged) < 50:
        await asyncio.sleep(0.01)
    server.kill()  # crash, not a clean stop
    await asyncio.sleep(0.5)
    restarted = await EmbeddedNats(tmp_path / "nats", port=server.port).start()
    await asyncio.wait_for(task, 60)

    recorded, _ = await log.load("fleet.evt.counter.r")
    assert values(recorded) == list(range(1, 301))  # every acknowledged value once, in order
    assert len({r.envelope.id for r in recorded}) == 300
    await client.close()
    restarted.stop()


async def test_a_slow_reader_holds_a_bounded_number_of_events(eventlog: EventLog) -> None:
    """Memory stays bounded however slow the reader: the subscription stops at a full buffer and
    starts again where it stopped, so every event comes exactly once, in order."""
    total = 60_000
    for start in range(0, total, 1000):
        await eventlog.append_batch([Write(f"fleet.evt.counter.c{start + i}", [counted(f"c{start + i}", 1)], None)
                                     for i in range(1000)])
    eventlog.buffered_most = 0
    seqs: list[int] = []
    async for batch in eventlog.batches(1, size=500):
        seqs += [r.seq for r in batch]
        await asyncio.sleep(0.01)  # a reader far slower than the stream
    assert seqs == list(range(1, total + 1))
    bound = _REPLAY_BUFFER + 2_000  # the buffer, and what was in flight when it stopped
    assert _REPLAY_BUFFER <= eventlog.buffered_most <= bound, eventlog.buffered_most


async def test_a_reader_without_consumers_reads_the_same_ranges(eventlog: EventLog, connect_as: Any) -> None:
    """What the auditor and the API read with batched direct gets (they may create no consumer)
    equals what an ordered consumer delivers: whole log, a range, a filter, small batches."""
    from tests.integration.test_projections import append_history

    last = await append_history(eventlog, 30, rounds=1)
    direct = EventLog(await connect_as("api", "api"), consumers=False)
    for start, end, subjects, size in ((1, None, "fleet.evt.>", 5000), (7, last - 3, "fleet.evt.>", 13),
                                       (1, None, "fleet.evt.device.*", 1000)):
        want = [(r.seq, r.subject, r.envelope.id) async for batch in
                eventlog.batches(start, end, subjects=subjects, size=size) for r in batch]
        got = [(r.seq, r.subject, r.envelope.id) async for batch in
               direct.batches(start, end, subjects=subjects, size=size) for r in batch]
        assert got == want and want, (start, end, subjects)
    raw = [item async for item in direct.replay_raw(1, 5)]
    assert [seq for seq, _, _ in raw] == [1, 2, 3, 4, 5]
