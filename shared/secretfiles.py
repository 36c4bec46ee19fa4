"""`<data-dir>/secrets/`: where `fleet up` keeps what must stay secret (the admin API token, the
PostgreSQL roles' pgpass file). The directory is 0700 and every file in it 0600, written
atomically; nothing here is ever logged or put in `endpoints.json`, an environment or arguments."""

from __future__ import annotations

import os
from pathlib import Path


def secrets_dir(data_dir: Path) -> Path:
    """`<data-dir>/secrets`, created 0700."""
    path = data_dir / "secrets"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_secret(path: Path, text: str) -> None:
    """Write a secret file atomically, readable only by its owner."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
