"""The event log: one JetStream stream, FLEET_EVENTS, append-only (DESIGN §4).

- `ensure_stream` creates the stream exactly as the contract says (shared.jetstream.EVENTS), or
  refuses to start when it exists with weaker settings; it never changes an existing stream.
- `append` / `append_batch` write with `Nats-Msg-Id` (the event id) and
  `Nats-Expected-Last-Subject-Sequence` (optimistic concurrency per aggregate). Several events go
  out as one JetStream atomic batch: all stored or none.
- Transient failures are retried with the *same* messages (shared.atomic.publish), so the server's
  duplicate window swallows a resend; a retry that meets a sequence conflict checks whether its
  own first attempt landed before calling it a conflict. One append never becomes two events.
- `load` reads one aggregate with batched direct gets; `replay` streams the whole log (or a
  range) through an ordered consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from shared import metrics, telemetry
from shared.aio import wait_set
from shared.atomic import MAX_BATCH, publish
from shared.envelope import Envelope, Event, decode_envelope, decode_event, encode_envelope
from shared.errors import Invalid
from shared.jetstream import EVENTS, direct_batch, ensure, status_of
from shared.subjects import EVENTS_STREAM, EVENTS_WILDCARD
from shared.times import parse_time
from shared.transient import reachable

_REPLAY_BUFFER = 10_000  # messages a replay buffers before it stops its subscription
_IDLE_CHECK = 0.25  # seconds without a message before a bounded replay checks it is done
UNDECODABLE = "<undecodable>"  # the type of a record whose body is no event envelope
HDR_MSG_ID = "Nats-Msg-Id"
HDR_EXPECTED_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HDR_EVENT_TYPE = "Fleet-Event-Type"

class Appended(msgspec.Struct, frozen=True):
    """Where one appended event landed."""

    subject: str
    seq: int


class Recorded(msgspec.Struct, frozen=True):
    """One event as stored in the log: stream sequence, subject and envelope."""

    seq: int
    subject: str
    envelope: Envelope
    traceparent: str | None = None  # of the command that appended it (replay only)

    @property
    def event(self) -> Event | None:
        """The typed event, or None when this build does not know its type."""
        return decode_event(self.envelope)


@dataclass(frozen=True)
class Write:
    """Events for one aggregate subject, appended only if the subject is at `expected_seq`.

    `expected_seq` is the stream sequence of the last event on the subject as the writer read it
    (0 for a new aggregate), or None to append without a concurrency check.
    """

    subject: str
    envelopes: Sequence[Envelope]
    expected_seq: int | None


class EventLog:
    """Client of the FLEET_EVENTS stream over one NATS connection."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str = EVENTS_STREAM,
        timeout: float = 5.0,
        retry_for: float = 30.0,
        consumers: bool = True,
    ) -> None:
        """`consumers=False`: read with direct gets only (bounded ranges), creating no consumer on
        the server: the way of an identity that may not create any (the auditor)."""
        self.nc = nc
        self.consumers = consumers
        self.js = nc.jetstream(timeout=timeout)
        self.stream = stream
        self.timeout = timeout
        self.retry_for = retry_for
        self.buffered_most = 0  # the most messages any read has held in memory at once (a bound check)
        self._direct_subject = f"$JS.API.DIRECT.GET.{stream}"

    # --- the stream -----------------------------------------------------------------------------

    async def ensure_stream(self, replicas: int = 1) -> api.StreamInfo:
        """Create FLEET_EVENTS, or check an existing one and refuse weaker settings."""
        return await ensure(self.nc, dataclasses.replace(EVENTS, stream=self.stream),
                            replicas, timeout=self.timeout)

    async def last_stream_seq(self) -> int:
        """The sequence of the newest event in the log (0 when empty)."""
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def created(self) -> str:
        """When the stream was created: what tells this log from another of the same name."""
        info = await self.js.stream_info(self.stream)
        return info.created.isoformat() if info.created else ""

    async def stored_at(self, seq: int) -> datetime | None:
        """When the server stored the message at `seq` (None: there is none)."""
        msg = await self._direct({"seq": seq})
        stamp = (msg.headers or {}).get("Nats-Time-Stamp")
        if status_of(msg) is not None or not stamp:
            return None
        return parse_time(re.sub(r"(\.\d{6})\d+", r"\1", stamp), "Nats-Time-Stamp")  # ns -> us

    async def fingerprint(self, seq: int) -> str:
        """SHA-256 of the subject and body of the event at `seq` ("" for 0 or a missing one)."""
        if seq <= 0:
            return ""
        msg = await self._direct({"seq": seq})
        if status_of(msg) is not None:
            return ""
        subject = (msg.headers or {}).get("Nats-Subject", "")
        return hashlib.sha256(subject.encode() + b"\n" + msg.data).hexdigest()

    # --- appending ------------------------------------------------------------------------------

    async def append(
        self, subject: str, envelopes: Sequence[Envelope], expected_seq: int | None
    ) -> list[Appended]:
        """Append events to one aggregate subject, all or nothing."""
        return await self.append_batch([Write(subject, envelopes, expected_seq)])

    async def append_batch(self, writes: Sequence[Write]) -> list[Appended]:
        """Append several writes. Writes are grouped into atomic batches of up to 1,000 events;
        each batch is all or nothing, and a single write is never split across batches."""
        if not writes:
            return []
        appended: list[Appended] = []
        for group in _group_writes(writes):
            appended.extend(await self._append_group(group))
        return appended

    async def _append_group(self, writes: list[Write]) -> list[Appended]:
        messages = _messages(writes)
        started = time.perf_counter()
        last_seq = await publish(self.nc, messages, timeout=self.timeout, retry_for=self.retry_for,
                                 what=self.stream, landed=lambda: self._landed(writes))
        metrics.APPEND_SECONDS.observe(time.perf_counter() - started)
        metrics.APPEND_BATCH_EVENTS.observe(len(messages))
        first = last_seq - len(messages) + 1
        return [Appended(subject, first + i) for i, (subject, _, _) in enumerate(messages)]

    async def _landed(self, writes: list[Write]) -> int | None:
        """After an ambiguous failure: the sequence of this group's last event if all its events
        are already in the log, else None."""
        for write in writes:
            if write.expected_seq is None:
                reply = await self._direct({"last_by_subj": write.subject})
                if status_of(reply) or decode_envelope(reply.data).id != write.envelopes[-1].id:
                    return None
                continue
            recorded, _ = await self.load(write.subject, after_seq=write.expected_seq, limit=1)
            if not recorded or recorded[0].envelope.id != write.envelopes[0].id:
                return None
        last_write = writes[-1]
        recorded, _ = await self.load(last_write.subject, after_seq=last_write.expected_seq or 0)
        return {r.envelope.id: r.seq for r in recorded}[last_write.envelopes[-1].id]

    # --- reading --------------------------------------------------------------------------------

    async def last_seq(self, subject: str) -> int:
        """The stream sequence of the newest event on `subject` (0 when there is none)."""
        reply = await self._direct({"last_by_subj": subject})
        if status_of(reply) == "404":
            return 0
        return int((reply.headers or {})["Nats-Sequence"])

    async def load(
        self, subject: str, after_seq: int = 0, limit: int | None = None
    ) -> tuple[list[Recorded], int]:
        """All events on one subject after `after_seq`, and the subject's last sequence."""
        recorded: list[Recorded] = []
        next_seq = after_seq + 1
        while True:
            want = 1000 if limit is None else min(1000, limit - len(recorded))
            batch, more = await self._direct_batch(subject, next_seq, want)
            recorded.extend(batch)
            if batch:
                next_seq = batch[-1].seq + 1
            if not more or not batch or (limit is not None and len(recorded) >= limit):
                break
        if limit is not None and len(recorded) >= limit:
            return recorded, await self.last_seq(subject)
        return recorded, (recorded[-1].seq if recorded else await self._last_or(subject, after_seq))

    async def _last_or(self, subject: str, after_seq: int) -> int:
        return await self.last_seq(subject) if after_seq else 0

    async def _direct(self, request: dict[str, Any]) -> Msg:
        with reachable("event log"):
            return await self.nc.request(self._direct_subject, msgspec.json.encode(request), self.timeout)

    async def _direct_batch(
        self, subject: str, start_seq: int, batch: int
    ) -> tuple[list[Recorded], bool]:
        """One batched direct get; returns the events and whether more are pending."""
        msgs, more = await direct_batch(self.nc, self.stream, subject, start_seq, batch, timeout=self.timeout)
        return [Recorded(seq, msg.subject, decode_envelope(msg.data)) for seq, msg in msgs], more

    async def replay(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        subjects: str | Sequence[str] = EVENTS_WILDCARD,
        follow: bool = False,
    ) -> AsyncIterator[Recorded]:
        """Events in sequence order from `from_seq`, one at a time (see `batches`)."""
        # aclosing: a reader that stops early closes the subscription now, not when collected
        async with contextlib.aclosing(self.batches(from_seq, to_seq, subjects=subjects, follow=follow)) as parts:
            async for batch in parts:
                for record in batch:
                    yield record

    async def replay_raw(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        subjects: str | Sequence[str] = EVENTS_WILDCARD,
        follow: bool = False,
    ) -> AsyncIterator[tuple[int, str, bytes]]:
        """As `replay`, but (seq, subject, the exact stored body) with nothing decoded: what the
        audit chain hashes, and a body that is not an envelope is passed on too."""
        async with contextlib.aclosing(self._messages(from_seq, to_seq, subjects=subjects, follow=follow,
                                                      size=1000)) as parts:
            async for batch in parts:
                for seq, msg in batch:
                    yield seq, msg.subject, msg.data

    async def batches(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        subjects: str | Sequence[str] = EVENTS_WILDCARD,
        follow: bool = False,
        size: int = 1000,
    ) -> AsyncGenerator[list[Recorded]]:
        """The one reader of the log: events in sequence order from `from_seq` through an ordered
        consumer, of the subjects matching `subjects` (one filter or several), in batches of what
        has arrived (up to `size`). Memory stays bounded: see `_Delivery`.

        Stops at `to_seq`, or at the end of the log as it was when reading began, unless `follow`
        is set, in which case it keeps yielding new events as they are appended. A body that is no
        event envelope comes as a record of type UNDECODABLE (never silently dropped, never fatal
        to the reader: who applies it decides)."""
        async with contextlib.aclosing(self._messages(from_seq, to_seq, subjects=subjects, follow=follow,
                                                      size=size)) as parts:
            async for batch in parts:
                yield [_recorded(msg, seq) for seq, msg in batch]

    async def _messages(
        self, from_seq: int, to_seq: int | None, *, subjects: str | Sequence[str], follow: bool, size: int
    ) -> AsyncGenerator[list[tuple[int, Msg]]]:
        """What `batches` and `replay_raw` read: (stream sequence, message) in batches."""
        if to_seq is None and not follow:
            to_seq = await self.last_stream_seq()
        if to_seq is not None and to_seq < from_seq:
            return
        if not self.consumers:
            async for direct in self._direct_messages(from_seq, to_seq, subjects, follow, size):
                yield direct
            return
        delivery = _Delivery(self, subjects)
        await delivery.start(max(from_seq, 1))
        buffer = delivery.buffer
        try:
            while True:
                while not buffer:
                    await delivery.resume()
                    delivery.arrived.clear()
                    if await self._idle(delivery.arrived, follow) and await delivery.drained():
                        # A subject filter may match nothing more before `to_seq`: stop once the
                        # consumer has nothing left to deliver instead of waiting forever.
                        return
                batch: list[tuple[int, Msg]] = []
                last = False
                while buffer and len(batch) < size and not last:
                    msg = buffer.popleft()
                    seq = _stream_seq(msg)
                    if to_seq is not None and seq > to_seq:
                        last = True
                        break
                    batch.append((seq, msg))
                    # the end: `to_seq`, or the last event matching the filter (which may end sooner)
                    last = (to_seq is not None and seq >= to_seq) or (not follow and _num_pending(msg) == 0)
                if delivery.resume_from and len(buffer) <= _REPLAY_BUFFER // 2:
                    await delivery.resume()
                if batch:
                    yield batch
                    # Let the loop breathe between batches: a reader folding a large backlog
                    # (270,000 events of one wave) otherwise keeps it for seconds, and heartbeats,
                    # commands and replies wait (issue #26).
                    await asyncio.sleep(0)
                if last:
                    return
        finally:
            await delivery.close()

    async def _direct_messages(
        self, from_seq: int, to_seq: int | None, subjects: str | Sequence[str], follow: bool, size: int
    ) -> AsyncGenerator[list[tuple[int, Msg]]]:
        """A bounded read through batched direct gets: what an identity that may create no
        consumer (an auditor, docs/security.md) reads with."""
        if follow or to_seq is None or not isinstance(subjects, str):
            raise Invalid("without consumers the log is read in a bounded range of one subject filter",
                          field="subjects")
        next_seq = max(from_seq, 1)
        while next_seq <= to_seq:
            msgs, more = await direct_batch(self.nc, self.stream, subjects, next_seq, min(size, to_seq - next_seq + 1),
                                           timeout=self.timeout)
            batch = [(seq, msg) for seq, msg in msgs if seq <= to_seq]
            if batch:
                yield batch
            if not more or not msgs or msgs[-1][0] >= to_seq:
                return
            next_seq = msgs[-1][0] + 1

    async def _idle(self, arrived: asyncio.Event, follow: bool) -> bool:
        """Wait for the next delivery. True when a bounded replay has waited `_IDLE_CHECK` seconds
        in vain; raises ConnectionClosedError when the connection is closed."""
        while True:
            if self.nc.is_closed:
                raise nats.errors.ConnectionClosedError
            if await wait_set(arrived, 1.0 if follow else _IDLE_CHECK):
                return False
            if not follow:
                return True


class _Delivery:
    """The messages of one replay, handed over by a subscription callback into a local buffer.

    A callback costs far less per message than `next_msg` (which makes a task, a uuid and a
    wait_for each time). nats-py answers flow control for callback subscriptions as messages
    arrive, so the server would never wait for a slow reader: instead, when the buffer holds
    `_REPLAY_BUFFER` messages the subscription is stopped, and it is started again after the last
    buffered message once the reader has taken half of them. Order and completeness are kept:
    messages that arrive while stopping are dropped and come again on the restart."""

    def __init__(self, log: EventLog, subjects: str | Sequence[str]) -> None:
        self.log = log
        self.js = log.js
        self.stream = log.stream
        self.subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        self.buffer: deque[Msg] = deque()
        self.arrived = asyncio.Event()
        self.sub: Any = None
        self.resume_from = 0  # while stopped for a full buffer: the stream sequence to restart at
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, seq: int) -> None:
        several = len(self.subjects) > 1
        self.sub = await self.js.subscribe(
            self.subjects[0],
            stream=self.stream,
            cb=self._received,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=seq, filter_subjects=self.subjects if several else None),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def _received(self, msg: Msg) -> None:
        if self.resume_from:
            return  # stopping: this one comes again when the subscription restarts
        self.buffer.append(msg)
        self.arrived.set()
        held = len(self.buffer) + self.sub.pending_msgs
        self.log.buffered_most = max(self.log.buffered_most, held)
        if len(self.buffer) >= _REPLAY_BUFFER:
            self.resume_from = _stream_seq(msg) + 1
            self._stopping = asyncio.get_running_loop().create_task(self.sub.unsubscribe())

    async def resume(self) -> None:
        """Restart a subscription stopped for a full buffer."""
        if not self.resume_from:
            return
        await self._stopped()
        seq, self.resume_from = self.resume_from, 0
        await self.start(seq)

    async def _stopped(self) -> None:
        if self._stopping is not None:
            stopping, self._stopping = self._stopping, None
            await stopping

    async def drained(self) -> bool:
        """Has the consumer nothing left to deliver (server side, client queue, buffer)?"""
        info = await self.sub.consumer_info()
        return not info.num_pending and self.sub.pending_msgs == 0 and not self.buffer

    async def close(self) -> None:
        if self.resume_from:
            await self._stopped()
        else:
            await self.sub.unsubscribe()


def _group_writes(writes: Sequence[Write]) -> list[list[Write]]:
    groups: list[list[Write]] = [[]]
    size = 0
    for write in writes:
        count = len(write.envelopes)
        if count == 0:
            continue
        if count > MAX_BATCH:
            raise Invalid(
                f"{count} events for one aggregate exceed the atomic batch limit of {MAX_BATCH}",
                field="events",
            )
        if size + count > MAX_BATCH:
            groups.append([])
            size = 0
        groups[-1].append(write)
        size += count
    return [group for group in groups if group]


def _messages(writes: list[Write]) -> list[tuple[str, bytes, dict[str, str]]]:
    """Wire messages with headers. The expected subject sequence goes on the first message of
    each subject only: later messages of the same subject in a batch follow it by construction."""
    messages = []
    seen: set[str] = set()
    trace_headers = telemetry.inject_headers()
    for write in writes:
        if write.subject in seen:
            raise Invalid(f"{write.subject} appears twice in one batch", field="subject")
        seen.add(write.subject)
        for index, envelope in enumerate(write.envelopes):
            headers = {HDR_MSG_ID: envelope.id, HDR_EVENT_TYPE: envelope.type, **trace_headers}
            if index == 0 and write.expected_seq is not None:
                headers[HDR_EXPECTED_SUBJECT_SEQ] = str(write.expected_seq)
            messages.append((write.subject, encode_envelope(envelope), headers))
    return messages


def _recorded(msg: Msg, seq: int) -> Recorded:
    try:
        envelope = decode_envelope(msg.data)
    except Invalid as exc:  # not an envelope at all: who applies it decides (never dropped)
        envelope = Envelope(type=UNDECODABLE, v=0, id="", aggregate="", aggregate_id="", at="",
                            actor="", causation_id=str(exc))
    return Recorded(seq, msg.subject, envelope, (msg.headers or {}).get("traceparent"))


def _num_pending(msg: Msg) -> int:
    # The last token of the ack reply subject: messages matching the filter still to deliver.
    return int(msg.reply.rsplit(".", 1)[-1])


def _stream_seq(msg: Msg) -> int:
    # Reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream_seq>.<consumer_seq>.<ts>.<pending>
    # (or the 12-token form with domain and account hash); the stream sequence is 4th from the end.
    return int(msg.reply.split(".")[-4])
