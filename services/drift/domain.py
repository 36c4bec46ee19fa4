"""The drift service's pure core: one device's state machine (DESIGN §5).

A device's state folds three event families: the registry's (is it known, at which site, is it
retired), the rollout service's desired state, and this service's own observed-state events.
`decide` turns a command (an accepted heartbeat, the passing of time, a desired-state or registry
change) into observed-state events, only when something changed; `evolve` applies any event.

A few fields are not in the log because they change with every heartbeat: when the device was
last seen, its last `seq`, and since when its report has differed from desired. `observe` keeps
them; `resume` sets them after a restart so that no device is declared offline before it had one
full offline window to report. Times are epoch seconds passed in by the caller; nothing here
reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from shared.configs import current_hash
from shared.devices import Heartbeat
from shared.envelope import Event
from shared.errors import Conflict, NotFound
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import (
    DeviceCameOnline,
    DeviceHealthChanged,
    DeviceReportedState,
    DeviceStuck,
    DeviceWentOffline,
    DriftAcknowledged,
    DriftBegan,
    DriftEnded,
    ObservedEvent,
    ReconcileAttempted,
    ReconcileForced,
)
from shared.events.registry import DeviceAdded, DeviceMoved, DeviceRetired
from shared.times import format_time, parse_time

FLIPS_KEPT = 64  # flip times kept per device (a flap_changes above it never counts as flapping)

# Why a heartbeat was dropped (metric label values).
UNKNOWN_DEVICE = "unknown_device"
RETIRED_DEVICE = "retired_device"
SITE_MISMATCH = "site_mismatch"
OUT_OF_ORDER = "out_of_order"
MALFORMED = "malformed"
SUBJECT_MISMATCH = "subject_mismatch"
OVERSIZED = "oversized"
REJECT_REASONS = (UNKNOWN_DEVICE, RETIRED_DEVICE, SITE_MISMATCH, OUT_OF_ORDER, MALFORMED,
                  SUBJECT_MISMATCH, OVERSIZED)


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """The timing rules, from Settings."""

    interval: float = 10.0
    offline_after: int = 3
    drift_grace: float = 60.0
    reconcile_backoff: float = 5.0
    reconcile_max_tries: int = 5
    # Flapping: a device whose reported health or state flips `flap_changes` times within
    # `flap_window` seconds is flapping; its flips become no events until it holds still for the
    # window, then the net change becomes one event (0 changes or a 0 s window: never flapping).
    flap_window: float = 60.0
    flap_changes: int = 6

    @property
    def offline_window(self) -> float:
        """Seconds without a heartbeat after which a device is offline."""
        return self.interval * self.offline_after

    def backoff(self, attempt: int) -> float:
        """Delay after the `attempt`-th reconciliation before the next one (doubling)."""
        return float(self.reconcile_backoff * 2 ** (attempt - 1))


class DeviceState(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """What the drift service knows about one device."""

    device_id: str
    # from the registry
    site_id: str | None = None  # None: not registered
    retired: bool = False
    # from the desired-state events
    desired_snapshot_id: str | None = None
    desired_config_hash: str | None = None
    desired_revision: int = 0
    # from our own observed-state events
    online: bool = False
    reported_snapshot_id: str | None = None
    reported_config_hash: str | None = None
    health: str = "ok"
    drifted: bool = False
    drift_since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    stuck: bool = False
    acknowledged: bool = False  # an operator accepted the current drift: no reconciliation
    # volatile (not in the log): see `observe` and `resume`
    last_seen: float = 0.0
    last_seq: int = 0
    mismatch_since: float | None = None
    seen: tuple[str | None, str | None, str] | None = None  # the last heartbeat's snapshot, hash, health
    flips: tuple[float, ...] = ()  # when the heartbeats' (snapshot, hash, health) last changed

    def flapping(self, now: float, policy: Policy) -> bool:
        """Whether the device's reports flip too often to be taken as events right now."""
        recent = sum(1 for at in self.flips if now - at < policy.flap_window)
        return policy.flap_changes > 0 and recent >= policy.flap_changes

    @property
    def matches_desired(self) -> bool:
        """True when what the device reports is what it should run (or nothing is desired)."""
        return _matches(self, self.reported_snapshot_id, self.reported_config_hash)


def partition_of(device_id: str, partitions: int) -> int:
    """The partition a device belongs to when heartbeats are split over `partitions` drift
    instances: FNV-1a (32 bit) of the id modulo the count, exactly what the NATS server's
    `{{partition(n, 2)}}` subject mapping computes for the device token."""
    digest = 0x811C9DC5
    for byte in device_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


def initial(device_id: str) -> DeviceState:
    """A device nothing is known about yet."""
    return DeviceState(device_id=device_id)


# --- commands -------------------------------------------------------------------------------------


class Beat(msgspec.Struct, frozen=True):
    """An accepted heartbeat (see `reject` for the ones that are not)."""

    heartbeat: Heartbeat


class Tick(msgspec.Struct, frozen=True):
    """Time passed: check liveness, the drift grace period and due reconciliations."""


class DesiredChanged(msgspec.Struct, frozen=True):
    """A new desired state was applied: any running drift ends, judged afresh against the new one."""


class Retired(msgspec.Struct, frozen=True):
    """The device was retired: any running drift ends."""


class ForceReconcile(msgspec.Struct, frozen=True):
    """An operator's request to reconcile a drifted device now, even when it is stuck."""

    reason: str = ""


class AcknowledgeDrift(msgspec.Struct, frozen=True):
    """An operator accepts a drifted device as it is: stop reconciling it until the drift ends."""

    reason: str = ""


Command = Beat | Tick | DesiredChanged | Retired | ForceReconcile | AcknowledgeDrift


def reject(state: DeviceState, heartbeat: Heartbeat) -> str | None:
    """Why a heartbeat must be dropped without effect, or None when it is acceptable."""
    if state.site_id is None:
        return UNKNOWN_DEVICE
    if state.retired:
        return RETIRED_DEVICE
    if heartbeat.site != state.site_id:
        return SITE_MISMATCH
    if heartbeat.seq <= state.last_seq:
        return OUT_OF_ORDER
    return None


def steady(state: DeviceState, heartbeat: Heartbeat) -> bool:
    """True when an accepted heartbeat repeats what is known and matches desired state: it can
    cause no event and changes only last-seen and seq (the common case, kept cheap)."""
    return (state.online and not state.drifted and state.mismatch_since is None
            and state.seen == (heartbeat.snapshot_id, heartbeat.config_hash, heartbeat.health)
            and heartbeat.health == state.health
            and heartbeat.config_hash == state.reported_config_hash
            and heartbeat.snapshot_id == state.reported_snapshot_id
            and _matches(state, heartbeat.snapshot_id, heartbeat.config_hash))


def tick_due(state: DeviceState, now: float, policy: Policy) -> bool:
    """Whether a Tick at `now` can cause an event (most devices, most of the time, cannot)."""
    return state.online and (now - state.last_seen > policy.offline_window or state.drifted
                             or state.mismatch_since is not None)


def decide(state: DeviceState, command: Command, now: float, policy: Policy) -> list[ObservedEvent]:
    """The observed-state events a command causes (empty when nothing changed)."""
    match command:
        case Beat(heartbeat=hb):
            return _on_beat(state, hb, now, policy)
        case Tick():
            if not state.online:
                return []
            if now - state.last_seen > policy.offline_window:
                return [DeviceWentOffline(device_id=state.device_id, last_seen=_fmt(state.last_seen))]
            return _judge(state, state.reported_snapshot_id, state.reported_config_hash, now, policy)
        case DesiredChanged():
            return _end_drift(state, now, "desired_changed")
        case Retired():
            return _end_drift(state, now, "retired")
        case ForceReconcile(reason=reason):
            _require_drifted(state, "nothing to reconcile")
            return [ReconcileForced(device_id=state.device_id, reason=reason)]
        case AcknowledgeDrift(reason=reason):
            _require_drifted(state, "nothing to acknowledge")
            if state.acknowledged:
                raise Conflict(f"the drift of device {state.device_id} is already acknowledged",
                               field="device_id")
            return [DriftAcknowledged(device_id=state.device_id, reason=reason)]
    return []


def _require_drifted(state: DeviceState, otherwise: str) -> None:
    """Operators act on registered, active devices that drift; anything else is refused."""
    if state.site_id is None:
        raise NotFound(f"device {state.device_id} is not registered", field="device_id")
    if state.retired:
        raise Conflict(f"device {state.device_id} is retired", field="device_id")
    if not state.drifted:
        raise Conflict(f"device {state.device_id} is not drifted: {otherwise}", field="device_id")


def _on_beat(state: DeviceState, hb: Heartbeat, now: float, policy: Policy) -> list[ObservedEvent]:
    events: list[ObservedEvent] = []
    if not state.online:
        events.append(DeviceCameOnline(
            device_id=state.device_id, site_id=hb.site, snapshot_id=hb.snapshot_id,
            config_hash=hb.config_hash, health=hb.health, agent_version=hb.agent_version))
    elif not state.flapping(now, policy):
        if hb.snapshot_id != state.reported_snapshot_id or hb.config_hash != state.reported_config_hash:
            events.append(DeviceReportedState(
                device_id=state.device_id, snapshot_id=hb.snapshot_id, config_hash=hb.config_hash,
                previous_snapshot_id=state.reported_snapshot_id,
                previous_config_hash=state.reported_config_hash))
        if hb.health != state.health:
            events.append(DeviceHealthChanged(
                device_id=state.device_id, health=hb.health, previous=state.health,
                metrics=dict(hb.metrics)))
    events.extend(_judge(state, hb.snapshot_id, hb.config_hash, now, policy))
    return events


def _judge(state: DeviceState, snapshot_id: str | None, config_hash: str | None, now: float,
           policy: Policy) -> list[ObservedEvent]:
    """Drift began or ended, and reconciliation, for a device reporting (snapshot, hash)."""
    if _matches(state, snapshot_id, config_hash):
        return _end_drift(state, now, "converged")
    if not state.drifted:
        since = state.mismatch_since
        if since is None or now - since < policy.drift_grace:
            return []
        began = DriftBegan(
            device_id=state.device_id, desired_snapshot_id=state.desired_snapshot_id,
            desired_config_hash=state.desired_config_hash, reported_snapshot_id=snapshot_id,
            reported_config_hash=config_hash, since=_fmt(since))
        return [began, *_reconcile(state, 0, 0.0, now, policy)]
    if state.stuck or state.acknowledged:
        return []
    return _reconcile(state, state.attempts, state.retry_at, now, policy)


def _reconcile(state: DeviceState, attempts: int, retry_at: float, now: float,
               policy: Policy) -> list[ObservedEvent]:
    if now < retry_at:
        return []
    if attempts >= policy.reconcile_max_tries:
        return [DeviceStuck(device_id=state.device_id, attempts=attempts)]
    attempt = attempts + 1
    return [ReconcileAttempted(
        device_id=state.device_id, attempt=attempt, revision=state.desired_revision + attempt,
        retry_at=_fmt(now + policy.backoff(attempt)))]


def _end_drift(state: DeviceState, now: float, resolution: str) -> list[ObservedEvent]:
    if not state.drifted:
        return []
    duration = round(max(0.0, now - state.drift_since), 6)
    return [DriftEnded(device_id=state.device_id, duration_seconds=duration, resolution=resolution)]


def _matches(state: DeviceState, snapshot_id: str | None, config_hash: str | None) -> bool:
    if state.desired_config_hash is None:
        return True
    return snapshot_id == state.desired_snapshot_id and config_hash == state.desired_config_hash


# --- the config hash's two forms ----------------------------------------------------------------


def in_current_form(event: Event, aliases: Mapping[str, str]) -> Event:
    """`event` with its config hash in the current (RFC 8785) form, where `aliases` (legacy hash ->
    current hash, from the snapshots' configs: shared.configs.hash_aliases) knows it: desired
    states assigned and reports recorded before the control plane changed the rule then compare
    equal to what an upgraded agent reports, and the other way round (docs/decisions.md)."""
    match event:
        case DesiredStateAssigned() | DeviceCameOnline() | DeviceReportedState() if event.config_hash in aliases:
            return msgspec.structs.replace(event, config_hash=current_hash(aliases, event.config_hash))
        case _:
            return event


def heartbeat_in_current_form(heartbeat: Heartbeat, aliases: Mapping[str, str]) -> Heartbeat:
    """A heartbeat whose hash is the legacy form of a known config, reported as its current form."""
    if heartbeat.config_hash is None or heartbeat.config_hash not in aliases:
        return heartbeat
    return msgspec.structs.replace(heartbeat, config_hash=aliases[heartbeat.config_hash])


# --- evolve ---------------------------------------------------------------------------------------


def evolve(state: DeviceState, event: Event) -> DeviceState:
    """Apply one event (registry, desired or observed; others leave the state as it is)."""
    replace = msgspec.structs.replace
    match event:
        case DeviceAdded(site_id=site_id):
            return replace(state, site_id=site_id, retired=False)
        case DeviceMoved(to_site_id=site_id):
            return replace(state, site_id=site_id)
        case DeviceRetired():
            return replace(state, retired=True)
        case DesiredStateAssigned():
            return replace(state, desired_snapshot_id=event.snapshot_id,
                           desired_config_hash=event.config_hash, desired_revision=event.revision,
                           attempts=0, retry_at=0.0, stuck=False, mismatch_since=None)
        case DeviceCameOnline():
            return replace(state, online=True, reported_snapshot_id=event.snapshot_id,
                           reported_config_hash=event.config_hash, health=event.health)
        case DeviceWentOffline():
            # A device back from offline may be a restarted agent: its seq starts afresh.
            return replace(state, online=False, last_seq=0, mismatch_since=None)
        case DeviceReportedState():
            return replace(state, reported_snapshot_id=event.snapshot_id,
                           reported_config_hash=event.config_hash)
        case DeviceHealthChanged():
            return replace(state, health=event.health)
        case DriftBegan():
            return replace(state, drifted=True, drift_since=_epoch(event.since), attempts=0,
                           retry_at=0.0, stuck=False, acknowledged=False)
        case DriftEnded():
            return replace(state, drifted=False, attempts=0, retry_at=0.0, stuck=False,
                           acknowledged=False, mismatch_since=None)
        case ReconcileAttempted():
            retry_at = _epoch(event.retry_at) if event.retry_at else 0.0
            return replace(state, attempts=event.attempt, retry_at=retry_at)
        case DeviceStuck():
            return replace(state, stuck=True)
        case ReconcileForced():
            return replace(state, stuck=False, acknowledged=False, attempts=0, retry_at=0.0)
        case DriftAcknowledged():
            return replace(state, acknowledged=True)
    return state


def observe(state: DeviceState, heartbeat: Heartbeat, now: float) -> DeviceState:
    """Bookkeeping of an accepted heartbeat that is not an event: last seen, seq, since when the
    report has differed from desired (the start of the grace period), and when reports flipped."""
    if _matches(state, heartbeat.snapshot_id, heartbeat.config_hash):
        mismatch_since = None
    else:
        mismatch_since = state.mismatch_since if state.mismatch_since is not None else now
    seen = (heartbeat.snapshot_id, heartbeat.config_hash, heartbeat.health)
    flips = state.flips
    if state.seen is not None and seen != state.seen:
        flips = (*flips[-(FLIPS_KEPT - 1):], now)
    return msgspec.structs.replace(state, last_seen=now, last_seq=heartbeat.seq,
                                   mismatch_since=mismatch_since, seen=seen, flips=flips)


def resume(state: DeviceState, now: float) -> DeviceState:
    """After a restart: every device that was online gets one full offline window from `now`,
    and a device whose last report differs from desired starts its grace period afresh. What
    the heartbeats taught before the restart (the volatile fields) is forgotten, so a state
    restored from a checkpoint resumes exactly as one replayed from the log."""
    mismatch_since = None if not state.online or state.matches_desired or state.drifted else now
    if not state.online and state.last_seen == state.last_seq == 0 and state.seen is None and not state.flips \
            and state.mismatch_since is None:
        return state  # nothing to forget (most offline devices): no copy
    return msgspec.structs.replace(state, last_seen=now if state.online else 0.0, last_seq=0,
                                   mismatch_since=mismatch_since, seen=None, flips=())


def _fmt(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, UTC))


def _epoch(text: str) -> float:
    return parse_time(text).timestamp()
