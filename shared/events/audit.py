"""Events of the audit checkpoint writer (`fleet.evt.audit.<id>`, DESIGN §8, docs/audit.md).

Two kinds, one family: a signing key announced in the log (`fleet.evt.audit.key-<key id>`), and a
signed checkpoint of the hash chain (`fleet.evt.audit.<n>`, n = 1, 2, ... the checkpoint's
number). Each subject is written once (expected last subject sequence 0), so the server itself
refuses a second checkpoint with the same number or a second announcement of the same key."""

from __future__ import annotations

from shared.envelope import Event


class AuditEvent(Event, frozen=True, kw_only=True):
    """Base of audit events; `audit_id` is the last subject token."""

    id_field = "audit_id"
    audit_id: str


class AuditKeyAnnounced(AuditEvent, frozen=True, kw_only=True):
    """An ed25519 public key that signs checkpoints from now on.

    `endorsed_by`/`endorsement`: the key id of the previously announced key and its signature over
    the new public key (docs/audit.md, key rotation); both None for a first key."""

    aggregate = "audit"
    key_id: str
    public_key: str  # base64 of the raw 32-byte ed25519 public key
    endorsed_by: str | None = None
    endorsement: str | None = None  # base64 signature


class AuditCheckpointed(AuditEvent, frozen=True, kw_only=True):
    """The hash chain at `through_seq`, signed; `digests` holds 8 bytes per event of
    `from_seq..through_seq` so verify can name the first bad sequence."""

    aggregate = "audit"
    number: int
    from_seq: int
    through_seq: int
    chain: str  # hex of c_through (32 bytes)
    digests: str  # base64 of the concatenated 8-byte event digests, in sequence order
    key_id: str
    signature: str  # base64 ed25519 signature over checkpoint_message(...)
