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
    # For an event about a device: the device as it stood after it (what `fleet diff` compares).
    dev_snapshot: str | None = None
    dev_online: bool | None = None
    dev_health: str | None = None
    dev_drifted: bool | None = None
    dev_present: bool | None = None  # registered and not retired


class DeviceState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the changes projection keeps of a device between events: where it is and what a fleet
    diff compares (reported snapshot, online, health, drifted, registered and not retired)."""

    device_id: str
    site_id: str = ""
    snapshot_id: str | None = None
    online: bool = False
    health: str = "unknown"
    drifted: bool = False
    present: bool = False


def device_after(old: DeviceState | None, event: Event) -> DeviceState | None:
    """A device's state after `event` (None: the event is not about a device)."""
    device_id = getattr(event, "device_id", None)
    if not isinstance(device_id, str):
        return None
    state = old or DeviceState(device_id=device_id)
    replace = msgspec.structs.replace
    match event:
        case registry.DeviceAdded():
            return replace(state, site_id=event.site_id, present=True)
        case registry.DeviceMoved():
            return replace(state, site_id=event.to_site_id)
        case registry.DeviceRetired():
            return replace(state, present=False)
        case observed.DeviceCameOnline():
            return replace(state, site_id=state.site_id or event.site_id, online=True,
                           snapshot_id=event.snapshot_id, health=event.health)
        case observed.DeviceWentOffline():
            return replace(state, online=False)
        case observed.DeviceReportedState():
            return replace(state, snapshot_id=event.snapshot_id)
        case observed.DeviceHealthChanged():
            return replace(state, health=event.health)
        case observed.DriftBegan():
            return replace(state, drifted=True)
        case observed.DriftEnded():
            return replace(state, drifted=False)
        case desired.DesiredStateAssigned():
            return replace(state, site_id=state.site_id or event.site_id)
    return state


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
            was = f" (was {event.previous_snapshot_id or 'none'})"
            if event.reason == "rollback":
                by = f" by the rollback of {event.rollout_id}" if event.rollout_id else " by a rollback"
                return f"device {event.device_id} given {event.snapshot_id} back{by}{was}"
            by = f" by rollout {event.rollout_id}" if event.rollout_id else f" ({event.reason})"
            return f"device {event.device_id} assigned snapshot {event.snapshot_id}{by}{was}"
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
        case audit.AuditCheckpointed():
            return (f"audit checkpoint {event.number} signed log sequences {event.from_seq} to "
                    f"{event.through_seq} with key {event.key_id}")
        case audit.AuditKeyAnnounced():
            return f"audit signing key {event.key_id} announced"
        case _:
            return _rollout_summary(event)


def _devices(n: int) -> str:
    return f"{n} device" if n == 1 else f"{n} devices"


def _wave(number: int) -> str:
    return f"wave {number + 1}"  # waves are 0-based in events; people (and `fleet rollout status`) count from 1


def _gate_inputs(inputs: rollout.GateInputs) -> str:
    metrics = "".join(f", {name} {value:g}" for name, value in sorted(inputs.metrics.items()))
    return (f"healthy {inputs.healthy}/{inputs.devices}, failed {inputs.failed}, offline {inputs.offline}, "
            f"timed out {inputs.timed_out}{metrics}")


def _rollout_summary(event: Event) -> str:
    match event:
        case rollout.RolloutStarted():
            sizes = " + ".join(str(n) for n in event.wave_sizes)
            return (f"rollout {event.rollout_id} of {event.snapshot_id} to {event.target or 'every device'} "
                    f"started: {_devices(sum(event.wave_sizes))} in {len(event.wave_sizes)} waves ({sizes}), "
                    f"on failure {event.on_failure}"
                    + (f", not before {event.not_before}" if event.not_before else "")
                    + (", ignoring maintenance windows" if event.ignore_windows else ""))
        case rollout.RolloutWavePlanned():
            part = f" (part {event.part + 1})" if event.part else ""
            return (f"rollout {event.rollout_id} {_wave(event.wave)} planned{part}: "
                    f"{_devices(len(event.devices))}")
        case rollout.RolloutWaveStarted():
            return f"rollout {event.rollout_id} {_wave(event.wave)} started assigning"
        case rollout.RolloutWindowsIgnored():
            return f"rollout {event.rollout_id} ignores maintenance windows from now" + _why(event.reason)
        case rollout.RolloutWaveWaiting():
            if not event.opens:
                return f"rollout {event.rollout_id} {_wave(event.wave)} no longer waits for maintenance windows"
            sites = ", ".join(f"{site} (opens {opens or 'not within 8 days'})" for site, opens in event.opens.items())
            return f"rollout {event.rollout_id} {_wave(event.wave)} waits for maintenance windows: {sites}"
        case rollout.RolloutDevicesAssigned():
            return (f"rollout {event.rollout_id} {_wave(event.wave)}: {_devices(len(event.devices))} "
                    "given the new snapshot")
        case rollout.RolloutDevicesRestored():
            return (f"rollout {event.rollout_id} rollback: {_devices(len(event.devices))} given back "
                    "what they ran before")
        case rollout.RolloutWaveBaking():
            return f"rollout {event.rollout_id} {_wave(event.wave)} settled; baking until {event.until}"
        case rollout.RolloutGateEvaluated():
            if event.passed:
                return f"rollout {event.rollout_id} {_wave(event.wave)} gate passed ({_gate_inputs(event.inputs)})"
            return (f"rollout {event.rollout_id} {_wave(event.wave)} gate failed: {'; '.join(event.reasons)} "
                    f"({_gate_inputs(event.inputs)})")
        case rollout.RolloutWaveHeld():
            return f"rollout {event.rollout_id} {_wave(event.wave)} passed; held for an operator to promote"
        case rollout.RolloutPromoted():
            return f"rollout {event.rollout_id} promoted past {_wave(event.wave)}"
        case rollout.RolloutPaused():
            return f"rollout {event.rollout_id} paused" + _why(event.reason)
        case rollout.RolloutResumed():
            override = ", overriding the failed gate" if event.override_gate else ""
            return f"rollout {event.rollout_id} resumed{override}"
        case rollout.RolloutAborted():
            return f"rollout {event.rollout_id} aborted" + _why(event.reason)
        case rollout.RolloutRollbackStarted():
            to = f" to {event.to_snapshot_id}" if event.to_snapshot_id else " to what each device ran before"
            return f"rollout {event.rollout_id} rolling back {_devices(event.devices)}{to}" + _why(event.reason)
        case rollout.RolloutRolledBack():
            return f"rollout {event.rollout_id} rolled back: every touched device has its earlier snapshot again"
        case rollout.RolloutCompleted():
            return f"rollout {event.rollout_id} completed: every wave passed its gate"
    # A type without a sentence of its own (tests/unit/test_change_summaries.py fails on it)
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


def change_row(seq: int, env: Envelope, event: Event, site_of: Callable[[str], str | None],
               after: DeviceState | None = None) -> ChangeRow:
    """The `changes` row of one event; `site_of` answers a device's site as of before it; `after`
    is the device as it stands after the event (`device_after`), when the event is about one."""
    device, site, snap, rollout = _refs(event)
    if device is not None and site is None:
        site = site_of(device)
    row = ChangeRow(
        seq=seq, at=env.at, type=env.type, aggregate=env.aggregate, aggregate_id=env.aggregate_id,
        actor=env.actor, event_id=env.id, summary=_summary(event), device_id=device, site_id=site,
        snapshot_id=snap, rollout_id=rollout,
    )
    if after is None:
        return row
    return msgspec.structs.replace(row, dev_snapshot=after.snapshot_id, dev_online=after.online,
                                   dev_health=after.health, dev_drifted=after.drifted, dev_present=after.present)


def site_change(event: Event) -> tuple[str, str] | None:
    """(device, site) when an event sets where a device is."""
    match event:
        case registry.DeviceAdded():
            return event.device_id, event.site_id
        case registry.DeviceMoved():
            return event.device_id, event.to_site_id
    return None
