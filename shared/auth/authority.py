"""The authority of one deployment: the operator and account nkeys under `<data-dir>/secrets/`
(dir 0700, files 0600), the account JWTs the server loads, and the issuing and revoking of
users.

Accounts: SYS (the server's system account; its user pushes account updates), FLEET (JetStream:
the log and the buckets; services, devices, auditors, the API, admin) and OPS (operators; imports
FLEET's commands with `share: true`). Device users are signed by a *scoped* signing key of FLEET,
so whatever a device JWT says, the server gives it only the device template, filled with the
device id by `{{name()}}`: issuing a device touches no server config and no account JWT.

A device's user nkey is derived from its id and a generation (HMAC-SHA256 with a secret of this
authority), so revoking a device needs no table of issued keys: the revocation names the derived
public key and the time, and every JWT of that key issued up to then is refused. Re-enrolling a
revoked device moves it to the next generation: a new key, so a stolen old seed stays useless.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nkeys
from nats.aio.client import Client as NATS

from shared.auth import jwt
from shared.auth.roles import DEVICE_TEMPLATE, FLEET, INBOX, OPS, ROLE_TAG, ROLES, inbox_prefix, role
from shared.errors import Invalid
from shared.ids import check_id
from shared.secretfiles import write_private
from shared.subjects import COMMANDS_PREFIX

_KEYS = {"operator": jwt.PREFIX_OPERATOR, "sys": jwt.PREFIX_ACCOUNT, "fleet": jwt.PREFIX_ACCOUNT,
         "ops": jwt.PREFIX_ACCOUNT, "devices": jwt.PREFIX_ACCOUNT, "operator-signing": jwt.PREFIX_OPERATOR}
# What the authority part holds (docs/operations.md, "The identity duties"): the operator's signing
# key (it re-signs FLEET's account JWT with each revocation), FLEET's scoped device key (it signs
# renewed device JWTs), the secret device keys derive from, and the public keys of the rest; not
# the operator's own key nor any account's.
DUTY_FILES = ("operator-signing.nk", "devices.nk", "device-seeds.key", "public-keys.json")
_PUBLIC_KEYS = "public-keys.json"
_PREVIOUS_SIGNING = "operator-signing.previous.nk"



class _State(msgspec.Struct):
    revocations: dict[str, int] = {}  # user public key -> revoked every JWT issued up to then
    last_iat: int = 0
    handled_seq: int = 0  # the revoker has seen the device events up to this log sequence
    # device id -> the generation of its key (absent: 0); a re-enrolment after a revocation
    # moves to the next, so the old seed is useless with any new JWT. Never pruned.
    generations: dict[str, int] = {}
    pruned_before: int = 0  # revocations older than this were pruned (their JWTs have all expired)


def _merge(mine: _State, other: _State) -> None:
    """Take another copy's facts into `mine` without losing any: every revocation (the later
    time), every key generation (the higher), the furthest handled event, the latest prune. Two
    copies changed apart (the CLI beside the authority part, two instances) converge, and no
    change can undo a revocation or a rotation."""
    mine.pruned_before = max(mine.pruned_before, other.pruned_before)
    for key, at in other.revocations.items():
        mine.revocations[key] = max(at, mine.revocations.get(key, at))
    mine.revocations = {k: t for k, t in mine.revocations.items() if t >= mine.pruned_before}
    for device, generation in other.generations.items():
        mine.generations[device] = max(generation, mine.generations.get(device, 0))
    mine.handled_seq = max(mine.handled_seq, other.handled_seq)
    mine.last_iat = max(mine.last_iat, other.last_iat)


_STATE = "revocations.json"


@dataclass
class Authority:
    """Operator/account keys of one deployment and what they sign."""

    directory: Path
    keys: dict[str, nkeys.KeyPair]  # the seeds this process holds (all, or only DUTY_FILES' two)
    device_secret: bytes
    state: _State
    publics: dict[str, str]  # every key's public half, seed or not
    _seen: tuple[int, int, int] | None = None  # (inode, mtime, size) of the state file last read

    def refresh(self) -> None:
        """Read the revocation state again if another process changed it since (a stat when not):
        every decision (renewing, revoking, enrolling) is taken on the current state, never on a
        copy loaded at start (one stale copy rewrote a revocation away: docs/security.md)."""
        path = self.directory / _STATE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self.state = msgspec.json.decode(path.read_bytes(), type=_State)
            self._seen = seen

    def encoded_state(self) -> bytes:
        """The current state, as kept in the file (and in NATS by the authority part)."""
        self.refresh()
        return msgspec.json.encode(self.state)

    def adopt_state(self, encoded: bytes) -> None:
        """Take in a state read elsewhere (the authority part's shared copy), merged (`_merge`)."""
        with self._changing() as state:
            _merge(state, msgspec.json.decode(encoded, type=_State))

    @contextlib.contextmanager
    def _changing(self) -> Iterator[_State]:
        """Read-modify-write of the state under an exclusive lock, so two processes (`fleet up`'s
        revoker and a CLI revocation) never write from stale copies."""
        lock = self.directory / ".revocations.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._seen = None
            self.refresh()
            yield self.state
            self._save()
        finally:
            os.close(fd)

    @classmethod
    def load_or_create(cls, directory: Path) -> Authority:
        """The authority kept in `directory`, created on first use."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        keys: dict[str, nkeys.KeyPair] = {}
        for name, prefix in _KEYS.items():
            path = directory / f"{name}.nk"
            if not path.exists():
                write_private(path, jwt.seed_text(jwt.new_key(prefix)) + "\n")
            keys[name] = nkeys.from_seed(bytearray(path.read_text().strip().encode()))
        secret_path = directory / "device-seeds.key"
        if not secret_path.exists():
            write_private(secret_path, os.urandom(32).hex() + "\n")
        publics = {name: jwt.public(key) for name, key in keys.items()}
        write_private(directory / _PUBLIC_KEYS, msgspec.json.encode(publics).decode() + "\n")
        authority = cls(directory, keys, bytes.fromhex(secret_path.read_text().strip()), _State(), publics)
        authority.refresh()
        return authority

    @classmethod
    def load_for_duties(cls, directory: Path) -> Authority:
        """The authority as its part holds it: DUTY_FILES only (a full set of keys works too)."""
        missing = [name for name in DUTY_FILES if not (directory / name).exists()]
        if missing:
            raise Invalid(f"{directory} lacks {', '.join(missing)}: the authority part needs "
                          f"{', '.join(DUTY_FILES)} (docs/operations.md)", field="data_dir")
        keys = {name: nkeys.from_seed(bytearray((directory / f"{name}.nk").read_text().strip().encode()))
                for name in ("operator-signing", "devices")}
        publics = msgspec.json.decode((directory / _PUBLIC_KEYS).read_bytes(), type=dict[str, str])
        secret = bytes.fromhex((directory / "device-seeds.key").read_text().strip())
        authority = cls(directory, keys, secret, _State(), publics)
        authority.refresh()
        return authority

    @classmethod
    def exists(cls, directory: Path) -> bool:
        """Whether an authority was created in `directory`."""
        return (directory / "operator.nk").exists()

    def rotate_signing_key(self, *, finish: bool = False) -> str:
        """Rotate the operator's signing key in two steps: a new key becomes current while the
        old one stays trusted (the operator JWT lists both: give the servers the new
        `server-config`, then the authority part its new key); `finish` stops trusting the old
        one. Returns the current key's public half."""
        previous = self.directory / _PREVIOUS_SIGNING
        if finish:
            previous.unlink(missing_ok=True)
        else:
            current = self.directory / "operator-signing.nk"
            write_private(previous, current.read_text())
            key = jwt.new_key(jwt.PREFIX_OPERATOR)
            write_private(current, jwt.seed_text(key) + "\n")
            self.keys["operator-signing"] = key
            self.publics["operator-signing"] = jwt.public(key)
            write_private(self.directory / _PUBLIC_KEYS, msgspec.json.encode(self.publics).decode() + "\n")
        return self.publics["operator-signing"]

    def _signing_keys(self) -> list[str]:
        """The operator signing keys the servers trust: the current one, and the previous one
        while a rotation is under way."""
        keys = [self.publics["operator-signing"]]
        previous = self.directory / _PREVIOUS_SIGNING
        if previous.exists():
            keys.append(jwt.public(nkeys.from_seed(bytearray(previous.read_text().strip().encode()))))
        return keys

    # --- keys and accounts ---------------------------------------------------------------------

    def account_key(self, account: str) -> str:
        """The public key of FLEET, OPS or SYS."""
        return self.publics[account.lower()]

    def _iat(self) -> int:
        self.state.last_iat = max(int(time.time()), self.state.last_iat)
        return self.state.last_iat

    def operator_jwt(self) -> str:
        """The operator JWT the server trusts."""
        op = self.keys["operator"]
        claims = jwt.Claims(sub=jwt.public(op), name="fleetplane",
                            nats=jwt.OperatorNats(system_account=self.account_key("sys"),
                                                  signing_keys=self._signing_keys()))
        return jwt.encode(claims, op, issued_at=self._iat())

    def account_jwt(self, account: str) -> str:
        """The current JWT of one account (FLEET carries the device scope and revocations), signed
        by the operator's signing key: the authority part re-signs FLEET's without the operator's
        own key."""
        op = self.keys["operator-signing"]
        fleet, ops = self.account_key(FLEET), self.account_key(OPS)
        if account == "SYS":
            nats = jwt.AccountNats(limits=jwt.AccountLimits(), exports=[
                jwt.Export(name="account-monitoring-services", subject="$SYS.REQ.ACCOUNT.*.*",
                           response_type="Stream"),
                jwt.Export(name="account-monitoring-streams", subject="$SYS.ACCOUNT.*.>", type="stream"),
            ])
        elif account == FLEET:
            scope = jwt.UserScope(key=self.publics["devices"], role="device",
                                  template=DEVICE_TEMPLATE, description="one identity per device")
            nats = jwt.AccountNats(
                limits=jwt.AccountLimits(mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1),
                exports=[jwt.Export(name="commands", subject=f"{COMMANDS_PREFIX}.>", response_type="Singleton"),
                         jwt.Export(name="services", subject="$SRV.>", response_type="Stream")],
                signing_keys=[scope],
                revocations=dict(self.state.revocations) or None,
            )
        elif account == OPS:
            nats = jwt.AccountNats(limits=jwt.AccountLimits(), imports=[
                jwt.Import(name="commands", subject=f"{COMMANDS_PREFIX}.>", account=fleet, share=True),
                jwt.Import(name="services", subject="$SRV.>", account=fleet, share=True),
            ])
        else:
            raise Invalid(f"unknown account {account!r}", field="account")
        key = {"SYS": "sys", FLEET: "fleet", OPS: "ops"}[account]
        claims = jwt.Claims(sub=self.publics[key], name=account, nats=nats)
        del ops
        return jwt.encode(claims, op, issued_at=self._iat())

    def server_config(self, resolver_dir: Path) -> str:
        """The part of nats-server.conf that turns on JWT mode for this authority: the operator,
        the system account, and a full resolver (accepts pushed account updates, keeps them on
        disk) preloaded with the current account JWTs."""
        preload = "\n".join(f"  {self.account_key(a)}: {self.account_jwt(a)}" for a in ("SYS", FLEET, OPS))
        return (
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.account_key('sys')}\n"
            f'resolver: {{\n  type: full\n  dir: "{resolver_dir}"\n  allow_delete: false\n'
            '  interval: "2m"\n  timeout: "2s"\n}\n'
            f"resolver_preload: {{\n{preload}\n}}\n"
        )

    # --- users ---------------------------------------------------------------------------------

    def issue(self, role_name: str, name: str, *, expires_in: float | None = None) -> str:
        """A credentials file (text) for a user of `role_name` called `name`."""
        if role_name == "device":
            return self.issue_device(name, expires_in=expires_in)
        if role_name == "service":  # `--role service --name registry` is `service:registry`
            role_name = f"service:{name}"
        if role_name == "sys":
            return self._user(jwt.new_key(jwt.PREFIX_USER), "push", "sys", jwt.UserNats(), expires_in)
        the_role = role(role_name)
        check_id(name, "name")
        perms = the_role.permissions
        sub = perms.sub
        prefix = inbox_prefix(the_role.name, name)
        if prefix is not None and sub is not None and sub.allow is not None:  # its own inbox only
            sub = jwt.Permission(allow=[f"{prefix}.>" if s == INBOX else s for s in sub.allow], deny=sub.deny)
        nats = jwt.UserNats(pub=perms.pub, sub=sub, resp=perms.resp, payload=perms.payload,
                            tags=[f"{ROLE_TAG}{the_role.name}"])
        return self._user(jwt.new_key(jwt.PREFIX_USER), name, the_role.account.lower(), nats, expires_in)

    def device_key(self, device_id: str, generation: int | None = None) -> nkeys.KeyPair:
        """The user nkey of one device, derived from its id and its key's generation (the
        current one unless given; generation 0 is the id alone, as before generations)."""
        if generation is None:
            self.refresh()
            generation = self.state.generations.get(device_id, 0)
        message = device_id if generation == 0 else f"{device_id}\x00{generation}"
        raw = hmac.new(self.device_secret, message.encode(), hashlib.sha256).digest()
        return jwt.key_from_raw(raw, jwt.PREFIX_USER)

    def device_revoked(self, device_id: str) -> bool:
        """Is the device's current key revoked (its credentials refused until re-enrolment)?"""
        return jwt.public(self.device_key(device_id)) in self.state.revocations

    def issue_device(self, device_id: str, *, expires_in: float | None = None) -> str:
        """A credentials file for one device, signed by FLEET's scoped device key: the server
        applies the device template whatever this JWT says. Enrolling a device whose key was
        revoked is rotation: it gets the key of the next generation, so its old seed, spliced
        with any JWT issued later, is refused."""
        check_id(device_id, "device_id")
        if self.device_revoked(device_id):
            with self._changing() as state:
                generation = state.generations.get(device_id, 0)
                while jwt.public(self.device_key(device_id, generation)) in state.revocations:
                    generation += 1
                state.generations[device_id] = generation
        # A scoped key's users must carry no permissions or limits at all (zero, not -1).
        nats = jwt.UserNats(issuer_account=self.account_key(FLEET), tags=[f"{ROLE_TAG}device"],
                            subs=0, data=0, payload=0)
        return self._user(self.device_key(device_id), device_id, "devices", nats, expires_in)

    def _user(self, user: nkeys.KeyPair, name: str, signer: str, nats: jwt.UserNats,
              expires_in: float | None) -> str:
        now = int(time.time())
        claims = jwt.Claims(sub=jwt.public(user), name=name, nats=nats,
                            exp=now + int(expires_in) if expires_in else None)
        return jwt.creds(jwt.encode(claims, self.keys[signer], issued_at=now), jwt.seed_text(user))

    # --- revoking ------------------------------------------------------------------------------

    def revoke_device(self, device_id: str, at: int | None = None, *, handled_seq: int | None = None) -> str:
        """Revoke every JWT of this device issued up to `at` (now); returns FLEET's new JWT,
        which must be pushed to the server (`push_account`)."""
        with self._changing() as state:
            if handled_seq is not None:
                state.handled_seq = max(state.handled_seq, handled_seq)
            key = jwt.public(self.device_key(device_id, state.generations.get(device_id, 0)))
            state.revocations[key] = int(time.time()) if at is None else at
        return self.account_jwt(FLEET)

    def handled(self, seq: int) -> None:
        """Remember that the device events up to `seq` have been seen."""
        with self._changing() as state:
            state.handled_seq = max(state.handled_seq, seq)

    def revoke_key(self, user_public_key: str, at: int | None = None) -> str:
        """Revoke every JWT of one user key issued up to `at` (now); returns FLEET's new JWT."""
        with self._changing() as state:
            state.revocations[user_public_key] = int(time.time()) if at is None else at
        return self.account_jwt(FLEET)

    def prune_revocations(self, max_user_lifetime: float) -> int:
        """Drop revocations older than the longest lifetime of a user JWT: every JWT they
        refused has expired by itself since. Returns how many were dropped."""
        cutoff = int(time.time() - max_user_lifetime)
        with self._changing() as state:
            old = [k for k, t in state.revocations.items() if t < cutoff]
            for key in old:
                del state.revocations[key]
            # so that a merge does not bring them back (never later than now: a later revocation stays)
            state.pruned_before = max(state.pruned_before, min(cutoff, int(time.time())))
        return len(old)

    def _save(self) -> None:
        path = write_private(self.directory / _STATE, msgspec.json.encode(self.state).decode())
        stat = path.stat()
        self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def write_creds(self, path: Path, text: str) -> Path:
        """Write a credentials file 0600."""
        return write_private(path, text)


def inbox_of_creds(path: str | Path) -> str | None:
    """The inbox prefix the identity in a credentials file must use (None: the default)."""
    view = _identity(jwt.jwt_of_creds(Path(path).read_text()))
    return inbox_prefix(*view) if view else None


def _identity(token: str) -> tuple[str, str] | None:
    import base64

    body = token.split(".")[1]
    claims = msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    tags = claims.get("nats", {}).get("tags") or []
    role_name = next((t[len(ROLE_TAG):] for t in tags if t.startswith(ROLE_TAG)), None)
    return (role_name, claims.get("name", "")) if role_name else None


def roles_known() -> list[str]:
    """Every role `fleet creds create` can issue."""
    return ["service", *sorted(r for r in ROLES if r != "device")]


async def push_account(sys_nc: NATS, account_jwt: str, timeout: float = 5.0) -> None:
    """Send an account JWT to the server's resolver (`$SYS.REQ.CLAIMS.UPDATE`, as the system
    account's user); the server applies it at once, cutting off revoked users."""
    reply = await sys_nc.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.encode(), timeout=timeout)
    answer = msgspec.json.decode(reply.data)
    if isinstance(answer, dict) and answer.get("error"):
        raise Invalid(f"the server refused the account update: {answer['error']}", field="account")
