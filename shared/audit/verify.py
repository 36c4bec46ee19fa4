"""Verifying the log against its signed checkpoints (docs/audit.md). Pure: messages are fed in
sequence order as (seq, subject, body); where they come from is `shared.audit.source`.

Two passes: `AuditIndex` collects the audit events (keys, checkpoints) from the messages on
`fleet.evt.audit.*`, then `Verifier.feed` re-computes the chain message by message and checks
each checkpoint when the chain reaches its `through_seq`. The chain decides intact or not; the
checkpoint's per-event digests only name the first bad sequence and what is wrong with it."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from shared.audit.chain import (
    AUDIT_SUBJECT_PREFIX,
    DIGEST_SIZE,
    ZERO_CHAIN,
    b64,
    chain_step,
    checkpoint_message,
    endorsement_message,
    event_digest,
    key_id,
    signature_valid,
    unb64,
)
from shared.envelope import decode_envelope, decode_event
from shared.errors import FleetError, Invalid
from shared.events.audit import AuditCheckpointed, AuditKeyAnnounced

KINDS = ("altered", "missing", "reordered", "inserted", "bad_signature", "rewritten", "unsigned")


class Problem(msgspec.Struct, frozen=True):
    """The first thing found wrong: at which sequence, which kind (one of KINDS), and why."""

    seq: int
    kind: str
    detail: str


class KeyView(msgspec.Struct, frozen=True):
    """An announced (or pinned) signing key and whether this verification trusts it."""

    key_id: str
    public_key: str
    seq: int  # where it was announced (0: pinned, not announced in what was read)
    trusted: bool
    why: str  # pinned | first announced | endorsed by <key id> | not endorsed by a trusted key


class Report(msgspec.Struct, frozen=True):
    """The outcome of one verification."""

    intact: bool
    from_seq: int
    to_seq: int
    events: int
    checkpoints: int
    signed_through: int
    unsigned: int
    head: str  # "SEQ:HEX" of the chain at to_seq: what an auditor remembers for --expect
    pinned: bool
    keys: list[KeyView]
    expect_checked: bool
    problem: Problem | None = None
    warnings: list[str] = []


@dataclass(frozen=True)
class _Checkpoint:
    seq: int
    event: AuditCheckpointed


@dataclass
class AuditIndex:
    """The audit events of a log: announced keys and checkpoints, in log order."""

    keys: list[tuple[int, AuditKeyAnnounced]] = field(default_factory=list)
    checkpoints: list[_Checkpoint] = field(default_factory=list)
    digests: set[bytes] = field(default_factory=set)  # of every audit message, to place them
    squatted: list[int] = field(default_factory=list)  # audit subjects holding no audit event

    def add(self, seq: int, subject: str, body: bytes) -> None:
        """Take one message; anything that is not a readable audit event is left to the chain."""
        if not subject.startswith(AUDIT_SUBJECT_PREFIX):
            return
        self.digests.add(event_digest(subject, body))
        try:
            event = decode_event(decode_envelope(body))
        except (FleetError, msgspec.MsgspecError):
            self.squatted.append(seq)
            return
        if isinstance(event, AuditKeyAnnounced):
            self.keys.append((seq, event))
        elif isinstance(event, AuditCheckpointed):
            self.checkpoints.append(_Checkpoint(seq, event))

    @classmethod
    def of(cls, messages: Iterable[tuple[int, str, bytes]]) -> AuditIndex:
        """The index of some messages."""
        index = cls()
        for seq, subject, body in messages:
            index.add(seq, subject, body)
        return index


def trusted_keys(index: AuditIndex, pinned: Iterable[bytes]) -> tuple[dict[str, bytes], list[KeyView]]:
    """Key id -> public key of every trusted key, and a view of every key.

    Pinned keys are trusted; without pins the first announced key is (trust on first use). An
    announced key becomes trusted when a trusted key endorsed it; any other key is not."""
    trusted = {key_id(raw): raw for raw in pinned}
    views: dict[str, KeyView] = {
        kid: KeyView(kid, b64(raw), 0, True, "pinned") for kid, raw in trusted.items()}
    first_use = not trusted
    for seq, announced in index.keys:
        try:
            raw = unb64(announced.public_key)
        except ValueError:
            continue
        kid = key_id(raw)
        if kid != announced.key_id:
            continue
        if kid in trusted:
            views[kid] = KeyView(kid, announced.public_key, seq, True, views[kid].why)
            continue
        why = "not endorsed by a trusted key"
        if first_use:
            why, first_use = "first announced", False
        elif announced.endorsed_by in trusted and announced.endorsement is not None:
            try:
                endorsement = unb64(announced.endorsement)
            except ValueError:
                endorsement = b""
            if signature_valid(trusted[announced.endorsed_by], endorsement_message(raw), endorsement):
                why = f"endorsed by {announced.endorsed_by}"
        ok = not why.startswith("not")
        if ok:
            trusted[kid] = raw
        views.setdefault(kid, KeyView(kid, announced.public_key, seq, ok, why))
    return trusted, list(views.values())


class Verifier:
    """Feed messages in sequence order from `start_seq`; read `report()` at the end."""

    def __init__(self, index: AuditIndex, *, pinned: Iterable[bytes] = (), from_seq: int = 1,
                 to_seq: int | None = None, expect: tuple[int, bytes] | None = None) -> None:
        pins = list(pinned)
        self.pinned = bool(pins)
        self.audit_digests = index.digests
        self.squatted = index.squatted
        self.trusted, self.keys = trusted_keys(index, pins)
        self.to_seq = to_seq
        self.expect = expect
        self.expect_checked = False
        self.problem: Problem | None = None
        self.chain = ZERO_CHAIN
        self.start_seq = 1
        self.signed_through = 0
        self.checkpoints = 0
        # --from starts at the checkpoint boundary at or before it: the newest checkpoint whose
        # through_seq lies below from_seq vouches (once its signature holds) for the chain there.
        before = [c for c in index.checkpoints if c.event.through_seq < from_seq]
        if before:
            base = max(before, key=lambda c: c.event.through_seq)
            self.problem = self._signature_problem(base)
            if self.problem is None:
                self.start_seq = base.event.through_seq + 1
                self.chain = bytes.fromhex(base.event.chain)
                self.signed_through = base.event.through_seq
        if expect is not None and expect[0] < self.start_seq:
            raise Invalid(f"--expect {expect[0]} lies before where verification starts "
                          f"({self.start_seq}); lower --from", field="expect")
        self.pending = sorted((c for c in index.checkpoints if c.event.through_seq >= self.start_seq
                               and (to_seq is None or c.event.through_seq <= to_seq)),
                              key=lambda c: (c.event.through_seq, c.seq))
        self.range_start = self.start_seq
        self.buffer: list[tuple[int, bytes]] = []  # (seq, digest) since the last good checkpoint
        self.events = 0
        self.last_seq = self.start_seq - 1
        self.first_jump: Problem | None = None
        self.suspect: _Suspect | None = None  # a chain mismatch, read on to name it well

    def feed(self, seq: int, subject: str, body: bytes) -> bool:
        """Take the next message; False once a problem is found or the range is done."""
        if self.problem is not None:
            return False
        if self.to_seq is not None and seq > self.to_seq:
            return False
        if self.suspect is not None and seq > self.suspect.until:
            self._settle()
            return False
        while self.suspect is None and self.pending and self.pending[0].event.through_seq < seq:
            self._check(self.pending.pop(0))
            if self.problem is not None:
                return False
        if seq != self.last_seq + 1 and self.first_jump is None:
            kind = "missing" if seq > self.last_seq else "reordered"
            self.first_jump = Problem(self.last_seq + 1, kind,
                                      f"the log goes from seq {self.last_seq} to seq {seq}")
        self.chain = chain_step(self.chain, seq, subject, body)
        self.buffer.append((seq, event_digest(subject, body)))
        self.events += 1
        self.last_seq = seq
        if self.suspect is not None:
            return True
        if self.expect is not None and seq == self.expect[0]:
            self.expect_checked = True
            if self.chain != self.expect[1]:
                self.problem = Problem(seq, "rewritten", (
                    f"the chain at seq {seq} is {self.chain.hex()}, not the remembered "
                    f"{self.expect[1].hex()}: the history up to seq {seq} is not the one verified before"))
                return False
        while self.suspect is None and self.pending and self.pending[0].event.through_seq == seq:
            self._check(self.pending.pop(0))
        return self.problem is None

    def report(self) -> Report:
        """Finish: checkpoints the log ended before, the unsigned tail, --expect; the verdict."""
        while self.problem is None and self.suspect is None and self.pending:
            self._check(self.pending.pop(0))
        if self.suspect is not None:
            self._settle()
        if self.problem is None and self.first_jump is not None and self.first_jump.seq > self.signed_through:
            self.problem = self.first_jump  # a gap in the unsigned tail
        if (self.problem is None and self.expect is not None and not self.expect_checked
                and (self.to_seq is None or self.expect[0] <= self.to_seq)):
            self.problem = Problem(self.last_seq + 1, "missing", (
                f"the log ends at seq {self.last_seq}, before seq {self.expect[0]} whose chain "
                "the auditor remembered: it was truncated"))
        return Report(
            intact=self.problem is None, from_seq=self.start_seq, to_seq=self.last_seq,
            events=self.events, checkpoints=self.checkpoints, signed_through=self.signed_through,
            unsigned=self.last_seq - max(self.signed_through, self.start_seq - 1),
            head=f"{self.last_seq}:{self.chain.hex()}", pinned=self.pinned, keys=self.keys,
            expect_checked=self.expect_checked, problem=self.problem, warnings=[
                f"{len(self.squatted)} message(s) on checkpoint subjects are no audit events (first at seq "
                f"{self.squatted[0]}): someone with an audit identity squatted checkpoint numbers"]
            if self.squatted else [])


    # --- one checkpoint -------------------------------------------------------------------------

    def _signature_problem(self, checkpoint: _Checkpoint) -> Problem | None:
        cp, seq = checkpoint.event, checkpoint.seq
        where = f"checkpoint {cp.number} at seq {seq} (through {cp.through_seq})"
        public = self.trusted.get(cp.key_id)
        if public is None:
            return Problem(seq, "bad_signature", f"{where} is signed by key {cp.key_id}, which is not "
                           "trusted (neither pinned with --key nor endorsed by a trusted key)")
        try:
            message = checkpoint_message(cp.number, cp.from_seq, cp.through_seq,
                                         bytes.fromhex(cp.chain), unb64(cp.digests))
            signature = unb64(cp.signature)
        except ValueError:
            return Problem(seq, "bad_signature", f"{where} has a malformed chain, digests or signature")
        if not signature_valid(public, message, signature):
            return Problem(seq, "bad_signature", f"{where}: the signature by key {cp.key_id} does not match")
        return None

    def _check(self, checkpoint: _Checkpoint) -> None:
        self.problem = self._signature_problem(checkpoint)
        if self.problem is not None:
            return
        cp = checkpoint.event
        if self.chain == bytes.fromhex(cp.chain) and self.last_seq == cp.through_seq:
            self.checkpoints += 1
            self.signed_through = cp.through_seq
            self.range_start = cp.through_seq + 1
            self.buffer.clear()
            return
        # The chain says something before through_seq is wrong; the digests say where. A dropped
        # or inserted message near the end of the range shows only with what follows, so read on
        # through the next checkpoint's range (when it is signed) before naming it.
        expected, until = _digests(cp), cp.through_seq
        following = self.pending[0] if self.pending else None
        if following is None:
            until = self.to_seq if self.to_seq is not None else sys.maxsize  # the unsigned tail
        elif following.event.from_seq == cp.through_seq + 1 and self._signature_problem(following) is None:
            expected += _digests(following.event)
            until = following.event.through_seq
            self.pending.pop(0)
        where = (f"the chain at seq {cp.through_seq} differs from checkpoint {cp.number} (seq {checkpoint.seq}) "
                 f"somewhere in seq {self.range_start}-{cp.through_seq}")
        skip = max(0, cp.from_seq - self.range_start)  # checkpoints before this one were unreadable
        self.suspect = _Suspect(expected, cp.from_seq, skip, until, Problem(self.range_start, "altered", where))

    def _settle(self) -> None:
        suspect, self.suspect = self.suspect, None
        assert suspect is not None
        self.problem = locate(suspect.expected, suspect.from_seq, self.buffer[suspect.skip:],
                              self.audit_digests) or suspect.fallback


@dataclass(frozen=True)
class _Suspect:
    expected: list[bytes]
    from_seq: int
    skip: int
    until: int
    fallback: Problem


def _digests(cp: AuditCheckpointed) -> list[bytes]:
    digests = unb64(cp.digests)
    return [digests[i:i + DIGEST_SIZE] for i in range(0, len(digests), DIGEST_SIZE)]


def locate(expected: list[bytes], from_seq: int, actual: list[tuple[int, bytes]],
           checkpoints: AbstractSet[bytes] = frozenset()) -> Problem | None:
    """The first position where the log differs from what a checkpoint signed, classified.

    `expected`: the signed digests of seq from_seq, from_seq+1, ...; `actual`: (seq, digest) as
    read, in order; `checkpoints`: digests of the log's audit messages, which belong after the
    range they sign (so one met too early was moved up, not forged). None when they agree (then
    only a digest collision could hide a change)."""
    actual_digests = [digest for _, digest in actual]
    for i in range(max(len(expected), len(actual))):
        seq = from_seq + i
        if i >= len(actual):
            return Problem(seq, "missing", f"the event signed for seq {seq} is absent (the range ends "
                           f"at seq {actual[-1][0] if actual else from_seq - 1})")
        got_seq, got = actual[i]
        if i >= len(expected):
            return Problem(seq, "inserted", f"seq {got_seq} holds an event no checkpoint signed")
        want = expected[i]
        if got == want:
            if got_seq != seq:
                return Problem(seq, "altered", f"the event signed for seq {seq} is stored as seq {got_seq}")
            continue
        signed_later = _index(expected, got, i + 1)
        later = f"seq {from_seq + signed_later}" if signed_later is not None else "a later checkpoint"
        if signed_later is None and got not in checkpoints:
            later = ""
        present_later = _index(actual_digests, want, i + 1)
        if later and present_later is not None:
            return Problem(seq, "reordered", f"seq {seq} holds the message signed for {later}, "
                           f"and the one signed for seq {seq} comes later")
        if present_later is not None:
            return Problem(seq, "inserted", f"seq {seq} holds an event no checkpoint signed; the event "
                           f"signed for seq {seq} follows at seq {actual[present_later][0]}")
        if later:
            return Problem(seq, "missing", f"the event signed for seq {seq} is absent; where it should be "
                           f"is the message signed for {later}")
        return Problem(seq, "altered", f"the event at seq {seq} is not the one signed for it")
    return None


def _index(items: list[bytes], value: bytes, start: int) -> int | None:
    try:
        return items.index(value, start)
    except ValueError:
        return None


def unsigned_too_long(report: Report, first_unsigned_stored: datetime | None, now: datetime,
                      max_age: float) -> Report:
    """The report, failed when its unsigned tail began longer than `max_age` seconds ago: the
    writer checkpoints a quiet log every FLEET_AUDIT_MAX_DELAY, so an older unsigned tail means
    checkpointing stopped (and anything in it could be altered unseen)."""
    if not report.intact or not report.unsigned or first_unsigned_stored is None:
        return report
    age = (now - first_unsigned_stored).total_seconds()
    if age <= max_age:
        return report
    seq = report.to_seq - report.unsigned + 1
    return msgspec.structs.replace(report, intact=False, problem=Problem(seq, "unsigned", (
        f"{report.unsigned} events from seq {seq} on have waited {age:.0f} s for a checkpoint, more than "
        f"{max_age:.0f} s: checkpointing has stopped (is the audit part running? squatted?)")))
