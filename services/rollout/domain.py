"""The rollout as a pure state machine (no clock, no I/O: `now` and the fleet view are passed in).

- `plan_waves` decides wave membership once, deterministically: devices ordered by
  sha256(rollout id + device id), named canary sites first.
- `decide` turns an operator command into events; `tick` turns the passage of time and what the
  devices report into events (assign the next window, start a bake, evaluate a gate, go on,
  complete, pause or roll back); `evolve` folds events into state.
- Assignments and restores are returned as DesiredStateAssigned events for the devices plus one
  rollout event naming them, in chunks that fit one atomic batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from services.rollout.spec import Canary
from shared.envelope import Event
from shared.errors import Conflict, Invalid
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import (
    GateInputs,
    Gates,
    MetricGate,
    RolloutAborted,
    RolloutCompleted,
    RolloutDevicesAssigned,
    RolloutDevicesRestored,
    RolloutGateEvaluated,
    RolloutPaused,
    RolloutPromoted,
    RolloutResumed,
    RolloutRollbackStarted,
    RolloutRolledBack,
    RolloutStarted,
    RolloutWaveBaking,
    RolloutWaveHeld,
    RolloutWavePlanned,
    RolloutWaveStarted,
)
from shared.times import format_time, parse_time

CHUNK = 999  # devices per assignment chunk: their desired events + 1 rollout event = one batch
PLAN_PART = 10_000  # device ids per RolloutWavePlanned event
MAX_IN_FLIGHT_MAX = 1_000_000
ACTIVE = ("running", "paused", "rolling_back")
TERMINAL = ("completed", "aborted", "rolled_back")


# --- what the rollout sees of the fleet (built by the handlers from the log) --------------------


class Observed(msgspec.Struct):
    """What a device last reported, as far as the rollout cares."""

    online: bool = False
    config_hash: str | None = None
    health: str = "ok"
    metrics: dict[str, float] = {}


class Desired(msgspec.Struct, frozen=True):
    """What a device is currently meant to run."""

    snapshot_id: str
    config_hash: str
    revision: int
    rollout_id: str | None = None


class FleetView(msgspec.Struct):
    """Sites, desired and observed state of the devices a rollout touches."""

    site_of: dict[str, str] = {}
    desired: dict[str, Desired] = {}
    observed: dict[str, Observed] = {}


# --- state --------------------------------------------------------------------------------------


class Assignment(msgspec.Struct, frozen=True):
    """When a device must have applied (its apply timeout), in which wave, and what it had before."""

    wave: int
    deadline: datetime
    previous: tuple[str, str] | None = None


class Rollout(msgspec.Struct):
    """One rollout's state."""

    rollout_id: str
    status: str = "new"  # new running paused completed aborted rolling_back rolled_back
    phase: str = "assigning"  # assigning baking held gate_failed
    spec: RolloutStarted | None = None
    waves: list[list[str]] = []
    wave: int = 0
    bake_until: str | None = None
    assigned: dict[str, Assignment] = {}
    restored: set[str] = set()
    last_gate: RolloutGateEvaluated | None = None
    rollback: RolloutRollbackStarted | None = None
    reason: str = ""

    @property
    def devices(self) -> list[str]:
        """Every device of the plan, wave by wave."""
        return [d for wave in self.waves for d in wave]

    @property
    def active(self) -> bool:
        """Does this rollout still hold its devices (blocks other rollouts on them)?"""
        return self.status in ACTIVE


def initial(rollout_id: str) -> Rollout:
    """A rollout that has not started."""
    return Rollout(rollout_id)


def evolve(state: Rollout, event: Event) -> Rollout:
    """Fold one rollout event into the state (in place; returns it)."""
    match event:
        case RolloutStarted():
            state.status, state.spec = "running", event
            state.waves = [[] for _ in event.wave_sizes]
            state.wave, state.phase = 0, "assigning"
        case RolloutWavePlanned():
            state.waves[event.wave].extend(event.devices)
        case RolloutWaveStarted():
            state.wave, state.phase, state.bake_until = event.wave, "assigning", None
        case RolloutDevicesAssigned():
            assert state.spec is not None
            deadline = parse_time(event.at) + timedelta(seconds=state.spec.apply_timeout_seconds)
            for device in event.devices:
                prev = event.previous.get(device)
                state.assigned[device] = Assignment(event.wave, deadline, (prev[0], prev[1]) if prev else None)
        case RolloutWaveBaking():
            state.phase, state.bake_until = "baking", event.until
        case RolloutGateEvaluated():
            state.last_gate = event
            if not event.passed:
                state.phase = "gate_failed"
        case RolloutWaveHeld():
            state.phase = "held"
        case RolloutPromoted():
            state.phase = "promoted"
        case RolloutPaused():
            state.status, state.reason = "paused", event.reason
        case RolloutResumed():
            state.status = "running"
        case RolloutAborted():
            state.status, state.reason = "aborted", event.reason
        case RolloutRollbackStarted():
            state.status, state.rollback, state.reason = "rolling_back", event, event.reason
        case RolloutDevicesRestored():
            state.restored.update(event.devices)
        case RolloutRolledBack():
            state.status = "rolled_back"
        case RolloutCompleted():
            state.status = "completed"
    return state


# --- planning -----------------------------------------------------------------------------------


def plan_waves(
    rollout_id: str, devices: Mapping[str, str], canary: Canary, percents: Sequence[int]
) -> list[list[str]]:
    """Wave membership (wave 0 is the canary when there is one); empty waves are dropped."""
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{rollout_id}:{d}".encode()).digest())
    if canary.kind == "sites":
        first = [d for d in order if devices[d] in canary.sites]
        rest = [d for d in order if devices[d] not in canary.sites]
    else:
        size = canary.size(len(order))
        first, rest = order[:size], order[size:]
    waves = [first] if first else []
    taken, total = len(first), len(order)
    for percent in percents:
        upto = min(total, math.ceil(total * percent / 100))
        if upto > taken:
            waves.append(rest[taken - len(first): upto - len(first)])
            taken = upto
    return [w for w in waves if w]


def start(
    rollout_id: str,
    *,
    snapshot_id: str,
    target: str,
    devices: Mapping[str, str],
    config_hashes: Mapping[str, str],
    canary: Canary,
    canary_text: str,
    percents: Sequence[int],
    max_in_flight: int,
    bake_seconds: float,
    apply_timeout_seconds: float,
    gates: Gates,
    on_failure: str,
    approve_after: Sequence[int],
    state: Rollout,
) -> list[Event]:
    """Events that start a rollout: the spec and the recorded wave plan."""
    if state.status != "new":
        raise Conflict(f"rollout {rollout_id} already exists ({state.status})", field="rollout_id")
    if not devices:
        raise Invalid(f"the target {target!r} matches no active device", field="target")
    if on_failure not in ("pause", "rollback"):
        raise Invalid("on_failure must be pause or rollback", field="on_failure")
    if not 1 <= max_in_flight <= MAX_IN_FLIGHT_MAX:
        raise Invalid(f"max_in_flight must be 1 to {MAX_IN_FLIGHT_MAX:,}", field="max_in_flight")
    if canary.kind == "sites":
        missing = [s for s in canary.sites if s not in set(devices.values())]
        if missing:
            raise Invalid(f"canary sites {missing} have no device in the target", field="canary")
    waves = plan_waves(rollout_id, devices, canary, percents)
    events: list[Event] = [RolloutStarted(
        rollout_id=rollout_id, snapshot_id=snapshot_id, target=target, canary=canary_text,
        wave_percents=list(percents), wave_sizes=[len(w) for w in waves],
        max_in_flight=max_in_flight, bake_seconds=bake_seconds,
        apply_timeout_seconds=apply_timeout_seconds, gates=gates, on_failure=on_failure,
        approve_after=sorted(set(approve_after)), config_hashes=dict(config_hashes),
    )]
    for index, wave in enumerate(waves):
        for part, offset in enumerate(range(0, len(wave), PLAN_PART)):
            events.append(RolloutWavePlanned(rollout_id=rollout_id, wave=index, part=part,
                                             devices=wave[offset:offset + PLAN_PART]))
    events.append(RolloutWaveStarted(rollout_id=rollout_id, wave=0))
    return events


# --- operator commands --------------------------------------------------------------------------


def _require_started(state: Rollout) -> RolloutStarted:
    if state.spec is None:
        raise Invalid(f"rollout {state.rollout_id} does not exist", field="rollout_id")
    return state.spec


def pause(state: Rollout, reason: str = "") -> list[Event]:
    """Stop assigning until resume."""
    _require_started(state)
    if state.status == "paused":
        return []
    if state.status != "running":
        raise Conflict(f"rollout {state.rollout_id} is {state.status}; only a running rollout pauses",
                       field="rollout_id")
    return [RolloutPaused(rollout_id=state.rollout_id, reason=reason or "paused by operator")]


def resume(state: Rollout) -> list[Event]:
    """Go on; after a failed gate this overrides the verdict and moves to the next wave."""
    _require_started(state)
    if state.status == "running":
        return []
    if state.status != "paused":
        raise Conflict(f"rollout {state.rollout_id} is {state.status}; only a paused rollout resumes",
                       field="rollout_id")
    events: list[Event] = [RolloutResumed(rollout_id=state.rollout_id,
                                          override_gate=state.phase == "gate_failed")]
    if state.phase == "gate_failed":
        events += _advance(state)
    return events


def abort(state: Rollout, reason: str = "") -> list[Event]:
    """Stop for good; what is assigned stays assigned."""
    _require_started(state)
    if state.status == "aborted":
        return []
    if state.status in TERMINAL or state.status == "rolling_back":
        raise Conflict(f"rollout {state.rollout_id} is {state.status} and cannot be aborted",
                       field="rollout_id")
    return [RolloutAborted(rollout_id=state.rollout_id, reason=reason or "aborted by operator")]


def promote(state: Rollout) -> list[Event]:
    """Approve going on after a held wave."""
    _require_started(state)
    if state.phase != "held" or state.status != "running":
        raise Conflict(f"rollout {state.rollout_id} is not holding for approval "
                       f"({state.status}, {state.phase})", field="rollout_id")
    return [RolloutPromoted(rollout_id=state.rollout_id, wave=state.wave), *_advance(state)]


def rollback_plan(
    state: Rollout, to_snapshot_id: str | None = None, to_hashes: Mapping[str, str] | None = None,
    site_of: Mapping[str, str] | None = None,
) -> list[tuple[str, str | None, str | None]]:
    """(device, snapshot to restore, config hash to restore) for every touched device; None when
    the device had nothing before this rollout and no target snapshot was given (left as is)."""
    plan: list[tuple[str, str | None, str | None]] = []
    for device in sorted(state.assigned):
        if to_snapshot_id is not None:
            site = (site_of or {}).get(device, "")
            plan.append((device, to_snapshot_id, (to_hashes or {}).get(site)))
        else:
            previous = state.assigned[device].previous
            plan.append((device, previous[0], previous[1]) if previous else (device, None, None))
    return plan


def rollback(state: Rollout, reason: str = "", to_snapshot_id: str | None = None,
             to_hashes: Mapping[str, str] | None = None) -> list[Event]:
    """Begin restoring every touched device; rolling back twice is a no-op."""
    _require_started(state)
    if state.status in ("rolling_back", "rolled_back"):
        return []
    return [RolloutRollbackStarted(
        rollout_id=state.rollout_id, reason=reason or "rolled back by operator",
        to_snapshot_id=to_snapshot_id, to_config_hashes=dict(to_hashes or {}),
        devices=len(state.assigned))]


# --- time and device reports --------------------------------------------------------------------


def device_status(state: Rollout, device: str, view: FleetView, now: datetime) -> str:
    """pending | in_flight | converged | failed | timed_out, for one planned device."""
    spec = state.spec
    assignment = state.assigned.get(device)
    if spec is None or assignment is None:
        return "pending"
    observed = view.observed.get(device)
    wanted = spec.config_hashes.get(view.site_of.get(device, ""))
    if observed is not None and observed.config_hash is not None and observed.config_hash == wanted:
        return "failed" if observed.health == "failed" else "converged"
    if observed is not None and observed.health == "failed":
        return "failed"
    return "timed_out" if now >= assignment.deadline else "in_flight"


def tick(state: Rollout, view: FleetView, now: datetime) -> list[Event]:
    """What the rollout does next, given the time and what devices report."""
    if state.status == "rolling_back":
        return _restore(state, view)
    if state.status != "running" or state.spec is None:
        return []
    spec = state.spec
    if state.phase == "assigning":
        wave = state.waves[state.wave]
        statuses = {d: device_status(state, d, view, now) for d in wave}
        in_flight = sum(1 for s in statuses.values() if s == "in_flight")
        waiting = [d for d in wave if statuses[d] == "pending"]
        if waiting:
            room = spec.max_in_flight - in_flight
            return _assign(state, waiting[:room], view, now) if room > 0 else []
        if in_flight == 0:
            until = now + timedelta(seconds=spec.bake_seconds)
            return [RolloutWaveBaking(rollout_id=state.rollout_id, wave=state.wave,
                                      until=format_time(until))]
        return []
    if state.phase == "baking" and state.bake_until is not None and now >= parse_time(state.bake_until):
        verdict = evaluate_gate(state, view, now)
        if verdict.passed:
            if state.wave in spec.approve_after and state.wave < len(state.waves) - 1:
                return [verdict, RolloutWaveHeld(rollout_id=state.rollout_id, wave=state.wave)]
            return [verdict, *_advance(state)]
        reason = f"gate failed on wave {state.wave + 1}: " + "; ".join(verdict.reasons)
        if spec.on_failure == "rollback":
            return [verdict, *rollback(evolve_copy(state, verdict), reason=reason)]
        return [verdict, RolloutPaused(rollout_id=state.rollout_id, reason=reason)]
    return []


def evolve_copy(state: Rollout, event: Event) -> Rollout:
    """`state` with `event` applied, leaving `state` untouched."""
    return evolve(msgspec.structs.replace(state), event)


def _advance(state: Rollout) -> list[Event]:
    if state.wave + 1 < len(state.waves):
        return [RolloutWaveStarted(rollout_id=state.rollout_id, wave=state.wave + 1)]
    return [RolloutCompleted(rollout_id=state.rollout_id)]


def _assign(state: Rollout, devices: list[str], view: FleetView, now: datetime) -> list[Event]:
    spec = state.spec
    assert spec is not None
    events: list[Event] = []
    at = format_time(now)
    for offset in range(0, len(devices), CHUNK):
        chunk = devices[offset:offset + CHUNK]
        previous: dict[str, list[str]] = {}
        for device in chunk:
            site = view.site_of.get(device, "")
            before = view.desired.get(device)
            if before is not None:
                previous[device] = [before.snapshot_id, before.config_hash]
            events.append(DesiredStateAssigned(
                device_id=device, site_id=site, snapshot_id=spec.snapshot_id,
                config_hash=spec.config_hashes[site], revision=(before.revision if before else 0) + 1,
                rollout_id=state.rollout_id, reason="rollout",
                previous_snapshot_id=before.snapshot_id if before else None,
                previous_config_hash=before.config_hash if before else None,
            ))
        events.append(RolloutDevicesAssigned(rollout_id=state.rollout_id, wave=state.wave, at=at,
                                             devices=chunk, previous=previous))
    return events


def _restore(state: Rollout, view: FleetView) -> list[Event]:
    assert state.rollback is not None
    target = state.rollback
    events: list[Event] = []
    todo = [d for d in sorted(state.assigned) if d not in state.restored]
    plan = {d: (s, h) for d, s, h in rollback_plan(state, target.to_snapshot_id,
                                                   target.to_config_hashes, view.site_of)}
    for offset in range(0, len(todo), CHUNK):
        chunk = todo[offset:offset + CHUNK]
        for device in chunk:
            snapshot, config_hash = plan[device]
            if snapshot is None or config_hash is None:
                continue  # nothing to go back to: left as it is, and said so in the plan
            before = view.desired.get(device)
            events.append(DesiredStateAssigned(
                device_id=device, site_id=view.site_of.get(device, ""), snapshot_id=snapshot,
                config_hash=config_hash, revision=(before.revision if before else 0) + 1,
                rollout_id=state.rollout_id, reason="rollback",
                previous_snapshot_id=before.snapshot_id if before else None,
                previous_config_hash=before.config_hash if before else None,
            ))
        events.append(RolloutDevicesRestored(rollout_id=state.rollout_id, devices=chunk))
    events.append(RolloutRolledBack(rollout_id=state.rollout_id))
    return events


# --- gates --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], aggregate: str) -> float:
    """Nearest-rank percentile, or avg/max/min."""
    ordered = sorted(values)
    if aggregate == "avg":
        return sum(ordered) / len(ordered)
    if aggregate == "max":
        return ordered[-1]
    if aggregate == "min":
        return ordered[0]
    rank = math.ceil(int(aggregate[1:]) / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def _holds(value: float, gate: MetricGate) -> bool:
    return {"<=": value <= gate.threshold, "<": value < gate.threshold,
            ">=": value >= gate.threshold, ">": value > gate.threshold}[gate.op]


def evaluate_gate(state: Rollout, view: FleetView, now: datetime) -> RolloutGateEvaluated:
    """The verdict on the current wave's devices, with every input recorded."""
    spec = state.spec
    assert spec is not None
    wave = state.waves[state.wave]
    counts = dict.fromkeys(("healthy", "converged", "failed", "timed_out", "offline", "degraded"), 0)
    samples: dict[str, list[float]] = {}
    for device in wave:
        status = device_status(state, device, view, now)
        observed = view.observed.get(device, Observed())
        if status == "converged":
            counts["converged"] += 1
        if status in ("failed", "timed_out"):
            counts["failed"] += 1
        if status == "timed_out":
            counts["timed_out"] += 1
        if not observed.online:
            counts["offline"] += 1
        if observed.health == "degraded":
            counts["degraded"] += 1
        if status == "converged" and observed.online and observed.health == "ok":
            counts["healthy"] += 1
        for name, value in observed.metrics.items():
            samples.setdefault(name, []).append(value)
    total = len(wave)
    gates = spec.gates
    reasons = []
    if counts["healthy"] / total < gates.min_healthy:
        reasons.append(f"healthy {counts['healthy']}/{total} < {gates.min_healthy:.0%}")
    if counts["failed"] / total > gates.max_failed:
        reasons.append(f"failed {counts['failed']}/{total} > {gates.max_failed:.0%}")
    if counts["offline"] / total > gates.max_offline:
        reasons.append(f"offline {counts['offline']}/{total} > {gates.max_offline:.0%}")
    metrics: dict[str, float] = {}
    for gate in gates.metrics:
        key = f"{gate.metric} {gate.aggregate}"
        values = samples.get(gate.metric)
        if not values:
            reasons.append(f"{key}: no device reported {gate.metric}")
            continue
        metrics[key] = value = percentile(values, gate.aggregate)
        if not _holds(value, gate):
            reasons.append(f"{key} = {value:g}, wanted {gate.op} {gate.threshold:g}")
    inputs = GateInputs(devices=total, metrics=metrics, **counts)
    return RolloutGateEvaluated(rollout_id=state.rollout_id, wave=state.wave, passed=not reasons,
                                inputs=inputs, gates=gates, reasons=reasons)
