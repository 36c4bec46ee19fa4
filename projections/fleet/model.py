"""The fleet read model as pure data: one row per device, site, snapshot and rollout, and the fold
that advances them by one event.

The same fold serves two stores: the projection runner loads the rows a batch touches from
PostgreSQL, folds the batch over them and writes back what changed; the point-in-time engine folds
the log over a whole `FleetState` in memory. So a historical answer and the live read model are
computed by one piece of code. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import msgspec

from shared.envelope import Envelope, Event
from shared.events import desired, observed, registry, rollout, snapshot
from shared.times import format_time, parse_time

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
    # The device in its latest rollout (`rollout_id`): the wave that assigned it (-1: not yet),
    # when it must have applied, the config hash that rollout gave it, and where it stands
    # (`rollout_status`): "" | in_flight | converged | failed | restored.
    rollout_wave: int = -1
    rollout_deadline: str | None = None
    rollout_hash: str | None = None
    rollout_status: str = ""


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
    wave_sizes: list[int] = []
    apply_timeout_seconds: float = 300.0


# Per rollout and wave: how many devices were assigned, and where they stand. `timed_out` here
# holds only devices that left the rollout (a later rollout took them) while still in flight; a
# device in flight past its deadline is told apart when the question is asked (it depends on when).
PROGRESS_FIELDS = ("assigned", "in_flight", "converged", "failed", "timed_out", "restored")
Progress = dict[str, dict[int, list[int]]]  # rollout id -> wave -> counters (PROGRESS_FIELDS)


class ProgressCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Devices of a rollout (or one wave) by where they stand, as `fleet rollout status` counts
    them: pending (not assigned yet), in flight, converged, failed, timed out, restored."""

    size: int = 0
    assigned: int = 0
    pending: int = 0
    in_flight: int = 0
    converged: int = 0
    failed: int = 0
    timed_out: int = 0
    restored: int = 0


class WaveProgress(ProgressCounts, frozen=True, kw_only=True):
    """One wave's progress (wave 0 is the canary when there is one)."""

    wave: int


def wave_progress(row: RolloutRow, counters: dict[int, list[int]], overdue: dict[int, int]) -> list[WaveProgress]:
    """Each wave's progress from its counters and how many of its in-flight devices are past their
    deadline at the moment asked about (`overdue`)."""
    out = []
    for wave, size in enumerate(row.wave_sizes):
        c = dict(zip(PROGRESS_FIELDS, counters.get(wave, [0] * len(PROGRESS_FIELDS)), strict=True))
        late = overdue.get(wave, 0)
        out.append(WaveProgress(wave=wave, size=size, assigned=c["assigned"], pending=size - c["assigned"],
                                in_flight=c["in_flight"] - late, converged=c["converged"], failed=c["failed"],
                                timed_out=c["timed_out"] + late, restored=c["restored"]))
    return out


def progress_totals(waves: list[WaveProgress]) -> ProgressCounts:
    """The waves added up."""
    fields = list(ProgressCounts.__struct_fields__)
    return ProgressCounts(**{f: sum(getattr(w, f) for w in waves) for f in fields})


def overdue_in(state: FleetState, rollout_ids: Iterable[str], now: str) -> dict[str, dict[int, int]]:
    """Per rollout and wave, the devices in flight past their deadline at `now` (an in-memory
    state; one pass over the devices for all the rollouts asked about)."""
    wanted = set(rollout_ids)
    out: dict[str, dict[int, int]] = {}
    for row in state.devices.values():
        if (row.rollout_status == "in_flight" and row.rollout_id in wanted
                and row.rollout_deadline is not None and row.rollout_deadline <= now):
            waves = out.setdefault(row.rollout_id, {})
            waves[row.rollout_wave] = waves.get(row.rollout_wave, 0) + 1
    return out


class FleetState(msgspec.Struct, kw_only=True):
    """Rows by id, and the log sequence they reflect. The runner holds only a batch's rows (and
    `progress` as deltas to add to the stored counters); a rebuild or a point-in-time state holds
    everything (and `progress` whole)."""

    seq: int = 0
    devices: dict[str, DeviceRow] = {}
    sites: dict[str, SiteRow] = {}
    snapshots: dict[str, SnapshotRow] = {}
    rollouts: dict[str, RolloutRow] = {}
    progress: Progress = {}


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
            row = _device(state, event.device_id, event.site_id)
            if event.rollout_id != row.rollout_id or event.reason != "rollback":
                # a new rollout (or none): it places the device in a wave when it assigns it
                row = _replace(row, rollout_wave=-1, rollout_deadline=None, rollout_hash=event.config_hash)
            row = _replace(row, desired_snapshot_id=event.snapshot_id, desired_config_hash=event.config_hash,
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
    put_device(state, row)


def rollout_status(row: DeviceRow) -> str:
    """Where a device stands in its latest rollout, as the rollout service judges it
    (`services.rollout.domain.device_status`, less the deadline, which depends on when one asks)."""
    if row.rollout_id is None or row.rollout_wave < 0:
        return ""
    if row.rollout_status == "restored":
        return "restored"
    if row.reported_config_hash is not None and row.reported_config_hash == row.rollout_hash:
        return "failed" if row.health == "failed" else "converged"
    return "failed" if row.health == "failed" else "in_flight"


def _bump(state: FleetState, rollout_id: str, wave: int, field: str, by: int) -> None:
    waves = state.progress.setdefault(rollout_id, {})
    cell = waves.setdefault(wave, [0] * len(PROGRESS_FIELDS))
    cell[PROGRESS_FIELDS.index(field)] += by


def put_device(state: FleetState, row: DeviceRow) -> None:
    """Store a device row, with its rollout standing brought up to date and the rollout's
    progress counters moved by the difference. A device that leaves a rollout (a later one assigns
    it) keeps counting where it stood then in the earlier one; still in flight, it timed out."""
    old = state.devices.get(row.device_id)
    status = rollout_status(row)
    if status != row.rollout_status:
        row = _replace(row, rollout_status=status)
    state.devices[row.device_id] = row
    left = old is not None and old.rollout_status and old.rollout_id is not None and (
        old.rollout_id != row.rollout_id or row.rollout_wave < 0)
    if left and old is not None and old.rollout_id is not None:
        if old.rollout_status == "in_flight":
            _bump(state, old.rollout_id, old.rollout_wave, "in_flight", -1)
            _bump(state, old.rollout_id, old.rollout_wave, "timed_out", 1)
        old = None
    if row.rollout_id is None or not status:
        return
    if old is None or not old.rollout_status:
        _bump(state, row.rollout_id, row.rollout_wave, "assigned", 1)
    elif old.rollout_status == status:
        return
    else:
        _bump(state, row.rollout_id, row.rollout_wave, old.rollout_status, -1)
    _bump(state, row.rollout_id, row.rollout_wave, status, 1)


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
                          started_at=env.at, updated_at=env.at, updated_seq=seq, wave_sizes=list(sizes),
                          apply_timeout_seconds=event.apply_timeout_seconds)
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
    match event:
        case rollout.RolloutDevicesAssigned():
            timeout = row.apply_timeout_seconds if row is not None else 300.0
            deadline = format_time(parse_time(event.at) + timedelta(seconds=timeout))
            for device_id in event.devices:
                device = _device(state, device_id)
                put_device(state, _replace(device, rollout_id=event.rollout_id, rollout_wave=event.wave,
                                           rollout_deadline=deadline, updated_at=env.at, updated_seq=seq))
        case rollout.RolloutDevicesRestored():
            for device_id in event.devices:
                device = _device(state, device_id)
                if device.rollout_id == event.rollout_id and device.rollout_wave >= 0:
                    put_device(state, _replace(device, rollout_status="restored", updated_at=env.at,
                                               updated_seq=seq))


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


def devices_named(event: Event) -> list[str]:
    """Devices a rollout event changes besides its own row (their standing in the rollout)."""
    if isinstance(event, rollout.RolloutDevicesAssigned | rollout.RolloutDevicesRestored):
        return event.devices
    return []


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
