"""HTTP API tokens (DESIGN §11): issued by `fleet token create`, kept hashed in the JetStream KV
bucket `fleet_tokens`, checked by the query API.

A token reads `fpt_<id>_<secret>`. The id names the bucket key (so the API finds the record with
one direct get, and `fleet token list|revoke` can name a token without knowing it); only the
secret is secret, and the bucket holds its argon2id hash, never the secret. Revoking deletes the
key; the API's verifier re-reads a token's record every few seconds, so a revoked token stops
working within that time on every API instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from nats.aio.client import Client as NATS

from shared.auth.roles import TOKENS_BUCKET
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import check_id
from shared.jetstream import TOKENS, ensure
from shared.secretfiles import secrets_dir, write_private
from shared.transient import reachable

BUCKET = TOKENS_BUCKET
ROLES = ("viewer", "operator", "auditor", "admin")
PREFIX = "fpt"
_DIRECT = f"$JS.API.DIRECT.GET.KV_{BUCKET}.$KV.{BUCKET}"
# argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane). The secrets are 256 random
# bits, so the hash guards a leaked bucket against nothing a guess could win; a heavier setting
# would only make the first request of each token slower (RFC 9106's low-memory profile measured
# 0.65 s per check on the 2-core test machine under load).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the bucket keeps about one token (never the token itself)."""

    id: str
    name: str
    role: str
    hash: str
    created_at: str
    created_by: str


@dataclass(frozen=True)
class Principal:
    """Who an HTTP request authenticated as."""

    role: str
    name: str
    token_id: str

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


_DECODER = msgspec.json.Decoder(TokenRecord)


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text, or None when it is not shaped like one of ours."""
    parts = text.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or len(parts[2]) < 16 or len(text) > 256:
        return None
    try:
        check_id(parts[1], "token")
    except Invalid:
        return None
    return parts[1], parts[2]


def new_token(name: str, role: str, created_by: str, created_at: str) -> tuple[str, TokenRecord]:
    """A fresh token's text and the record to store for it."""
    check_id(name, "name")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    record = TokenRecord(id=token_id, name=name, role=role, hash=_HASHER.hash(secret),
                         created_at=created_at, created_by=created_by)
    return f"{PREFIX}_{token_id}_{secret}", record


def secret_matches(record: TokenRecord, secret: str) -> bool:
    """Whether `secret` is the one hashed in `record` (argon2id: slow on purpose)."""
    try:
        return _HASHER.verify(record.hash, secret)
    except (VerificationError, InvalidHashError):
        return False


async def get_record(nc: NATS, token_id: str, timeout: float = 2.0) -> TokenRecord | None:
    """One token's record by direct get (None when there is none, e.g. revoked)."""
    with reachable("token bucket"):
        msg = await nc.request(f"{_DIRECT}.{token_id}", b"", timeout)
    headers = msg.headers or {}
    if headers.get("Status") or headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
        return None
    try:
        return _DECODER.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def list_records(nc: NATS) -> list[TokenRecord]:
    """Every stored token record, by name. The keys come from the bucket stream's per-subject
    state (one request, consistent with the last write; a KV key watcher can stop early under
    load), then each record by direct get."""
    try:
        info = await nc.jetstream().stream_info(f"KV_{BUCKET}", subjects_filter=f"$KV.{BUCKET}.>")
    except nats.js.errors.NotFoundError:
        return []
    ids = [subject.rsplit(".", 1)[1] for subject in (info.state.subjects or {})]
    records = await asyncio.gather(*(get_record(nc, token_id) for token_id in ids))
    return sorted((r for r in records if r is not None), key=lambda r: r.name)


async def create(nc: NATS, name: str, role: str, created_by: str, created_at: str) -> tuple[str, TokenRecord]:
    """Issue a token; a name already in use is a conflict (names are the principal)."""
    await ensure(nc, TOKENS)  # created if missing (admin: `fleet up`, `fleet token`), else checked
    if any(r.name == name for r in await list_records(nc)):
        raise Conflict(f"a token named {name!r} already exists; revoke it first or pick another name",
                       field="name")
    text, record = await asyncio.to_thread(new_token, name, role, created_by, created_at)
    kv = await nc.jetstream().key_value(BUCKET)
    await kv.create(record.id, msgspec.json.encode(record))
    return text, record


async def revoke(nc: NATS, id_or_name: str) -> TokenRecord:
    """Delete a token's record (named by id or name); the API refuses it within seconds."""
    by_id = await get_record(nc, id_or_name) if parse_token(f"{PREFIX}_{id_or_name}_{'x' * 16}") else None
    matches = [by_id] if by_id else [r for r in await list_records(nc) if r.name == id_or_name]
    if not matches:
        raise NotFound(f"no token with id or name {id_or_name!r}", field="token")
    kv = await nc.jetstream().key_value(BUCKET)
    for record in matches:
        await kv.delete(record.id)
    return matches[0]


class TokenVerifier:
    """Checks bearer tokens for the API. The argon2 check runs once per token and process; the
    record is re-read (one direct get) when the last read is older than `recheck` seconds, so a
    revoked token stops working within `recheck` seconds and a busy API costs NATS one small
    request per token per `recheck`."""

    def __init__(self, nc: NATS, *, recheck: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:
        self.nc = nc
        self.recheck = recheck
        self.clock = clock
        self.max_entries = max_entries
        # token text -> (principal, the hash it was verified against, when the record was read)
        self._verified: dict[str, tuple[Principal, str, float]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, text: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None."""
        cached = self._verified.get(text)
        if cached is not None and self.clock() - cached[2] < self.recheck:
            return cached[0]
        pending = self._pending.get(text)
        if pending is not None:  # concurrent requests with one token share one check
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[text] = future
        try:
            principal = await self._check(text, cached)
            future.set_result(principal)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._pending[text]
        return principal

    async def _check(self, text: str, cached: tuple[Principal, str, float] | None) -> Principal | None:
        parsed = parse_token(text)
        if parsed is None:
            return None
        token_id, secret = parsed
        record = await get_record(self.nc, token_id)
        if record is None or record.role not in ROLES:
            self._verified.pop(text, None)
            return None
        fresh = cached is None or cached[1] != record.hash  # first sight, or the record was replaced
        if fresh and not await asyncio.to_thread(secret_matches, record, secret):
            self._verified.pop(text, None)
            return None
        principal = Principal(role=record.role, name=record.name, token_id=record.id)
        if len(self._verified) >= self.max_entries:
            self._verified.clear()
        self._verified[text] = (principal, record.hash, self.clock())
        return principal


def token_file(data_dir: Path) -> Path:
    """Where `fleet up` keeps the admin API token it issued (0600, in the 0700 secrets dir)."""
    return data_dir / "secrets" / "api-token"


async def bootstrap_admin_token(nc: NATS, data_dir: Path, created_at: str) -> Path:
    """On `fleet up`: make sure `<data-dir>/secrets/api-token` holds a live admin token (issued
    on first start, re-issued if its record is gone); returns the file's path."""
    await ensure(nc, TOKENS)
    secrets_dir(data_dir)
    path = token_file(data_dir)
    if path.exists():
        parsed = parse_token(path.read_text())
        if parsed is not None:
            record = await get_record(nc, parsed[0])
            if record is not None and await asyncio.to_thread(secret_matches, record, parsed[1]):
                return path
    with contextlib.suppress(NotFound):
        await revoke(nc, "local-admin")
    text, _ = await create(nc, "local-admin", "admin", "fleet-up", created_at)
    write_private(path, text + "\n")
    return path


def read_token(data_dir: Path) -> str | None:
    """The token `fleet up` left in `data_dir` (None when there is none)."""
    try:
        return token_file(data_dir).read_text().strip() or None
    except OSError:
        return None
