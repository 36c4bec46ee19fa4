"""The checkpoint writer's pure core: the hash chain over the log as it advances, when a
checkpoint is due, and the signed checkpoint event (docs/audit.md). No clock, no I/O: the key
and the messages are passed in."""

from __future__ import annotations

from nacl.signing import SigningKey

from shared.audit.chain import (
    AUDIT_SUBJECT_PREFIX,
    ZERO_CHAIN,
    b64,
    chain_step,
    checkpoint_message,
    endorsement_message,
    event_digest,
    key_id,
    sign,
)
from shared.events.audit import AuditCheckpointed, AuditKeyAnnounced


class Chain:
    """The chain through `seq`, the last checkpoint (`number`, `through`) and what it has not
    covered yet: per sequence after `through`, its digest and the chain value there."""

    def __init__(self) -> None:
        self.seq = 0
        self.chain = ZERO_CHAIN
        self.number = 0
        self.through = 0
        self.seqs: list[int] = []
        self.digests: list[bytes] = []
        self.chains: list[bytes] = []
        self.is_news: list[bool] = []
        self.news = 0  # uncovered events that are not audit events themselves

    def advance(self, seq: int, subject: str, body: bytes) -> None:
        """Hash the next message of the log (one already hashed is ignored)."""
        if seq <= self.seq:
            return
        self.chain = chain_step(self.chain, seq, subject, body)
        self.seq = seq
        self.seqs.append(seq)
        self.digests.append(event_digest(subject, body))
        self.chains.append(self.chain)
        news = not subject.startswith(AUDIT_SUBJECT_PREFIX)
        self.is_news.append(news)
        self.news += news

    def due(self, every: int) -> bool:
        """Is a checkpoint due (`every` events uncovered, some of them not audit events)?"""
        return self.news > 0 and len(self.seqs) >= every

    def checkpoint(self, key: SigningKey) -> AuditCheckpointed:
        """The next checkpoint, through the last hashed sequence, signed with `key`."""
        number, from_seq = self.number + 1, self.through + 1
        digests = b"".join(self.digests)
        message = checkpoint_message(number, from_seq, self.seq, self.chain, digests)
        return AuditCheckpointed(
            audit_id=str(number), number=number, from_seq=from_seq, through_seq=self.seq,
            chain=self.chain.hex(), digests=b64(digests), key_id=key_id(bytes(key.verify_key)),
            signature=b64(sign(key, message)))

    def adopt(self, checkpoint: AuditCheckpointed) -> bool:
        """Take a checkpoint from the log as the last one. False when it contradicts this chain
        (it signs another value for a sequence already hashed here): then nothing changes."""
        if checkpoint.number <= self.number:
            return True
        through = checkpoint.through_seq
        if through > self.seq:  # ahead of us (a restart): resume from it
            self.seq, self.chain = through, bytes.fromhex(checkpoint.chain)
            self._covered(len(self.seqs))
        else:
            cut = self._position(through) + 1 if through > self.through else 0
            if cut and self.chains[cut - 1].hex() != checkpoint.chain:
                return False
            self._covered(cut)
        self.number, self.through = checkpoint.number, through
        return True

    def skip(self, number: int) -> None:
        """Number `number` is taken by something that is no checkpoint of ours (squatted): the
        next checkpoint takes the number after it, covering the same range."""
        self.number = max(self.number, number)

    def _position(self, seq: int) -> int:
        # the stream has no gaps (deny_delete), so the position follows from the first sequence
        position = seq - self.seqs[0]
        if not 0 <= position < len(self.seqs) or self.seqs[position] != seq:
            position = self.seqs.index(seq)
        return position

    def _covered(self, count: int) -> None:
        self.news -= sum(self.is_news[:count])
        del self.seqs[:count], self.digests[:count], self.chains[:count], self.is_news[:count]


def announcement(key: SigningKey, previous: SigningKey | None) -> AuditKeyAnnounced:
    """The event that puts `key` in the log, endorsed by `previous` when it is given."""
    raw = bytes(key.verify_key)
    kid = key_id(raw)
    endorsed_by = endorsement = None
    if previous is not None:
        endorsed_by = key_id(bytes(previous.verify_key))
        endorsement = b64(sign(previous, endorsement_message(raw)))
    return AuditKeyAnnounced(audit_id=f"key-{kid}", key_id=kid, public_key=b64(raw),
                             endorsed_by=endorsed_by, endorsement=endorsement)
