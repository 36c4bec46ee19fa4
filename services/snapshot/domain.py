"""The snapshot service's pure core: immutable, content-addressed snapshots.

A snapshot is created once (its id derives from its content, so the same content again is a
no-op), then only its standing changes: marked known-good for a target, or retired. Facts the
decisions need from outside the aggregate (is this site known? what version comes next for this
name? does the parent exist?) come in through a `View`. `diff` compares two snapshots for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

import msgspec

from shared.bounds import check_depth
from shared.configs import NotCanonicalizable, canonical_bytes, snapshot_id
from shared.contract.snapshot import Change, CreateSnapshot, KnownGood, MarkGood, RetireSnapshot, Snapshot
from shared.envelope import Event
from shared.errors import Conflict, Invalid, NotFound
from shared.events.snapshot import SnapshotCreated, SnapshotMarkedKnownGood, SnapshotRetired
from shared.ids import check_id
from shared.selectors import parse

SiteStatus = Literal["absent", "active", "retired"]
CONFIG_MAX_BYTES = 256 * 1024
ARTIFACT_VERSION_MAX = 128
DESCRIPTION_MAX = 2000
REASON_MAX = 1000

_SIZE = msgspec.json.Encoder()


def initial_snapshot(snapshot_id: str) -> Snapshot:
    """The state of a snapshot before its first event."""
    return Snapshot(snapshot_id=snapshot_id)


class View(Protocol):
    """What a decision may know beyond the snapshot itself."""

    def site_status(self, site_id: str) -> SiteStatus:
        """Whether the registry has the site (from its events)."""
        ...

    def snapshot(self, snapshot_id: str) -> Snapshot:
        """Another snapshot's state (absent when unknown)."""
        ...

    def next_version(self, name: str) -> int:
        """The version the next new snapshot of `name` gets."""
        ...


# --- commands ------------------------------------------------------------------------------------


# --- decisions -----------------------------------------------------------------------------------


def _check_size(value: Mapping[str, Any], field: str) -> None:
    check_depth(value, field)
    try:  # every config must have a config hash (DESIGN §5): JCS writes no integer beyond ±2**53
        canonical_bytes(value)
    except NotCanonicalizable as exc:
        raise Invalid(f"cannot be written as RFC 8785 canonical JSON, the config hash's form ({exc}); "
                      "write such a number as a string", field=field) from None
    size = len(_SIZE.encode(value))
    if size > CONFIG_MAX_BYTES:
        raise Invalid(f"{size} bytes encoded; the limit is {CONFIG_MAX_BYTES} (256 KiB)", field=field)


def check_create(command: CreateSnapshot) -> str:
    """Validate the shape of a create command; return the snapshot id its content gets."""
    check_id(command.name, "name")
    _check_size(command.config, "config")
    for artifact, version in command.artifacts.items():
        check_id(artifact, f"artifacts.{artifact}" if artifact else "artifacts")
        if not isinstance(version, str):
            raise Invalid(f"artifact version must be a string, not {type(version).__name__}",
                          field=f"artifacts.{artifact}")
        if not version or len(version) > ARTIFACT_VERSION_MAX or not version.isprintable() or " " in version:
            raise Invalid(f"artifact version {version!r} must be 1-{ARTIFACT_VERSION_MAX} printable "
                          "characters without spaces", field=f"artifacts.{artifact}")
    for site_id, override in command.overrides.items():
        check_id(site_id, f"overrides.{site_id}" if site_id else "overrides")
        if not isinstance(override, dict):
            raise Invalid(f"an override must be a JSON object, not {type(override).__name__}",
                          field=f"overrides.{site_id}")
        _check_size(override, f"overrides.{site_id}")
    if command.parent_id is not None:
        check_id(command.parent_id, "parent_id")
    if len(command.description) > DESCRIPTION_MAX:
        raise Invalid(f"longer than {DESCRIPTION_MAX} characters", field="description")
    return snapshot_id(command.name, command.config, command.artifacts, command.overrides,
                       command.parent_id)


def decide_create(state: Snapshot, command: CreateSnapshot, view: View, author: str) -> list[Event]:
    """A new snapshot, or nothing when one with the same content exists."""
    sid = check_create(command)
    if state.snapshot_id != sid:
        raise Invalid(f"snapshot id {state.snapshot_id} does not match the content ({sid})",
                      field="snapshot_id")
    if state.status != "absent":
        return []
    for site_id in command.overrides:
        status = view.site_status(site_id)
        if status == "absent":
            raise Invalid(f"override for unknown site {site_id!r}", field=f"overrides.{site_id}")
        if status == "retired":
            raise Invalid(f"override for retired site {site_id!r}", field=f"overrides.{site_id}")
    if command.parent_id is not None and view.snapshot(command.parent_id).status == "absent":
        raise NotFound(f"parent snapshot {command.parent_id} does not exist", field="parent_id")
    return [SnapshotCreated(snapshot_id=sid, name=command.name, version=view.next_version(command.name),
                            config=command.config, artifacts=command.artifacts,
                            overrides=command.overrides, parent_id=command.parent_id,
                            description=command.description, author=author)]


def _require_exists(state: Snapshot) -> None:
    if state.status == "absent":
        raise NotFound(f"snapshot {state.snapshot_id} does not exist", field="snapshot_id")


def decide_retire(state: Snapshot, command: RetireSnapshot) -> list[Event]:
    """Retire a snapshot (retiring it again is a no-op)."""
    if len(command.reason) > REASON_MAX:
        raise Invalid(f"longer than {REASON_MAX} characters", field="reason")
    _require_exists(state)
    if state.status == "retired":
        return []
    return [SnapshotRetired(snapshot_id=state.snapshot_id, reason=command.reason)]


def decide_mark_good(state: Snapshot, command: MarkGood) -> list[Event]:
    """Mark a snapshot known-good for a target; the same target and rollout again is a no-op."""
    target = str(parse(command.target, "target"))  # canonical form, so equal selectors compare equal
    if command.rollout_id is not None:
        check_id(command.rollout_id, "rollout_id")
    _require_exists(state)
    if state.status == "retired":
        raise Conflict(f"snapshot {state.snapshot_id} is retired", field="snapshot_id")
    if KnownGood(target, command.rollout_id) in state.known_good:
        return []
    return [SnapshotMarkedKnownGood(snapshot_id=state.snapshot_id, target=target,
                                    rollout_id=command.rollout_id)]


# --- evolution -----------------------------------------------------------------------------------


def evolve(state: Snapshot, event: Event) -> Snapshot:
    """The snapshot after one of its events."""
    match event:
        case SnapshotCreated():
            return Snapshot(snapshot_id=event.snapshot_id, status="active", name=event.name,
                            version=event.version, config=event.config, artifacts=event.artifacts,
                            overrides=event.overrides, parent_id=event.parent_id,
                            description=event.description, author=event.author)
        case SnapshotMarkedKnownGood():
            good = KnownGood(event.target, event.rollout_id)
            return msgspec.structs.replace(state, known_good=(*state.known_good, good))
        case SnapshotRetired():
            return msgspec.structs.replace(state, status="retired", retired_reason=event.reason)
    return state


# --- diff ----------------------------------------------------------------------------------------


def diff(a: Snapshot, b: Snapshot) -> list[Change]:
    """What changes from `a` to `b` in base config, artifacts and overrides, path by path."""
    changes: list[Change] = []
    _diff_values("config", a.config, b.config, changes)
    _diff_values("artifacts", a.artifacts, b.artifacts, changes)
    _diff_values("overrides", a.overrides, b.overrides, changes)
    return changes


def _diff_values(path: str, old: Any, new: Any, out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            child = f"{path}.{key}"
            if key not in new:
                out.append(Change(child, "removed", old=old[key]))
            elif key not in old:
                out.append(Change(child, "added", new=new[key]))
            else:
                _diff_values(child, old[key], new[key], out)
    elif old != new or type(old) is not type(new):
        out.append(Change(path, "changed", old=old, new=new))
