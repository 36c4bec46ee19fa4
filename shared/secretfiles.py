"""`<data-dir>/secrets/`: where `fleet up` keeps what must stay secret (the admin API token, the
PostgreSQL roles' pgpass file). The directory is 0700 and every file in it 0600, written
atomically; nothing here is ever logged or put in `endpoints.json`, an environment or arguments.

The other files of a data dir are private too, if not secret: logs (identities, key fingerprints,
refused subjects) and `status.json` are 0600 in 0700 folders (`private_dir`, `open_log`,
`write_private`), so another local user reads none of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from fleet_agent.files import write_atomically


def private_dir(path: Path) -> Path:
    """A folder only its owner may enter (0700, also when it existed)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def open_log(path: Path) -> BinaryIO:
    """A log file opened for appending, 0600 (also when it existed, as older versions made it 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def write_private(path: Path, data: bytes | str) -> Path:
    """Replace a file atomically with `data`, 0600: the one private-file writer. A missing folder
    is made 0700; an existing one keeps its mode (a data dir is entered by PostgreSQL's own user
    when `fleet up` runs as root: its private parts are `private_dir`s of their own)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, data, 0o600)
    return path


def secrets_dir(data_dir: Path) -> Path:
    """`<data-dir>/secrets`, created 0700."""
    return private_dir(data_dir / "secrets")
