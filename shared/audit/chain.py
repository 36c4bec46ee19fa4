"""The bytes of the audit proof, exactly as docs/audit.md states them: the hash chain, the
per-event digests, what a checkpoint signature and a key endorsement sign, and key ids. Pure."""

from __future__ import annotations

import base64
import hashlib
import struct

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ZERO_CHAIN = bytes(32)
DIGEST_SIZE = 8
CHECKPOINT_TAG = b"fleetplane-audit-checkpoint-v1\x00"
ENDORSEMENT_TAG = b"fleetplane-audit-key-v1\x00"
AUDIT_SUBJECT_PREFIX = "fleet.evt.audit."

_U64 = struct.Struct(">Q")
_sha256 = hashlib.sha256


def chain_step(previous: bytes, seq: int, subject: str, body: bytes) -> bytes:
    """c_n = sha256(c_{n-1} || seq as 8-byte big-endian || subject as UTF-8 || 0x00 || body)."""
    return _sha256(b"".join((previous, _U64.pack(seq), subject.encode(), b"\x00", body))).digest()


def event_digest(subject: str, body: bytes) -> bytes:
    """The first 8 bytes of sha256(subject || 0x00 || body): an event's content, not its place."""
    return _sha256(b"".join((subject.encode(), b"\x00", body))).digest()[:DIGEST_SIZE]


def checkpoint_message(number: int, from_seq: int, through_seq: int, chain: bytes, digests: bytes) -> bytes:
    """What a checkpoint's signature signs."""
    return b"".join((CHECKPOINT_TAG, _U64.pack(number), _U64.pack(from_seq), _U64.pack(through_seq),
                     chain, _sha256(digests).digest()))


def endorsement_message(public_key: bytes) -> bytes:
    """What the previous key signs to endorse a new public key."""
    return ENDORSEMENT_TAG + public_key


def key_id(public_key: bytes) -> str:
    """The first 16 hex digits of sha256(raw public key)."""
    return _sha256(public_key).hexdigest()[:16]


def b64(data: bytes) -> str:
    """Standard base64 with padding, as every binary field of an audit event is written."""
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """The bytes of a base64 field (raises ValueError when it is not base64)."""
    return base64.b64decode(text.encode(), validate=True)


def public_key_of(text: str) -> bytes:
    """A raw 32-byte ed25519 public key from base64 or hex text (raises ValueError)."""
    text = text.strip()
    raw = bytes.fromhex(text) if len(text) == 64 else unb64(text)
    if len(raw) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, not {len(raw)}")
    return raw


def sign(key: SigningKey, message: bytes) -> bytes:
    """The 64-byte ed25519 signature of `message`."""
    return bytes(key.sign(message).signature)


def signature_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Does `signature` sign `message` under `public_key`?"""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True
