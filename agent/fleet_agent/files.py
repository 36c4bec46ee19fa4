"""The one way Fleetplane replaces a file on disk, device and server alike: atomically and durably,
with the mode it asks for (shared.secretfiles writes private files through it)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash at any moment leaves the old or the new file;
    the file has `mode` from its first byte (a private one is never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # also when a stale temporary file existed with another mode
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
