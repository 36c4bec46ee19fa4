"""Where verification reads from: the stream (two ordered-consumer passes, the audit subjects
first) or an export file of JSON lines (`{"seq", "subject", "body"}`, docs/audit.md)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from shared.audit.chain import AUDIT_SUBJECT_PREFIX, b64, unb64
from shared.audit.verify import AuditIndex, Report, Verifier, unsigned_too_long
from shared.errors import Invalid
from shared.eventlog import EventLog


class ExportLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """One exported message: its sequence, subject and exact stored body (as a JSON string when
    the body is UTF-8, which every envelope is; otherwise base64 in `body_b64`)."""

    seq: int
    subject: str
    body: str | None = None
    body_b64: str | None = None

    def raw(self) -> bytes:
        """The stored body bytes."""
        if self.body is not None:
            return self.body.encode()
        if self.body_b64 is not None:
            return unb64(self.body_b64)
        raise ValueError("a line needs body or body_b64")


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ExportLine)


def export_line(seq: int, subject: str, body: bytes) -> bytes:
    """The JSON line (with its newline) of one stored message."""
    try:
        line = ExportLine(seq, subject, body=body.decode())
    except UnicodeDecodeError:
        line = ExportLine(seq, subject, body_b64=b64(body))
    return _ENCODER.encode(line) + b"\n"


def read_export(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """(seq, subject, body) of every line of an export; a malformed line raises Invalid."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = _DECODER.decode(line)
                yield record.seq, record.subject, record.raw()
            except (msgspec.MsgspecError, ValueError) as exc:
                raise Invalid(f"{path} line {number} is not an export line: {exc}", field="file") from None


def verify_file(path: Path, *, pinned: Iterable[bytes] = (), from_seq: int | None = None,
                to_seq: int | None = None, expect: tuple[int, bytes] | None = None) -> Report:
    """Verify an export offline, from the checkpoint boundary at or before `from_seq` as on the
    stream. A file that does not start at seq 1 is verified from a checkpoint boundary inside it
    (the checkpoint that ends there vouches for the chain before it)."""
    if not path.is_file():
        raise Invalid(f"{path} is not a file", field="file")
    index = AuditIndex.of(m for m in read_export(path) if m[1].startswith(AUDIT_SUBJECT_PREFIX))
    first = next((seq for seq, _, _ in read_export(path)), 1)
    start = from_seq or 1
    if first > 1:  # the file begins later than the log: start at a checkpoint boundary inside it
        boundaries = sorted(c.event.through_seq + 1 for c in index.checkpoints if c.event.through_seq + 1 >= first)
        if not boundaries:
            raise Invalid(f"{path} starts at seq {first} and holds no checkpoint that vouches for the "
                          "chain from there on: export from seq 1 or a checkpoint boundary", field="file")
        before = [b for b in boundaries if b <= start]  # as on the stream: the boundary at or before --from
        start = before[-1] if before else boundaries[0]
    verifier = Verifier(index, pinned=pinned, from_seq=start, to_seq=to_seq, expect=expect)
    started = False
    for seq, subject, body in read_export(path):
        started = started or seq >= verifier.start_seq
        if started and not verifier.feed(seq, subject, body):
            break
    return verifier.report()


async def verify_stream(log: EventLog, *, pinned: Iterable[bytes] = (), from_seq: int = 1,
                        to_seq: int | None = None, expect: tuple[int, bytes] | None = None,
                        max_unsigned_age: float | None = None) -> Report:
    """Verify the log (or a copy of it: `EventLog(nc, stream=...)`) with two passes: the audit
    subjects, then every message from the checkpoint boundary at `from_seq`. With
    `max_unsigned_age`, an unsigned tail stored longer ago than that many seconds fails it."""
    last = await log.last_stream_seq()
    end = last if to_seq is None else min(to_seq, last)
    index = AuditIndex()
    async for seq, subject, body in log.replay_raw(1, last, subjects=f"{AUDIT_SUBJECT_PREFIX}>"):
        index.add(seq, subject, body)
    verifier = Verifier(index, pinned=pinned, from_seq=from_seq, to_seq=to_seq, expect=expect)
    async for seq, subject, body in log.replay_raw(verifier.start_seq, end):
        if not verifier.feed(seq, subject, body):
            break
    report = verifier.report()
    if max_unsigned_age is None or not report.unsigned or to_seq is not None:
        return report
    stored = await log.stored_at(report.to_seq - report.unsigned + 1)
    return unsigned_too_long(report, stored, datetime.now(UTC), max_unsigned_age)
