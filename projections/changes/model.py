"""The `changes` read model as pure data: every state-change event becomes one row saying who did
what, when, to which aggregate, with the device/site/snapshot/rollout it concerns and a one-line
summary a person can read. Pure: the device -> site map it needs is passed in."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.envelope import Envelope, Event
from shared.events import audit, desired, observed, registry, rollout, snapshot


class ChangeRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One state change."""

    seq: int
    at: str
    type: str
    aggregate: str
    aggregate_id: str
    actor: str
    event_id: str
    summary: str
    device_id: str | None = None
    site_id: str | None = None
    snapshot_id: str | None = None
    rollout_id: str | None = None


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def _short(value: str | None) -> str:
    return "none" if value is None else value[:12]


def _why(reason: str) -> str:
    return f": {reason}" if reason else ""


def _summary(event: Event) -> str:
    match event:
        case registry.SiteAdded():
            return f"site {event.site_id} added" + (f" ({event.name})" if event.name else "")
        case registry.SiteUpdated():
            return f"site {event.site_id} updated: labels {_labels(event.labels)}"
        case registry.SiteRetired():
            return f"site {event.site_id} retired" + _why(event.reason)
        case registry.DeviceAdded():
            return f"device {event.device_id} added at site {event.site_id} (labels {_labels(event.labels)})"
        case registry.DeviceUpdated():
            return f"device {event.device_id} updated (kind {event.kind})"
        case registry.DeviceRelabeled():
            return f"device {event.device_id} relabeled: {_labels(event.labels)}"
        case registry.DeviceMoved():
            return f"device {event.device_id} moved from {event.from_site_id} to {event.to_site_id}"
        case registry.DeviceRetired():
            return f"device {event.device_id} retired" + _why(event.reason)
        case snapshot.SnapshotCreated():
            return f"snapshot {event.snapshot_id} created ({event.name} v{event.version})"
        case snapshot.SnapshotMarkedKnownGood():
            return f"snapshot {event.snapshot_id} marked known-good for {event.target or 'everything'}"
        case snapshot.SnapshotRetired():
            return f"snapshot {event.snapshot_id} retired" + _why(event.reason)
        case desired.DesiredStateAssigned():
            via = f" by rollout {event.rollout_id}" if event.rollout_id else ""
            return (f"device {event.device_id} assigned snapshot {event.snapshot_id} "
                    f"({event.reason}{via}; was {event.previous_snapshot_id or 'none'})")
        case observed.DeviceCameOnline():
            return (f"device {event.device_id} came online running {event.snapshot_id or 'nothing'} "
                    f"(health {event.health})")
        case observed.DeviceWentOffline():
            return f"device {event.device_id} went offline (last seen {event.last_seen})"
        case observed.DeviceReportedState():
            return (f"device {event.device_id} now runs {event.snapshot_id or 'nothing'} "
                    f"hash {_short(event.config_hash)} (was {event.previous_snapshot_id or 'nothing'})")
        case observed.DeviceHealthChanged():
            return f"device {event.device_id} health {event.previous} -> {event.health}"
        case observed.DriftBegan():
            return (f"device {event.device_id} drifted: runs {event.reported_snapshot_id or 'nothing'}, "
                    f"should run {event.desired_snapshot_id or 'nothing'}")
        case observed.DriftEnded():
            return (f"device {event.device_id} drift ended ({event.resolution}) after "
                    f"{event.duration_seconds:.0f}s")
        case observed.ReconcileAttempted():
            return f"device {event.device_id} reconcile attempt {event.attempt} (revision {event.revision})"
        case observed.DeviceStuck():
            return f"device {event.device_id} stuck after {event.attempts} reconcile attempts"
        case observed.ReconcileForced():
            return f"device {event.device_id} reconciliation forced" + _why(event.reason)
        case observed.DriftAcknowledged():
            return f"device {event.device_id} drift acknowledged" + _why(event.reason)
        case rollout.RolloutStarted():
            return f"rollout {event.rollout_id} of {event.snapshot_id} to {event.target or 'every device'} started"
        case rollout.RolloutWaveStarted():
            return f"rollout {event.rollout_id} wave {event.wave} started"
        case rollout.RolloutDevicesAssigned():
            return f"rollout {event.rollout_id} wave {event.wave} assigned {len(event.devices)} devices"
        case rollout.RolloutGateEvaluated():
            verdict = "passed" if event.passed else "failed: " + "; ".join(event.reasons)
            return f"rollout {event.rollout_id} wave {event.wave} gate {verdict}"
        case rollout.RolloutPaused() | rollout.RolloutAborted() | rollout.RolloutRollbackStarted():
            what = {"RolloutPaused": "paused", "RolloutAborted": "aborted",
                    "RolloutRollbackStarted": "rolling back"}[type(event).__name__]
            return f"rollout {event.rollout_id} {what}" + _why(event.reason)
        case rollout.RolloutCompleted() | rollout.RolloutRolledBack() | rollout.RolloutResumed():
            what = {"RolloutCompleted": "completed", "RolloutRolledBack": "rolled back",
                    "RolloutResumed": "resumed"}[type(event).__name__]
            return f"rollout {event.rollout_id} {what}"
        case audit.AuditCheckpointed():
            return f"audit checkpoint {event.number} signed seq {event.from_seq}-{event.through_seq}"
        case audit.AuditKeyAnnounced():
            return f"audit signing key {event.key_id} announced"
    return f"{type(event).__name__} on {event.aggregate} {event.aggregate_id}"


def _refs(event: Event) -> tuple[str | None, str | None, str | None, str | None]:
    """(device, site, snapshot, rollout) ids the event names itself."""
    device = getattr(event, "device_id", None)
    site = getattr(event, "site_id", None) or getattr(event, "to_site_id", None)
    snap = getattr(event, "snapshot_id", None)
    if snap is None and isinstance(event, observed.DriftBegan):
        snap = event.desired_snapshot_id
    rollout = getattr(event, "rollout_id", None)
    return device, site, snap, rollout


def change_row(seq: int, env: Envelope, event: Event, site_of: Callable[[str], str | None]) -> ChangeRow:
    """The `changes` row of one event; `site_of` answers a device's site as of before it."""
    device, site, snap, rollout = _refs(event)
    if device is not None and site is None:
        site = site_of(device)
    return ChangeRow(
        seq=seq, at=env.at, type=env.type, aggregate=env.aggregate, aggregate_id=env.aggregate_id,
        actor=env.actor, event_id=env.id, summary=_summary(event), device_id=device, site_id=site,
        snapshot_id=snap, rollout_id=rollout,
    )


def site_change(event: Event) -> tuple[str, str] | None:
    """(device, site) when an event sets where a device is."""
    match event:
        case registry.DeviceAdded():
            return event.device_id, event.site_id
        case registry.DeviceMoved():
            return event.device_id, event.to_site_id
    return None
