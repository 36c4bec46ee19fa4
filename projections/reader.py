"""Reading FLEET_EVENTS in sequence order, in batches, for the projections.

An ordered consumer with a callback that only appends to a buffer: nats-py answers the server's
flow control as soon as a message is handed over, so the stream keeps flowing while a batch is
being applied (`EventLog.replay` reads with `next_msg`, which answers flow control only once the
application has caught up to the control point). When the buffer holds `8 x size` messages the
callback waits, which stops nats-py from draining and so, through flow control, the server from
sending: memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
from nats.aio.msg import Msg
from nats.js import api

from shared.envelope import Envelope, decode_envelope
from shared.errors import Invalid
from shared.eventlog import EventLog, Recorded
from shared.subjects import EVENTS_WILDCARD

UNDECODABLE = "<undecodable>"
NUL = b"\\u0000"


def _record(msg: Msg) -> Recorded:
    # Reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream_seq>.<consumer_seq>.<ts>.<pending>
    # (or the 12-token form with domain and account hash); the stream sequence is 4th from the end.
    seq = int(msg.reply.split(".")[-4])
    try:
        envelope = decode_envelope(msg.data)
        if NUL in msg.data:  # PostgreSQL text and jsonb cannot hold it: poison before any write
            envelope = msgspec.structs.replace(envelope, type=UNDECODABLE, causation_id=(
                f"{envelope.type} holds a NUL character (\\u0000), which PostgreSQL cannot store"))
    except Invalid as exc:  # not an envelope at all: poison for whoever applies it, never skipped
        envelope = Envelope(type=UNDECODABLE, v=0, id="", aggregate="", aggregate_id="", at="",
                            actor="", causation_id=str(exc))
    return Recorded(seq, msg.subject, envelope, (msg.headers or {}).get("traceparent"))


async def batches(log: EventLog, from_seq: int = 1, to_seq: int | None = None, *, follow: bool = False,
                  size: int = 1000) -> AsyncIterator[list[Recorded]]:
    """The log from `from_seq` (to `to_seq`, or the end as it is now unless `follow`) in batches
    of what has arrived, up to `size` events each."""
    if to_seq is None and not follow:
        to_seq = await log.last_stream_seq()
    if to_seq is not None and to_seq < from_seq:
        return
    buffer: list[Msg] = []
    arrived = asyncio.Event()
    room = asyncio.Event()
    room.set()
    limit = size * 8

    async def on_msg(msg: Msg) -> None:
        buffer.append(msg)
        arrived.set()
        if len(buffer) >= limit:
            room.clear()
            await room.wait()

    sub = await log.js.subscribe(
        EVENTS_WILDCARD, stream=log.stream, cb=on_msg, ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        config=api.ConsumerConfig(opt_start_seq=max(from_seq, 1)),
        pending_msgs_limit=-1, pending_bytes_limit=-1,
    )
    try:
        while True:
            await arrived.wait()
            taken = buffer[:size]
            del buffer[:size]
            if not buffer:
                arrived.clear()
            if len(buffer) < limit:
                room.set()
            records = []
            for msg in taken:
                record = _record(msg)
                if to_seq is not None and record.seq > to_seq:
                    break
                records.append(record)
            if records:
                yield records
            if to_seq is not None and records and records[-1].seq >= to_seq:
                return
            if to_seq is not None and len(records) < len(taken):
                return
    finally:
        room.set()
        await sub.unsubscribe()
