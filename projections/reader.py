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

from nats.aio.msg import Msg
from nats.js import api

from shared.envelope import Envelope, decode_envelope
from shared.errors import Invalid
from shared.eventlog import EventLog, Recorded
from shared.subjects import EVENTS_WILDCARD

UNDECODABLE = "<undecodable>"


def _seq(msg: Msg) -> int:
    # Reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream_seq>.<consumer_seq>.<ts>.<pending>
    # (or the 12-token form with domain and account hash); the stream sequence is 4th from the end.
    return int(msg.reply.rsplit(".", 4)[1])


def record_of(seq: int, subject: str, data: bytes, traceparent: str | None = None) -> Recorded:
    """A stored message as a Recorded event (a body that is no envelope becomes one of type
    `<undecodable>`: poison for whoever applies it, never skipped)."""
    try:
        envelope = decode_envelope(data)
    except Invalid as exc:
        envelope = Envelope(type=UNDECODABLE, v=0, id="", aggregate="", aggregate_id="", at="",
                            actor="", causation_id=str(exc))
    return Recorded(seq, subject, envelope, traceparent)


async def batches(log: EventLog, from_seq: int = 1, to_seq: int | None = None, *, follow: bool = False,
                  size: int = 1000) -> AsyncIterator[list[Recorded]]:
    """The log from `from_seq` (to `to_seq`, or the end as it is now unless `follow`) in batches
    of what has arrived, up to `size` events each."""
    async for taken in _messages(log, from_seq, to_seq, follow=follow, size=size):
        yield [record_of(seq, msg.subject, msg.data, (msg.headers or {}).get("traceparent"))
               for seq, msg in taken]


async def raw_batches(log: EventLog, from_seq: int = 1, to_seq: int | None = None, *,
                      size: int = 1000) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Like `batches` (never following), as (sequence, envelope bytes) pairs, nothing decoded."""
    async for taken in _messages(log, from_seq, to_seq, follow=False, size=size):
        yield [(seq, msg.data) for seq, msg in taken]


async def _messages(log: EventLog, from_seq: int, to_seq: int | None, *, follow: bool,
                    size: int) -> AsyncIterator[list[tuple[int, Msg]]]:
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
            out = []
            for msg in taken:
                seq = _seq(msg)
                if to_seq is not None and seq > to_seq:
                    break
                out.append((seq, msg))
            if out:
                yield out
            if to_seq is not None and out and out[-1][0] >= to_seq:
                return
            if to_seq is not None and len(out) < len(taken):
                return
    finally:
        room.set()
        await sub.unsubscribe()
