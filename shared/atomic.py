"""JetStream atomic batch publish (ADR-50, nats-server >= 2.12) with nats-py, which has no API for
it: every message carries `Nats-Batch-Id` and `Nats-Batch-Sequence`; the first is a request, so a
stream that refuses batches fails fast; the last carries `Nats-Batch-Commit: 1` and its reply is
the batch's ack. The server stores all messages or none.

`publish` is the one write of the event log and the desired-state bucket: one message plainly,
several as one atomic batch, and the same messages sent again after a transient failure (a
leader election, a reconnect) until a deadline: the duplicate window swallows a resend whose
first try landed, and a resend that meets a sequence conflict asks whether its own first try
landed before calling it a conflict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.errors import Conflict, Unavailable
from shared.ids import new_event_id
from shared.transient import NATS_TRANSIENT

HDR_BATCH_ID = "Nats-Batch-Id"
HDR_BATCH_SEQ = "Nats-Batch-Sequence"
HDR_BATCH_COMMIT = "Nats-Batch-Commit"
MAX_BATCH = 1000  # the server's limit on one atomic batch
WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_MSG_ID = 10201  # a resent batch whose messages are already stored
_BATCH_INCOMPLETE_CODES = {10174, 10175, 10176, 10179}  # batch abandoned: nothing stored, resend

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
    if not messages:
        raise ValueError("an atomic batch needs at least one message")
    batch_id = new_event_id()
    last = len(messages)
    middle = _frames(batch_id, messages, nc.max_payload) if last > 2 else b""  # checked before sending
    if last > 1:  # acknowledged, so a refused batch fails fast instead of at commit
        subject, payload, headers = messages[0]
        reply = await nc.request(subject, payload, timeout, headers=_batch_headers(headers, batch_id, 1))
        if reply.data:
            batch_ack(reply)
    if middle:
        await write_frames(nc, middle, last - 2)
    subject, payload, headers = messages[-1]
    commit = {**_batch_headers(headers, batch_id, last), HDR_BATCH_COMMIT: "1"}
    return batch_ack(await nc.request(subject, payload, timeout, headers=commit))


class _Resend(Exception):
    """A failure after which sending the same messages again is safe."""


async def publish(nc: NATS, messages: Sequence[Message], *, timeout: float, retry_for: float, what: str,
                  landed: Callable[[], Awaitable[int | None]] | None = None) -> int:
    """Publish `messages` all or nothing; return the stream sequence of the last one. After a
    transient failure the same messages go again, until `retry_for` seconds after the start
    (then Unavailable naming `what`). A sequence conflict is Conflict, unless on a resend
    `landed()` finds the first try stored (it returns that try's last sequence, else None)."""
    started = time.perf_counter()
    try:  # the first attempt runs outside tenacity: it costs nothing when nothing fails
        return await _publish_once(nc, messages, timeout)
    except _Resend:
        pass
    try:
        async for retrying in AsyncRetrying(
            retry=retry_if_exception_type(_Resend), wait=wait_exponential(multiplier=0.05, max=2.0),
            stop=stop_after_delay(max(0.0, retry_for - (time.perf_counter() - started))), reraise=True,
        ):
            with retrying:
                if retrying.retry_state.attempt_number == 1:
                    await asyncio.sleep(0.05)  # the wait that precedes every resend
                try:
                    return await _publish_once(nc, messages, timeout)
                except Conflict:
                    seq = None if landed is None else await landed()
                    if seq is None:
                        raise
                    return seq
    except _Resend as exc:
        raise Unavailable(f"could not write to {what} within {retry_for:.0f}s: {exc.__cause__!r}") from exc
    raise AssertionError("unreachable")


async def _publish_once(nc: NATS, messages: Sequence[Message], timeout: float) -> int:
    try:
        if len(messages) == 1:
            subject, payload, headers = messages[0]
            ack = await nc.jetstream(timeout=timeout).publish(subject, payload, timeout=timeout,
                                                              headers=headers or None)
            return int(ack.seq)
        return await publish_atomic(nc, messages, timeout)
    except nats.js.errors.APIError as exc:
        if exc.err_code in (WRONG_LAST_SEQUENCE, BATCH_DUPLICATE_MSG_ID):
            raise Conflict(f"an aggregate changed since it was read: {exc.description}") from None
        if exc.err_code in _BATCH_INCOMPLETE_CODES or isinstance(exc, NATS_TRANSIENT):
            raise _Resend() from exc
        raise
    except NATS_TRANSIENT as exc:
        raise _Resend() from exc


async def write_frames(nc: NATS, frames: bytes, count: int) -> None:
    """Queue `count` pre-built HPUB frames into the pending buffer as nats-py's own `publish` does
    (sent now, or on reconnect if the link drops), then flush.

    The one place that touches nats-py internals: it has no public call for pre-built frames, and
    normalising headers message by message in `publish` costs ~4x the frame (docs/decisions.md).
    `tests/unit/test_atomic_frames.py` fails loudly when these internals change shape."""
    await nc._send_command(frames)
    nc.stats["out_msgs"] += count
    await nc._flush_pending()


def _batch_headers(headers: dict[str, str], batch_id: str, index: int) -> dict[str, str]:
    return {**headers, HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(index)}


def _frames(batch_id: str, messages: Sequence[Message], max_payload: int) -> bytes:
    """The HPUB protocol frames of the middle messages of a batch (sequences 2 .. n-1).

    nats-py's `publish` normalises and checks every header of every message (strip, a regex,
    translate, encode), which costs ~10 us per message with the five headers an event carries
    in a batch, against ~2.5 us for writing the same frame here. In a batch of 1,000 that was
    most of a writer's time, so the frames are built here and handed to the connection's pending
    buffer in one piece, after the first message and before the commit. The lengths on the HPUB
    line frame the headers, so only a subject with a blank or a control character could break the
    protocol; a line break in a header value would forge a header. Both are refused."""
    frames = []
    batch = f"{HDR_BATCH_ID}: {batch_id}\r\n{HDR_BATCH_SEQ}: "
    for index in range(2, len(messages)):
        subject, payload, headers = messages[index - 1]
        block = "".join(["NATS/1.0\r\n", *[f"{k}: {v}\r\n" for k, v in headers.items()],
                         batch, str(index), "\r\n\r\n"]).encode()
        if not subject.isprintable() or " " in subject or block.count(b"\n") != len(headers) + 4:
            raise ValueError(f"message {index} of a batch has a subject or header that would break the protocol")
        if len(payload) > max_payload:
            raise nats.errors.MaxPayloadError
        frames.append(b"HPUB %b %d %d\r\n%b%b\r\n" % (subject.encode(), len(block), len(block) + len(payload),
                                                          block, payload))
    return b"".join(frames)


def batch_ack(reply: Msg) -> int:
    """The stream sequence acknowledged by a batch reply, or the server's refusal as APIError."""
    ack = _ACK_DECODER.decode(reply.data)
    if ack.error is not None:
        raise nats.js.errors.APIError(code=ack.error.code, err_code=ack.error.err_code,
                                      description=ack.error.description)
    return ack.seq
