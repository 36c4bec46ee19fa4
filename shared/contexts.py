"""Named endpoints for the CLI, like `nats context` and kubectl contexts: where a deployment's NATS
and API are, which credentials and CA to use. Kept under `$FLEET_CONFIG_DIR` (default
`$XDG_CONFIG_HOME/fleet`, else `~/.config/fleet`): one JSON file per context in `contexts/`, the
selected one's name in `current`. The folder is 0700 and every file 0600 (a context may hold an
API token).

A selected context fills in settings that neither a flag nor a `FLEET_*` variable gives; it wins
over a local `fleet up`'s endpoints.json (shared.config.load_settings).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from shared.errors import Invalid, NotFound
from shared.secretfiles import write_private

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Context(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One named deployment. Every field is a setting of the same name (shared.config.Settings)."""

    description: str = ""
    nats_url: str | None = None
    nats_creds: str | None = None  # path of a credentials file (never its content)
    command_creds: str | None = None
    nats_tls_ca: str | None = None
    api_url: str | None = None
    api_token: str | None = None
    data_dir: str | None = None


def config_dir(env: dict[str, str] | None = None) -> Path:
    """Where contexts are kept."""
    env = dict(os.environ) if env is None else env
    if env.get("FLEET_CONFIG_DIR"):
        return Path(env["FLEET_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fleet"


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise Invalid(f"{name!r} is not a context name (letters, digits, '.', '_', '-')", field="name")
    return name


def _path(directory: Path, name: str) -> Path:
    return directory / "contexts" / f"{_check_name(name)}.json"


def _private_dir(directory: Path) -> Path:
    contexts = directory / "contexts"
    contexts.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (directory, contexts):
        path.chmod(0o700)
    return contexts


def save(directory: Path, name: str, context: Context) -> Path:
    """Write (or replace) a context, 0600."""
    path = _path(directory, name)
    _private_dir(directory)
    write_private(path, msgspec.json.encode(context).decode() + "\n")
    return path


def load(directory: Path, name: str) -> Context:
    """A context by name."""
    path = _path(directory, name)
    if not path.exists():
        raise NotFound(f"no context {name!r} (fleet context list)", field="name")
    try:
        return msgspec.json.decode(path.read_bytes(), type=Context)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Invalid(f"{path} is not a valid context: {exc}", field="name") from None


def names(directory: Path) -> list[str]:
    """Every context's name, sorted."""
    return sorted(p.stem for p in (directory / "contexts").glob("*.json"))


def remove(directory: Path, name: str) -> None:
    """Delete a context (and unselect it)."""
    path = _path(directory, name)
    if not path.exists():
        raise NotFound(f"no context {name!r}", field="name")
    path.unlink()
    if current(directory) == name:
        (directory / "current").unlink()


def use(directory: Path, name: str) -> None:
    """Select a context for later commands."""
    load(directory, name)
    _private_dir(directory)
    write_private(directory / "current", name + "\n")


def current(directory: Path) -> str | None:
    """The selected context's name, if any."""
    path = directory / "current"
    return path.read_text().strip() or None if path.exists() else None


def selected_settings(name: str | None, env: dict[str, str] | None = None) -> dict[str, object]:
    """The settings a context gives: the one named, else the selected one, else none."""
    directory = config_dir(env)
    chosen = name or current(directory)
    if chosen is None:
        return {}
    return msgspec.structs.asdict(load(directory, chosen)) | {"description": None}
