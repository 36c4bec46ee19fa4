"""NATS JWTs (nats-io/jwt v2 format) as msgspec Structs, signed with nkeys (ed25519).

Only what Fleetplane issues: operator, account and user claims, scoped signing keys, service
exports/imports and revocations. A JWT is `base64url(header).base64url(claims).base64url(sig)`,
the signature is ed25519 over the first two parts with the issuer's nkey, and `jti` is a hash
of the claims (the server only uses it to tell two JWTs apart)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import msgspec
import nkeys
from fleet_agent import credentials

PREFIX_OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
PREFIX_ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
PREFIX_USER = nkeys.PREFIX_BYTE_USER

_HEADER = b'{"typ":"JWT","alg":"ed25519-nkey"}'
_ENCODER = msgspec.json.Encoder()


class Permission(msgspec.Struct, omit_defaults=True):
    """Subjects allowed and denied (nats `pub`/`sub`)."""

    allow: list[str] | None = None
    deny: list[str] | None = None


class ResponsePermission(msgspec.Struct):
    """May answer this many replies per request received, for ttl nanoseconds (0 = no limit)."""

    max: int = 1
    ttl: int = 0


class UserPermissions(msgspec.Struct, omit_defaults=True):
    """A user's permissions and limits (also the template of a scoped signing key)."""

    pub: Permission | None = None
    sub: Permission | None = None
    resp: ResponsePermission | None = None
    subs: int = -1
    data: int = -1
    payload: int = -1


class UserNats(UserPermissions, omit_defaults=False):
    """The `nats` part of a user JWT (`type` and `version` must be on the wire: defaults are kept)."""

    issuer_account: str | None = None
    tags: list[str] | None = None
    type: str = "user"
    version: int = 2


class UserScope(msgspec.Struct):
    """A scoped signing key: users it signs get `template`, whatever their JWT says."""

    key: str
    role: str
    template: UserPermissions
    kind: str = "user_scope"
    description: str = ""


class Export(msgspec.Struct):
    """A subject an account offers to others."""

    name: str
    subject: str
    type: str = "service"
    response_type: str | None = None


class Import(msgspec.Struct):
    """A subject an account takes from another; `share` makes the server stamp the requester's
    identity (`Nats-Request-Info`) on every request that crosses."""

    name: str
    subject: str
    account: str
    type: str = "service"
    share: bool = False


class AccountLimits(msgspec.Struct):
    """Account limits (-1 = unlimited); JetStream is on only where storage is not 0."""

    subs: int = -1
    data: int = -1
    payload: int = -1
    imports: int = -1
    exports: int = -1
    wildcards: bool = True
    conn: int = -1
    leaf: int = -1
    mem_storage: int = 0
    disk_storage: int = 0
    streams: int = 0
    consumer: int = 0


class AccountNats(msgspec.Struct):
    """The `nats` part of an account JWT."""

    limits: AccountLimits
    exports: list[Export] | None = None
    imports: list[Import] | None = None
    signing_keys: list[UserScope | str] | None = None
    revocations: dict[str, int] | None = None
    type: str = "account"
    version: int = 2


class OperatorNats(msgspec.Struct):
    """The `nats` part of the operator JWT."""

    system_account: str | None = None
    signing_keys: list[str] | None = None
    type: str = "operator"
    version: int = 2


class Claims(msgspec.Struct, omit_defaults=True):
    """The registered claims plus the NATS part."""

    sub: str
    name: str
    nats: UserNats | AccountNats | OperatorNats
    iss: str = ""
    iat: int = 0
    exp: int | None = None
    jti: str = ""


class ClaimsView(msgspec.Struct):
    """What we read back from a JWT we (or someone) issued."""

    sub: str
    name: str = ""
    iat: int = 0
    exp: int | None = None
    iss: str = ""


def new_key(prefix: int) -> nkeys.KeyPair:
    """A fresh nkey pair of the given kind (operator, account or user)."""
    return key_from_raw(os.urandom(32), prefix)


def key_from_raw(raw: bytes, prefix: int) -> nkeys.KeyPair:
    """The nkey pair of a 32-byte ed25519 seed."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(raw, prefix)))


def public(key: nkeys.KeyPair) -> str:
    """The public key as text (`O...`, `A...`, `U...`)."""
    return bytes(key.public_key).decode()


def seed_text(key: nkeys.KeyPair) -> str:
    """The seed as text (`SO...`, `SA...`, `SU...`)."""
    return bytes(key.seed).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(claims: Claims, signer: nkeys.KeyPair, *, issued_at: int | None = None) -> str:
    """Sign `claims` with `signer` (which becomes `iss`) and return the JWT."""
    claims.iss = public(signer)
    claims.iat = int(time.time()) if issued_at is None else issued_at
    claims.jti = ""
    digest = hashlib.sha256(_ENCODER.encode(claims)).digest()
    claims.jti = base64.b32encode(digest).rstrip(b"=").decode()
    head_and_body = f"{_b64(_HEADER)}.{_b64(_ENCODER.encode(claims))}"
    signature = signer.sign(head_and_body.encode())
    return f"{head_and_body}.{_b64(signature)}"


def read_claims(token: str) -> ClaimsView:
    """The claims of a JWT, not verified (we verify nothing here: the server does)."""
    body = token.split(".")[1]
    return msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), type=ClaimsView)


def creds(user_jwt: str, user_seed: str) -> str:
    """A NATS credentials file (the format every NATS client reads)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


jwt_of_creds = credentials.jwt_of_creds  # the credentials file's format is the device's contract

def to_builtins(value: Any) -> Any:
    """Plain data of a claims Struct (for tests and debugging)."""
    return msgspec.to_builtins(value)
