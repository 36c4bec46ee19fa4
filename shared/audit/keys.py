"""The checkpoint signing key on disk: `<data-dir>/secrets/audit-signing.key` (the base64 ed25519
seed, file 0600 in a 0700 directory), created on first use. A rotated-out key is kept as
`audit-signing.<key id>.retired` so the writer can endorse its successor in the log."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nacl.signing import SigningKey

from shared.audit.chain import b64, key_id, unb64
from shared.errors import Invalid
from shared.secretfiles import secrets_dir

KEY_FILE = "audit-signing.key"


def public_key(key: SigningKey) -> bytes:
    """The raw 32-byte public key of a signing key."""
    return bytes(key.verify_key)


def load_or_create(data_dir: Path) -> SigningKey:
    """The signing key of this data dir; a new one is written (0600, never replaced) if none."""
    path = secrets_dir(data_dir) / KEY_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # created meanwhile by another process: use it
            _write_new(path, SigningKey.generate())
    return _read(path)


def retired_key(data_dir: Path, kid: str) -> SigningKey | None:
    """The rotated-out key with this id, if it is kept here."""
    path = secrets_dir(data_dir) / f"audit-signing.{kid}.retired"
    return _read(path) if path.exists() else None


def rotate(data_dir: Path) -> tuple[str, str]:
    """Retire the current key (kept for endorsing its successor) and create a new one; returns
    (old key id, new key id). The audit service announces the new key when it next starts."""
    directory = secrets_dir(data_dir)
    current = load_or_create(data_dir)
    old = key_id(public_key(current))
    (directory / KEY_FILE).replace(directory / f"audit-signing.{old}.retired")
    fresh = SigningKey.generate()
    _write_new(directory / KEY_FILE, fresh)
    return old, key_id(public_key(fresh))


def _write_new(path: Path, key: SigningKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(b64(bytes(key)) + "\n")


def _read(path: Path) -> SigningKey:
    try:
        seed = unb64(path.read_text().strip())
        return SigningKey(seed)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"{path} is not an audit signing key: {exc}", field="audit_key") from None
