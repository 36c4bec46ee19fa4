"""The fleet read model as pure data: one row per device, site, snapshot and rollout, and the fold
that advances them by one event.

The same fold serves two stores: the projection runner loads the rows a batch touches from
PostgreSQL, folds the batch over them and writes back what changed; the point-in-time engine folds
the log over a whole `FleetState` in memory. So a historical answer and the live read model are
computed by one piece of code. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.envelope import Envelope, Event
from shared.events import desired, observed, registry, rollout, snapshot

HEALTHS = ("ok", "degraded", "failed", "unknown")


# Rows are untracked by the cycle collector (`gc=False`): they hold only strings, numbers and plain
# containers, never themselves, and a rebuild keeps a whole fleet of them in memory, which every
# full collection would otherwise walk.
class DeviceRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the fleet knows about one device."""

    device_id: str
    site_id: str = ""
    kind: str = "device"
    parent_id: str | None = None
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    registered: bool = False  # False while only observed/desired events have named it
    retired: bool = False
    desired_snapshot_id: str | None = None
    desired_config_hash: str | None = None
    desired_revision: int = 0
    rollout_id: str | None = None
    reported_snapshot_id: str | None = None
    reported_config_hash: str | None = None
    health: str = "unknown"
    online: bool = False
    last_seen: str | None = None
    agent_version: str = ""
    drifted_since: str | None = None
    stuck: bool = False
    acknowledged: bool = False  # an operator accepted the current drift (not reconciled)
    reconcile_attempts: int = 0
    added_at: str | None = None
    updated_at: str | None = None
    updated_seq: int = 0


class SiteRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One site of the registry."""

    site_id: str
    name: str = ""
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    retired: bool = False
    added_at: str | None = None
    updated_seq: int = 0


class SnapshotRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One immutable snapshot and its standing."""

    snapshot_id: str
    name: str = ""
    version: int = 0
    parent_id: str | None = None
    description: str = ""
    author: str = ""
    artifacts: dict[str, str] = {}
    known_good_targets: list[str] = []
    retired: bool = False
    created_at: str | None = None
    updated_seq: int = 0


class RolloutRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One rollout: status, current wave, device counts and the last gate result."""

    rollout_id: str
    snapshot_id: str = ""
    target: str = ""
    status: str = "pending"
    wave: int = 0
    counts: dict[str, int] = {}
    last_gate: dict[str, Any] | None = None
    started_at: str | None = None
    updated_at: str | None = None
    updated_seq: int = 0


class FleetState(msgspec.Struct, kw_only=True):
    """Rows by id, and the log sequence they reflect. The runner holds only a batch's rows."""

    seq: int = 0
    devices: dict[str, DeviceRow] = {}
    sites: dict[str, SiteRow] = {}
    snapshots: dict[str, SnapshotRow] = {}
    rollouts: dict[str, RolloutRow] = {}


# --- the fold ---------------------------------------------------------------------------------------

_replace = msgspec.structs.replace


def _device(state: FleetState, device_id: str, site_id: str = "") -> DeviceRow:
    row = state.devices.get(device_id)
    return row if row is not None else DeviceRow(device_id=device_id, site_id=site_id)


def _apply_device(state: FleetState, env: Envelope, seq: int, event: Event) -> None:
    stamp = {"updated_at": env.at, "updated_seq": seq}
    match event:
        case registry.DeviceAdded():
            row = _device(state, event.device_id)
            row = _replace(row, site_id=event.site_id, kind=event.kind, parent_id=event.parent_id,
                           labels=dict(event.labels), metadata=dict(event.metadata), registered=True,
                           retired=False, added_at=env.at, **stamp)
        case registry.DeviceUpdated():
            row = _replace(_device(state, event.device_id), kind=event.kind, parent_id=event.parent_id,
                           metadata=dict(event.metadata), **stamp)
        case registry.DeviceRelabeled():
            row = _replace(_device(state, event.device_id), labels=dict(event.labels), **stamp)
        case registry.DeviceMoved():
            row = _replace(_device(state, event.device_id), site_id=event.to_site_id, **stamp)
        case registry.DeviceRetired():
            row = _replace(_device(state, event.device_id), retired=True, **stamp)
        case desired.DesiredStateAssigned():
            row = _replace(_device(state, event.device_id, event.site_id),
                           desired_snapshot_id=event.snapshot_id, desired_config_hash=event.config_hash,
                           desired_revision=event.revision, rollout_id=event.rollout_id, **stamp)
        case observed.DeviceCameOnline():
            row = _device(state, event.device_id, event.site_id)
            row = _replace(row, site_id=row.site_id or event.site_id, online=True, last_seen=env.at,
                           reported_snapshot_id=event.snapshot_id,
                           reported_config_hash=event.config_hash, health=event.health,
                           agent_version=event.agent_version or row.agent_version, **stamp)
        case observed.DeviceWentOffline():
            row = _replace(_device(state, event.device_id), online=False, last_seen=event.last_seen,
                           **stamp)
        case observed.DeviceReportedState():
            row = _replace(_device(state, event.device_id), reported_snapshot_id=event.snapshot_id,
                           reported_config_hash=event.config_hash, **stamp)
        case observed.DeviceHealthChanged():
            row = _replace(_device(state, event.device_id), health=event.health, **stamp)
        case observed.DriftBegan():
            row = _replace(_device(state, event.device_id), drifted_since=event.since, acknowledged=False,
                           **stamp)
        case observed.DriftEnded():
            row = _replace(_device(state, event.device_id), drifted_since=None, stuck=False,
                           acknowledged=False, reconcile_attempts=0, **stamp)
        case observed.ReconcileForced():
            row = _replace(_device(state, event.device_id), stuck=False, acknowledged=False,
                           reconcile_attempts=0, **stamp)
        case observed.DriftAcknowledged():
            row = _replace(_device(state, event.device_id), acknowledged=True, **stamp)
        case observed.ReconcileAttempted():
            row = _replace(_device(state, event.device_id), reconcile_attempts=event.attempt, **stamp)
        case observed.DeviceStuck():
            row = _replace(_device(state, event.device_id), stuck=True,
                           reconcile_attempts=event.attempts, **stamp)
        case _:
            return
    state.devices[row.device_id] = row


def _apply_site(state: FleetState, env: Envelope, seq: int, event: Event) -> None:
    match event:
        case registry.SiteAdded():
            row = SiteRow(site_id=event.site_id, name=event.name, labels=dict(event.labels),
                          metadata=dict(event.metadata), added_at=env.at, updated_seq=seq)
        case registry.SiteUpdated():
            old = state.sites.get(event.site_id) or SiteRow(site_id=event.site_id)
            row = _replace(old, name=event.name, labels=dict(event.labels),
                           metadata=dict(event.metadata), updated_seq=seq)
        case registry.SiteRetired():
            old = state.sites.get(event.site_id) or SiteRow(site_id=event.site_id)
            row = _replace(old, retired=True, updated_seq=seq)
        case _:
            return
    state.sites[row.site_id] = row


def _apply_snapshot(state: FleetState, env: Envelope, seq: int, event: Event) -> None:
    match event:
        case snapshot.SnapshotCreated():
            row = SnapshotRow(snapshot_id=event.snapshot_id, name=event.name, version=event.version,
                              parent_id=event.parent_id, description=event.description,
                              author=event.author, artifacts=dict(event.artifacts),
                              created_at=env.at, updated_seq=seq)
        case snapshot.SnapshotMarkedKnownGood():
            old = state.snapshots.get(event.snapshot_id) or SnapshotRow(snapshot_id=event.snapshot_id)
            targets = old.known_good_targets if event.target in old.known_good_targets else [
                *old.known_good_targets, event.target]
            row = _replace(old, known_good_targets=targets, updated_seq=seq)
        case snapshot.SnapshotRetired():
            old = state.snapshots.get(event.snapshot_id) or SnapshotRow(snapshot_id=event.snapshot_id)
            row = _replace(old, retired=True, updated_seq=seq)
        case _:
            return
    state.snapshots[row.snapshot_id] = row


def _count(row: RolloutRow, **more: int) -> dict[str, int]:
    counts = dict(row.counts)
    for key, value in more.items():
        counts[key] = counts.get(key, 0) + value
    return counts


def _rollout_row(row: RolloutRow | None, env: Envelope, seq: int, event: Event) -> RolloutRow | None:
    """The rollout row after one rollout event (None: the event does not change the row)."""
    if isinstance(event, rollout.RolloutStarted):
        sizes = event.wave_sizes
        return RolloutRow(rollout_id=event.rollout_id, snapshot_id=event.snapshot_id, target=event.target,
                          status="running", wave=0,
                          counts={"devices": sum(sizes), "waves": len(sizes or event.wave_percents),
                                  "assigned": 0, "restored": 0},
                          started_at=env.at, updated_at=env.at, updated_seq=seq)
    old = row or RolloutRow(rollout_id=env.aggregate_id)
    stamp = {"updated_at": env.at, "updated_seq": seq}
    match event:
        case rollout.RolloutWaveStarted():
            return _replace(old, wave=event.wave, status="running", **stamp)
        case rollout.RolloutDevicesAssigned():
            return _replace(old, counts=_count(old, assigned=len(event.devices)), **stamp)
        case rollout.RolloutDevicesRestored():
            return _replace(old, counts=_count(old, restored=len(event.devices)), **stamp)
        case rollout.RolloutWaveBaking():
            return _replace(old, status="baking", **stamp)
        case rollout.RolloutWaveWaiting():  # for maintenance windows, or no longer
            if old.status not in ("running", "waiting", "rolling_back"):
                return None
            status = old.status if old.status == "rolling_back" else "waiting" if event.opens else "running"
            return _replace(old, status=status, **stamp)
        case rollout.RolloutWindowsIgnored():  # nothing waits for a window any more
            return _replace(old, status="running", **stamp) if old.status == "waiting" else None
        case rollout.RolloutGateEvaluated():
            inputs = msgspec.to_builtins(event.inputs)
            inputs.pop("distributions", None)  # what-if reads them from the log; rows stay small
            gate = {"wave": event.wave, "passed": event.passed, "inputs": inputs, "reasons": list(event.reasons)}
            return _replace(old, last_gate=gate, **stamp)
        case rollout.RolloutWaveHeld():
            return _replace(old, status="held", **stamp)
        case rollout.RolloutPromoted() | rollout.RolloutResumed():
            return _replace(old, status="running", **stamp)
        case rollout.RolloutPaused():
            return _replace(old, status="paused", **stamp)
        case rollout.RolloutAborted():
            return _replace(old, status="aborted", **stamp)
        case rollout.RolloutRollbackStarted():
            return _replace(old, status="rolling_back", **stamp)
        case rollout.RolloutRolledBack():
            return _replace(old, status="rolled_back", **stamp)
        case rollout.RolloutCompleted():
            return _replace(old, status="completed", **stamp)
    return None


def _apply_rollout(state: FleetState, env: Envelope, seq: int, event: Event) -> None:
    row = _rollout_row(state.rollouts.get(env.aggregate_id), env, seq, event)
    if row is not None:
        state.rollouts[row.rollout_id] = row


_BY_AGGREGATE = {
    "device": _apply_device,
    "desired": _apply_device,
    "observed": _apply_device,
    "site": _apply_site,
    "snapshot": _apply_snapshot,
    "rollout": _apply_rollout,
}


def apply(state: FleetState, seq: int, env: Envelope, event: Event) -> None:
    """Advance `state` by one known event (in place: the rows themselves are immutable)."""
    fold = _BY_AGGREGATE.get(env.aggregate)
    if fold is not None:
        fold(state, env, seq, event)
    state.seq = seq


def touches(env: Envelope) -> tuple[str, str] | None:
    """(table, key) of the row an event changes, so a batch can load just those rows."""
    table = {"device": "devices", "desired": "devices", "observed": "devices", "site": "sites",
             "snapshot": "snapshots", "rollout": "rollouts"}.get(env.aggregate)
    return (table, env.aggregate_id) if table else None


# --- counters: what one device contributes to the summary -----------------------------------------

COUNTER_FIELDS = ("total", "online", "offline", "ok", "degraded", "failed", "unknown", "drifted", "stuck")
CounterKey = tuple[str, str]  # (site_id, reported snapshot_id or "")


def contribution(row: DeviceRow | None) -> tuple[CounterKey, tuple[int, ...]] | None:
    """The counter cell a device falls in and what it adds there (None: counts nowhere)."""
    if row is None or row.retired or not row.registered:
        return None
    health = row.health if row.health in HEALTHS else "unknown"
    return (row.site_id, row.reported_snapshot_id or ""), (
        1,
        int(row.online),
        int(not row.online),
        int(health == "ok"),
        int(health == "degraded"),
        int(health == "failed"),
        int(health == "unknown"),
        int(row.drifted_since is not None),
        int(row.stuck),
    )


def add_counts(cells: dict[CounterKey, list[int]], row: DeviceRow | None, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) a device's contribution to `cells`."""
    part = contribution(row)
    if part is None:
        return
    key, values = part
    cell = cells.setdefault(key, [0] * len(COUNTER_FIELDS))
    for i, value in enumerate(values):
        cell[i] += sign * value


def count_all(state: FleetState) -> dict[CounterKey, list[int]]:
    """The counters of a whole in-memory state (point in time)."""
    cells: dict[CounterKey, list[int]] = {}
    for row in state.devices.values():
        add_counts(cells, row, 1)
    return cells


def problem_rank(row: DeviceRow) -> int:
    """How bad a device looks, worst first: 0 offline, 1 failed, 2 stuck, 3 degraded, 4 drifted,
    5 drifted with the drift acknowledged by an operator."""
    if not row.online:
        return 0
    if row.health == "failed":
        return 1
    if row.stuck and not row.acknowledged:
        return 2
    if row.health == "degraded":
        return 3
    if row.drifted_since is not None:
        return 5 if row.acknowledged else 4
    return 9
