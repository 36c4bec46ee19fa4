"""JetStream atomic batch publish (ADR-50, nats-server >= 2.12) with nats-py, which has no API for
it: every message carries `Nats-Batch-Id` and `Nats-Batch-Sequence`; the first is a request, so a
stream that refuses batches fails fast; the last carries `Nats-Batch-Commit: 1` and its reply is
the batch's ack. The server stores all messages or none. Used by the event log and the
desired-state bucket."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.ids import new_event_id

HDR_BATCH_ID = "Nats-Batch-Id"
HDR_BATCH_SEQ = "Nats-Batch-Sequence"
HDR_BATCH_COMMIT = "Nats-Batch-Commit"
MAX_BATCH = 1000  # the server's limit on one atomic batch

Message = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _BatchAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch: str | None = None
    count: int | None = None
    error: _ApiError | None = None


_ACK_DECODER = msgspec.json.Decoder(_BatchAck)


async def publish_atomic(nc: NATS, messages: Sequence[Message], timeout: float) -> int:
    """Publish `messages` as one atomic batch; return the stream sequence of the last one.

    A refused batch raises nats.js.errors.APIError carrying the server's err_code; timeouts and
    connection errors propagate as nats-py raises them (nothing was stored unless committed)."""
    batch_id = new_event_id()
    last = len(messages)
    for index, (subject, payload, headers) in enumerate(messages, 1):
        batch_headers = {**headers, HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(index)}
        if index == last:
            batch_headers[HDR_BATCH_COMMIT] = "1"
            return batch_ack(await nc.request(subject, payload, timeout, headers=batch_headers))
        if index == 1:  # acknowledged, so a refused batch fails fast instead of at commit
            reply = await nc.request(subject, payload, timeout, headers=batch_headers)
            if reply.data:
                batch_ack(reply)
        else:
            await nc.publish(subject, payload, headers=batch_headers)
    raise ValueError("an atomic batch needs at least one message")


def batch_ack(reply: Msg) -> int:
    """The stream sequence acknowledged by a batch reply, or the server's refusal as APIError."""
    ack = _ACK_DECODER.decode(reply.data)
    if ack.error is not None:
        raise nats.js.errors.APIError(code=ack.error.code, err_code=ack.error.err_code,
                                      description=ack.error.description)
    return ack.seq
