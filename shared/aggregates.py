"""Aggregate state held in memory by the service that owns it (DESIGN §4).

The store is rebuilt by replaying the family's subjects at start-up, then advanced by the
service's own appends. Executing a command is load -> decide -> append with the expected subject
sequence; when another writer got there first the aggregate is reloaded from the log and the
command decided again, a bounded number of times. The store also remembers which command ids
caused which events (from `causation_id`), so a command repeated after a restart is answered
with its original events instead of being applied twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

import msgspec

from shared.envelope import Event, seal
from shared.errors import Conflict, FleetError
from shared.eventlog import Appended, EventLog, Recorded
from shared.subjects import aggregate_wildcard, event_subject, parse_event_subject

S = TypeVar("S")
MAX_ATTEMPTS = 10


class Slot(msgspec.Struct, Generic[S], array_like=True, gc=False):
    """One aggregate instance: its state and the stream sequence of its last event. (A struct a
    checkpoint decodes straight into; never part of a reference cycle, so the GC skips it.)"""

    state: S
    seq: int = 0


def done_key(actor: str, command_id: str) -> str:
    """A command id is its sender's own: another identity reusing it sends a command of its own
    (docs/security.md). (Checkpoints written before this keyed by the id alone: such entries
    simply match no repeat.)"""
    return f"{actor} {command_id}"


class StoreImage(msgspec.Struct, Generic[S], frozen=True):
    """An AggregateStore's contents for a checkpoint: the aggregates' slots and the command ids
    remembered (oldest first)."""

    slots: dict[str, Slot[S]]
    commands: list[tuple[str, list[Appended]]]
    applied_through: int


class AggregateStore(Generic[S]):
    """In-memory states of one aggregate family (e.g. all devices)."""

    def __init__(
        self,
        log: EventLog,
        aggregate: str,
        initial: Callable[[str], S],
        evolve: Callable[[S, Event], S],
        *,
        remember_commands: int = 200_000,
    ) -> None:
        self.log = log
        self.aggregate = aggregate
        self.initial = initial
        self.evolve = evolve
        self.slots: dict[str, Slot[S]] = {}
        self.applied_through = 0
        self._commands: OrderedDict[str, list[Appended]] = OrderedDict()
        self._remember = remember_commands
        self.skipped_unknown = 0

    def get(self, aggregate_id: str) -> Slot[S]:
        """The slot of one aggregate (a fresh initial state at sequence 0 if it has no events)."""
        slot = self.slots.get(aggregate_id)
        return slot if slot is not None else Slot(self.initial(aggregate_id))

    def apply(self, recorded: Recorded, event: Event | None = None) -> None:
        """Fold one stored event into the store (idempotent for already-applied sequences)."""
        _, aggregate_id = parse_event_subject(recorded.subject)
        slot = self.slots.get(aggregate_id)
        if slot is not None and recorded.seq <= slot.seq:
            return
        event = event if event is not None else recorded.event
        if event is None:
            self.skipped_unknown += 1
            return
        if slot is None:
            slot = self.slots[aggregate_id] = Slot(self.initial(aggregate_id))
        slot.state = self.evolve(slot.state, event)
        slot.seq = recorded.seq
        self.applied_through = max(self.applied_through, recorded.seq)
        cause = recorded.envelope.causation_id
        if cause:
            cause = done_key(recorded.envelope.actor, cause)
            self._commands.setdefault(cause, []).append(Appended(recorded.subject, recorded.seq))
            self._commands.move_to_end(cause)
            if len(self._commands) > self._remember:
                self._commands.popitem(last=False)

    async def rebuild(self) -> int:
        """Replay every event of the family from the log; returns how many were applied."""
        count = 0
        async for recorded in self.log.replay(subjects=aggregate_wildcard(self.aggregate)):
            self.apply(recorded)
            count += 1
        return count

    async def reload(self, aggregate_id: str) -> Slot[S]:
        """Catch one aggregate up with the log (after a conflict)."""
        subject = event_subject(self.aggregate, aggregate_id)
        slot = self.get(aggregate_id)
        recorded, _ = await self.log.load(subject, after_seq=slot.seq)
        for item in recorded:
            self.apply(item)
        return self.get(aggregate_id)

    def image(self) -> StoreImage[S]:
        """The store's contents, for a checkpoint (shared, not copied: to be encoded before the
        next event changes them)."""
        return StoreImage(self.slots, list(self._commands.items()), self.applied_through)

    def restore(self, image: StoreImage[S]) -> None:
        """Take the contents of a checkpoint (replacing whatever the store held)."""
        self.slots = image.slots
        self._commands = OrderedDict(image.commands)
        self.applied_through = image.applied_through

    def already_done(self, command_id: str, actor: str) -> list[Appended] | None:
        """The events a command id of this actor already caused, if this store has seen it."""
        return self._commands.get(done_key(actor, command_id))

    async def execute(
        self,
        aggregate_id: str,
        decide: Callable[[S], Sequence[Event]],
        *,
        command_id: str,
        actor: str,
        now: datetime,
        correlation_id: str | None = None,
    ) -> list[Appended]:
        """Decide on the current state and append the events, retrying on concurrent writes."""
        subject = event_subject(self.aggregate, aggregate_id)
        reloaded = False
        for attempt in range(MAX_ATTEMPTS):
            done = self.already_done(command_id, actor)
            if done is not None:
                return done
            slot = self.get(aggregate_id)
            try:
                events = decide(slot.state)
            except FleetError:
                # A refusal may come from a stale view (another instance wrote meanwhile):
                # check the log once before refusing.
                if reloaded:
                    raise
                await self.reload(aggregate_id)
                reloaded = True
                continue
            if not events:
                return []
            envelopes = [
                seal(e, actor=actor, at=now, causation_id=command_id,
                     correlation_id=correlation_id or command_id)
                for e in events
            ]
            try:
                appended = await self.log.append(subject, envelopes, slot.seq)
            except Conflict:
                # Jittered pause so two writers racing on one aggregate do not stay in lockstep.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                await self.reload(aggregate_id)
                reloaded = True
                continue
            for event, envelope, where in zip(events, envelopes, appended, strict=True):
                self.apply(Recorded(where.seq, where.subject, envelope), event)
            return appended
        raise Conflict(
            f"{self.aggregate} {aggregate_id} kept changing under concurrent writers; "
            f"gave up after {MAX_ATTEMPTS} attempts",
            field=f"{self.aggregate}_id",
        )
