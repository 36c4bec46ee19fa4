"""The device's credentials file and its renewal, the client side (DESIGN §11).

A device enrolled with a lifetime asks for a fresh JWT on `fleet.renew.<its id>` once two thirds
of its JWT's life have passed; the answer (`Renewed`) is a new JWT for the same key. The agent
writes it into its credentials file, keeping the seed (atomically, mode 0600), and opens a new
connection under it: nats-py would close, not reconnect, a connection whose JWT expires.

Under systemd the credentials arrive read-only (`LoadCredential=`); `adopt` copies them once into
the agent's state directory, where renewals can be written and survive a restart."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS

from fleet_agent.contract import RENEWED_DECODER, renew_subject
from fleet_agent.files import write_atomically

log = logging.getLogger(__name__)
JWT_BEGIN = "-----BEGIN NATS USER JWT-----"


class Lifetime(msgspec.Struct):
    """The claims of a user JWT that say when it was issued and when it expires (None: never)."""

    iat: int = 0
    exp: int | None = None


def jwt_of_creds(text: str) -> str:
    """The user JWT inside a credentials file."""
    lines = [line.strip() for line in text.splitlines()]
    return lines[lines.index(JWT_BEGIN) + 1]


def lifetime_of(token: str) -> Lifetime:
    """When a JWT was issued and expires, read without verifying (the server verifies)."""
    body = token.split(".")[1]
    return msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), type=Lifetime)


def lifetime_of_creds(creds_path: Path) -> Lifetime:
    """The lifetime of the JWT in a credentials file."""
    return lifetime_of(jwt_of_creds(creds_path.read_text()))


def renew_at(lifetime: Lifetime) -> float | None:
    """When to renew: once two thirds of the JWT's life have passed (None: never expires)."""
    if lifetime.exp is None:
        return None
    return lifetime.exp - (lifetime.exp - lifetime.iat) / 3


def replace_jwt(creds_path: Path, new_jwt: str) -> None:
    """Put a renewed JWT into a credentials file, keeping its seed; atomic, 0600."""
    text = creds_path.read_text()
    write_atomically(creds_path, text.replace(jwt_of_creds(text), new_jwt), 0o600)


def adopt(given: Path, state_dir: Path, name: str = "device.creds") -> Path:
    """The credentials file the agent uses: `<state_dir>/<name>`, copied from `given` (say
    `$CREDENTIALS_DIRECTORY/device.creds`) the first time, or when `given` holds another key
    (a re-enrolment); renewed JWTs are then written to the copy and outlive a restart."""
    mine = state_dir / name
    try:
        current = mine.read_text()
    except FileNotFoundError:
        current = None
    offered = given.read_text()
    if current is None or _seed(current) != _seed(offered):
        write_atomically(mine, offered, 0o600)
        log.info("credentials taken from %s into %s", given, mine)
    elif given.resolve() != mine.resolve():
        os.chmod(mine, 0o600)
    return mine


def _seed(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in lines if line.startswith("SU")), "")


async def renew(nc: NATS, device_id: str, creds_path: Path, timeout: float = 10.0) -> Lifetime | None:
    """Ask for a fresh JWT and write it into `creds_path`; returns its lifetime (None: refused)."""
    reply = await nc.request(renew_subject(device_id), b"", timeout=timeout)
    answer = RENEWED_DECODER.decode(reply.data)
    if answer.jwt is None:
        log.warning("renewal of %s refused: %s", device_id, answer.error)
        return None
    replace_jwt(creds_path, answer.jwt)
    return lifetime_of(answer.jwt)
