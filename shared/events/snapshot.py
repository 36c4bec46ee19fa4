"""Events of the snapshot service (`fleet.evt.snapshot.<id>`). A snapshot is immutable: after it
is created only its standing changes (known-good for a target, retired)."""

from __future__ import annotations

from typing import Any

from shared.envelope import Event


class SnapshotEvent(Event, frozen=True, kw_only=True):
    """Base of snapshot events."""

    id_field = "snapshot_id"
    snapshot_id: str


class SnapshotCreated(SnapshotEvent, frozen=True, kw_only=True):
    """A new immutable snapshot: base config, artifact versions and per-site overrides.

    `snapshot_id` is derived from the content (see shared.configs.snapshot_id), `version` counts
    snapshots of the same `name` from 1."""

    aggregate = "snapshot"
    name: str
    version: int
    config: dict[str, Any]
    artifacts: dict[str, str] = {}
    overrides: dict[str, dict[str, Any]] = {}
    parent_id: str | None = None
    description: str = ""
    author: str = ""


class SnapshotMarkedKnownGood(SnapshotEvent, frozen=True, kw_only=True):
    """The snapshot is known to run well on `target` (a label selector; "" = everywhere)."""

    aggregate = "snapshot"
    target: str = ""
    rollout_id: str | None = None


class SnapshotRetired(SnapshotEvent, frozen=True, kw_only=True):
    """The snapshot may no longer be rolled out."""

    aggregate = "snapshot"
    reason: str = ""
