"""The command wire types of DESIGN §3, free of I/O so pure domain modules can use them: the
`Command` base (an idempotency key and who asks) and the reply shape."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared.ids import ID_RE, new_command_id

REASON_MAX = 1000
Reason = Annotated[str, msgspec.Meta(max_length=REASON_MAX)]  # why an operator did something
Expression = Annotated[str, msgspec.Meta(max_length=4096)]  # a selector, canary or wave list


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every command: an idempotency key chosen by the client (one is made up when it is
    left out, and then a resend is a new command), and who asks (filled in by the service from
    the authenticated identity; whatever a body says is overwritten)."""

    command_id: Annotated[str, msgspec.Meta(
        pattern=ID_RE.pattern, description="the idempotency key: a resend with the same id within the dedupe "
        "window gets the same reply and writes nothing more; a fresh one is made up when left out")] = msgspec.field(
        default_factory=new_command_id)
    actor: str = "anonymous"


class EventRef(msgspec.Struct, frozen=True):
    """Where an event of the reply was stored."""

    subject: str
    seq: int


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """The error part of a failed reply."""

    code: str
    message: str
    field: str | None = None


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    """`{"ok": true, "events": [...], "result": {...}}` or `{"ok": false, "error": {...}}`."""

    ok: bool
    events: list[EventRef] = []
    result: Any = None
    error: ErrorBody | None = None

    @property
    def last_seq(self) -> int:
        """The highest sequence among the reply's events (0 if none): wait for it to read back."""
        return max((ref.seq for ref in self.events), default=0)
