"""The snapshot service's commands (`fleet.cmd.snapshot.<command>`) and the snapshot values its
replies carry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared.ids import Id
from shared.wire import Command, Expression, Reason

Status = Literal["absent", "active", "retired"]


# --- values --------------------------------------------------------------------------------------


class KnownGood(msgspec.Struct, frozen=True):
    """Where a snapshot is known to run well: a selector ("" = everywhere) and the rollout."""

    target: str
    rollout_id: str | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot as the service knows it (`status` "absent" until created)."""

    snapshot_id: str
    status: Status = "absent"
    name: str = ""
    version: int = 0
    config: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    overrides: dict[str, dict[str, Any]] = {}
    parent_id: str | None = None
    description: str = ""
    author: str = ""
    known_good: tuple[KnownGood, ...] = ()
    retired_reason: str = ""


class Change(msgspec.Struct, frozen=True, omit_defaults=True):
    """One difference between two snapshots at a dotted path (e.g. `config.db.pool`)."""

    path: str
    op: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None



# --- commands ------------------------------------------------------------------------------------


class CreateSnapshot(Command, frozen=True, kw_only=True):
    """Create a snapshot; the same content again returns the existing one."""

    name: Annotated[Id, msgspec.Meta(description="the snapshot's name; each new content gets the next version of it")]
    config: Annotated[dict[str, Any], msgspec.Meta(description=(
        "the base configuration (a JSON object, at most 256 KiB encoded)"
    ))]
    # Values are checked by `check_create` (not by the decoder) so errors name the exact key.
    artifacts: Annotated[dict[str, Any], msgspec.Meta(description=(
        "artifact name -> version string (1-128 printable characters)"
    ))] = {}
    overrides: Annotated[dict[str, Any], msgspec.Meta(description=(
        "site id -> object deep-merged over `config` for that site's devices"
    ))] = {}
    parent_id: Annotated[str | None, msgspec.Meta(description="the snapshot this one derives from")] = None
    description: Annotated[Annotated[str, msgspec.Meta(max_length=2000)], msgspec.Meta(description="free text")] = ""


class RetireSnapshot(Command, frozen=True, kw_only=True):
    """The snapshot may no longer be rolled out."""

    snapshot_id: Annotated[str, msgspec.Meta(description="an id, `name@version` or `name`")]
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class MarkGood(Command, frozen=True, kw_only=True):
    """The snapshot is known to run well on `target` (a label selector; "" = everywhere)."""

    snapshot_id: Annotated[str, msgspec.Meta(description="an id, `name@version` or `name`")]
    target: Annotated[Expression, msgspec.Meta(description=(
        "a label selector where it is known-good (\"\" = everywhere)"
    ))] = ""
    rollout_id: Annotated[str | None, msgspec.Meta(description="the rollout that proved it")] = None


class GetSnapshot(Command, frozen=True, kw_only=True):
    """One snapshot by id, `name@version`, or `name` (its newest version)."""

    snapshot_id: Annotated[str, msgspec.Meta(description="an id, `name@version` or `name` (its newest version)")]


class ListSnapshots(Command, frozen=True, kw_only=True):
    """Snapshots (newest version first per name), optionally of one name."""

    name: Annotated[str | None, msgspec.Meta(description="only snapshots of this name")] = None
    include_retired: Annotated[bool, msgspec.Meta(description="list retired snapshots too")] = True


class DiffSnapshots(Command, frozen=True, kw_only=True):
    """What changes from snapshot `a` to snapshot `b` (ids or `name@version`)."""

    a: Annotated[str, msgspec.Meta(description="from: an id or `name@version`")]
    b: Annotated[str, msgspec.Meta(description="to: an id or `name@version`")]


class SnapshotSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot without its config, for listings."""

    snapshot_id: str
    name: str
    version: int
    status: Status
    artifacts: dict[str, str]
    override_sites: list[str]
    parent_id: str | None
    description: str
    author: str
    known_good: tuple[KnownGood, ...]


class CreateResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `create`."""

    snapshot_id: str
    name: str
    version: int
    created: bool


class DiffResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `diff`."""

    a: str
    b: str
    changes: list[Change]




class SnapshotList(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `list`."""

    snapshots: list[SnapshotSummary]
