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
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import chain
from typing import Any, Protocol

import msgspec

from services.rollout.ledger import Ledger
from shared.configs import current_hash
from shared.contract.rollout import MAX_IN_FLIGHT_MAX, Canary
from shared.envelope import Event
from shared.errors import Conflict, Invalid, NotFound
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import (
    GateInputs,
    Gates,
    MetricDistribution,
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
    RolloutWaveWaiting,
    RolloutWindowsIgnored,
)
from shared.times import format_time, parse_time
from shared.windows import Window, is_open, next_open

CHUNK = 999  # devices per assignment chunk: their desired events + 1 rollout event = one batch
PLAN_PART = 10_000  # device ids per RolloutWavePlanned event
# The default in-flight rule (docs/decisions.md): at least 500 devices at once, and a quarter of
# the wave, so a wave of any size is assigned in about four rounds of one heartbeat interval each.
DEFAULT_IN_FLIGHT = 500
DEFAULT_IN_FLIGHT_PERCENT = 25.0
COMMIT_RATE = 20_000.0  # assignments committed per second on a small machine (an estimate's input)
ACTIVE = ("running", "paused", "rolling_back")
TERMINAL = ("completed", "aborted", "rolled_back")


# --- what the rollout sees of the fleet (built by the handlers from the log) --------------------


class Observed(msgspec.Struct, array_like=True):
    """What a device last reported, as far as the rollout cares."""

    online: bool = False
    config_hash: str | None = None
    health: str = "ok"
    metrics: dict[str, float] = {}


class Desired(msgspec.Struct, frozen=True, array_like=True, gc=False):
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
    windows: dict[str, tuple[Window, ...]] = {}  # site -> maintenance windows (none: always open)
    device_windows: dict[str, tuple[Window, ...]] = {}  # device -> its own (label), instead of its site's
    # legacy config hash -> RFC 8785 hash of every snapshot's effective configs (shared.configs.hash_aliases):
    # a rollout started before the rule changed still sees its devices converge (docs/decisions.md)
    hash_aliases: dict[str, str] = {}


# --- state --------------------------------------------------------------------------------------


class Assignment(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """When a device must have applied (its apply timeout), in which wave, and what it had before;
    `left`: where it stood when a later rollout (or another desired state) took it ("": still
    this rollout's; one short interned string per device, so a fleet of 100,000 costs nothing
    more); `restored`: a rollback gave it back what it had."""

    wave: int
    deadline: datetime
    previous: tuple[str, str] | None = None
    left: str = ""
    restored: bool = False


class SnapshotView(Protocol):
    """What starting a rollout needs to know of its snapshot (`fleet_index.SnapshotInfo` is one)."""

    retired: bool

    def hash_for_site(self, site: str) -> str:
        """The config hash of the snapshot's effective config at `site`."""
        ...


class Rollout(msgspec.Struct, frozen=True):
    """One rollout's state: an immutable value, like every aggregate's (`evolve` returns a new
    one). Its per-device bookkeeping is a `Ledger` indexed by plan position, so a new version
    shares all but the blocks a chunk touched with the one before (see `ledger`)."""

    rollout_id: str
    status: str = "new"  # new running paused completed aborted rolling_back rolled_back
    phase: str = "assigning"  # assigning baking held gate_failed
    spec: RolloutStarted | None = None
    waves: tuple[tuple[str, ...], ...] = ()
    parts: tuple[RolloutWavePlanned, ...] = ()  # the plan's parts so far, until its first wave starts
    # device -> its position in the plan (waves in order), built once when the first wave starts
    # and never changed after: the index into `ledger`.
    positions: Mapping[str, int] = {}
    ledger: Ledger[Assignment] = Ledger()
    wave: int = 0
    bake_until: str | None = None
    last_gate: RolloutGateEvaluated | None = None
    rollback: RolloutRollbackStarted | None = None
    reason: str = ""
    waiting: RolloutWaveWaiting | None = None  # sites whose closed windows hold devices back
    windows_ignored: bool = False  # an operator said so after the start (RolloutWindowsIgnored)
    gate_history: tuple[RolloutGateEvaluated, ...] = ()  # every verdict, in order (for what-if)

    @property
    def devices(self) -> Iterator[str]:
        """Every device of the plan, wave by wave."""
        return chain.from_iterable(self.waves)

    @property
    def planned(self) -> int:
        """How many devices the plan holds."""
        return sum(map(len, self.waves))

    @property
    def active(self) -> bool:
        """Does this rollout still hold its devices (blocks other rollouts on them)?"""
        return self.status in ACTIVE

    @property
    def assigned(self) -> Assigned:
        """The devices this rollout has assigned so far, with their assignments (plan order)."""
        return Assigned(self)

    def wave_assignments(self, wave: int) -> Iterator[tuple[str, Assignment | None]]:
        """Each device of `wave` with its assignment (None: not assigned yet)."""
        start = sum(map(len, self.waves[:wave]))
        devices = self.waves[wave]
        if not self.ledger.size:  # the plan is not closed yet (its first wave has not started): nothing assigned
            return ((device, None) for device in devices)
        return zip(devices, self.ledger.values(start, start + len(devices)), strict=True)


class Assigned(Mapping[str, Assignment]):
    """A rollout's assigned devices as a read-only mapping over its ledger."""

    __slots__ = ("_rollout",)

    def __init__(self, rollout: Rollout) -> None:
        self._rollout = rollout

    def __getitem__(self, device: str) -> Assignment:
        position = self._rollout.positions.get(device)
        assignment = self._rollout.ledger[position] if position is not None else None
        if assignment is None:
            raise KeyError(device)
        return assignment

    def __iter__(self) -> Iterator[str]:
        return (device for device, _ in self.items())

    def __len__(self) -> int:
        return self._rollout.ledger.filled

    def items(self) -> Iterator[tuple[str, Assignment]]:  # type: ignore[override]  # an iterator, not a view: one pass over the ledger
        pairs = zip(self._rollout.devices, self._rollout.ledger, strict=False)  # no ledger before the plan closes
        return ((device, a) for device, a in pairs if a is not None)


def initial(rollout_id: str) -> Rollout:
    """A rollout that has not started."""
    return Rollout(rollout_id)


def evolve(state: Rollout, event: Event) -> Rollout:
    """The rollout after one of its events (a new value: `state` is left as it was)."""
    change = msgspec.structs.replace
    match event:
        case RolloutStarted():
            return change(state, status="running", spec=event, waves=tuple(() for _ in event.wave_sizes),
                          wave=0, phase="assigning")
        case RolloutWavePlanned():
            # Gathered until the first wave starts (the same atomic batch); none comes after.
            return state if state.positions else change(state, parts=(*state.parts, event))
        case RolloutWaveStarted():
            planned = state if state.positions else _close_plan(state)
            return change(planned, wave=event.wave, phase="assigning", bake_until=None, waiting=None)
        case RolloutWaveWaiting():
            return change(state, waiting=event if event.opens else None)
        case RolloutWindowsIgnored():
            return change(state, windows_ignored=True, waiting=None)
        case RolloutDevicesAssigned():
            assert state.spec is not None
            deadline = parse_time(event.at) + timedelta(seconds=state.spec.apply_timeout_seconds)
            assigned = []
            for device in event.devices:
                position = state.positions.get(device)
                if position is not None:  # always: a rollout assigns only devices of its plan
                    prev = event.previous.get(device)
                    assigned.append((position, Assignment(event.wave, deadline, (prev[0], prev[1]) if prev else None)))
            return change(state, ledger=state.ledger.updated(assigned))
        case RolloutWaveBaking():
            return change(state, phase="baking", bake_until=event.until)
        case RolloutGateEvaluated():
            return change(state, last_gate=event, gate_history=(*state.gate_history, event),
                          phase=state.phase if event.passed else "gate_failed")
        case RolloutWaveHeld():
            return change(state, phase="held")
        case RolloutPromoted():
            return change(state, phase="promoted")
        case RolloutPaused():
            # A paused rollout waits for its operator, not for windows; resuming records the wait again.
            return change(state, status="paused", reason=event.reason, waiting=None)
        case RolloutResumed():
            return change(state, status="running")
        case RolloutAborted():
            return change(state, status="aborted", reason=event.reason)
        case RolloutRollbackStarted():
            return change(state, status="rolling_back", rollback=event, reason=event.reason, waiting=None)
        case RolloutDevicesRestored():
            positions = [p for p in map(state.positions.get, event.devices) if p is not None]
            return change(state, ledger=state.ledger.changed(positions, _restored))
        case RolloutRolledBack():
            return change(state, status="rolled_back")
        case RolloutCompleted():
            return change(state, status="completed")
    return state


def _restored(_: int, assignment: Assignment) -> Assignment:
    return msgspec.structs.replace(assignment, restored=True)


def _close_plan(state: Rollout) -> Rollout:
    """The plan is whole when its first wave starts: the waves are built once from the gathered
    parts (no wave is copied per part), indexed, and the ledger opened for every planned device."""
    assert state.spec is not None
    waves = tuple(tuple(chain.from_iterable(part.devices for part in state.parts if part.wave == wave))
                  for wave in range(len(state.spec.wave_sizes)))
    devices = tuple(chain.from_iterable(waves))
    positions = dict(zip(devices, range(len(devices)), strict=True))
    return msgspec.structs.replace(state, waves=waves, parts=(), positions=positions, ledger=Ledger.empty(len(devices)))


# --- planning -----------------------------------------------------------------------------------


def plan_waves(
    rollout_id: str, devices: Mapping[str, str], canary: Canary | None, percents: Sequence[int]
) -> list[list[str]]:
    """Wave membership (wave 0 is the canary when there is one); empty waves are dropped."""
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{rollout_id}:{d}".encode()).digest())
    if canary is not None and canary.sites is not None:
        first = [d for d in order if devices[d] in canary.sites]
        rest = [d for d in order if devices[d] not in canary.sites]
    else:
        size = canary.size(len(order)) if canary is not None else 0
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
    snapshot: SnapshotView | None,
    devices: Mapping[str, str],
    others: Iterable[Rollout] = (),
    canary: Canary | None,
    percents: Sequence[int],
    max_in_flight: int,
    bake_seconds: float,
    max_in_flight_percent: float = 0.0,
    apply_timeout_seconds: float,
    gates: Gates,
    on_failure: str,
    approve_after: Sequence[int],
    state: Rollout,
    not_before: datetime | None = None,
    ignore_windows: bool = False,
    rollback_in_windows: bool = False,
) -> list[Event]:
    """Events that start a rollout of `snapshot` (None: it does not exist) to `devices` (the
    target's active devices, with their sites): the spec, with each site's config hash, and the
    recorded wave plan. A device may be in one active rollout at a time: `others` are the other
    rollouts, and one holding a target device refuses the start."""
    if snapshot is None:
        raise NotFound(f"snapshot {snapshot_id} does not exist", field="snapshot_id")
    if snapshot.retired:
        raise Invalid(f"snapshot {snapshot_id} is retired and cannot be rolled out", field="snapshot_id")
    if state.status != "new":
        raise Conflict(f"rollout {rollout_id} already exists ({state.status})", field="rollout_id")
    if not devices:
        raise Invalid(f"the target {target!r} matches no active device", field="target")
    busy = sorted({d for other in others if other.active for d in other.devices if d in devices})
    if busy:
        shown = ", ".join(busy[:10]) + (f" and {len(busy) - 10} more" if len(busy) > 10 else "")
        raise Conflict(f"{len(busy)} target devices are already in an active rollout: {shown}", field="target")
    if on_failure not in ("pause", "rollback"):
        raise Invalid("on_failure must be pause or rollback", field="on_failure")
    if not 1 <= max_in_flight <= MAX_IN_FLIGHT_MAX:
        raise Invalid(f"max_in_flight must be 1 to {MAX_IN_FLIGHT_MAX:,}", field="max_in_flight")
    if not 0 <= max_in_flight_percent <= 100:
        raise Invalid("max_in_flight_percent must be 0 to 100", field="max_in_flight_percent")
    if canary is not None and canary.sites is not None:
        missing = [s for s in canary.sites if s not in set(devices.values())]
        if missing:
            raise Invalid(f"canary sites {missing} have no device in the target", field="canary")
    waves = plan_waves(rollout_id, devices, canary, percents)
    events: list[Event] = [RolloutStarted(
        rollout_id=rollout_id, snapshot_id=snapshot_id, target=target, canary=canary.text() if canary else "",
        wave_percents=list(percents), wave_sizes=[len(w) for w in waves],
        max_in_flight=max_in_flight, max_in_flight_percent=max_in_flight_percent, bake_seconds=bake_seconds,
        apply_timeout_seconds=apply_timeout_seconds, gates=gates, on_failure=on_failure,
        approve_after=sorted(set(approve_after)),
        config_hashes={site: snapshot.hash_for_site(site) for site in sorted(set(devices.values()))},
        not_before=format_time(not_before) if not_before is not None else None,
        ignore_windows=ignore_windows, rollback_in_windows=rollback_in_windows,
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
        raise NotFound(f"rollout {state.rollout_id} does not exist", field="rollout_id")
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


def ignore_windows(state: Rollout, reason: str = "") -> list[Event]:
    """Emergency: assign from now on regardless of maintenance windows (a no-op when already so)."""
    spec = _require_started(state)
    if state.status not in ACTIVE:
        raise Conflict(f"rollout {state.rollout_id} is {state.status}; windows matter only to an active rollout",
                       field="rollout_id")
    if spec.ignore_windows or state.windows_ignored:
        return []
    return [RolloutWindowsIgnored(rollout_id=state.rollout_id, reason=reason or "windows ignored by operator")]


def rollback_plan(
    state: Rollout, to_snapshot_id: str | None = None, to_hashes: Mapping[str, str] | None = None,
    site_of: Mapping[str, str] | None = None,
) -> list[tuple[str, str | None, str | None]]:
    """(device, snapshot to restore, config hash to restore) for every touched device, in the
    order of the plan (the order they are restored in); None when the device had nothing before
    this rollout and no target snapshot was given (left as is)."""
    plan: list[tuple[str, str | None, str | None]] = []
    for device, assignment in state.assigned.items():
        if to_snapshot_id is not None:
            site = (site_of or {}).get(device, "")
            plan.append((device, to_snapshot_id, (to_hashes or {}).get(site)))
        else:
            previous = assignment.previous
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
    """pending | in_flight | converged | failed | timed_out | restored, for one planned device.
    A device a later rollout took counts as it stood then (`taken`), whatever it reports now."""
    return status_of(state, device, state.assigned.get(device), view, now)


def status_of(state: Rollout, device: str, assignment: Assignment | None, view: FleetView, now: datetime) -> str:
    """`device_status` of a device whose assignment the caller has at hand (`wave_assignments`)."""
    if state.spec is None or assignment is None:
        return "pending"
    if assignment.left:
        return assignment.left
    if assignment.restored:
        return "restored"
    return _judge_device(state, device, assignment, view, now)


def _judge_device(state: Rollout, device: str, assignment: Assignment, view: FleetView, now: datetime) -> str:
    """converged | failed | in_flight | timed_out from what the device reports now."""
    assert state.spec is not None
    spec = state.spec
    observed = view.observed.get(device)
    wanted = current_hash(view.hash_aliases, spec.config_hashes.get(view.site_of.get(device, "")))
    if observed is not None and observed.config_hash is not None and observed.config_hash == wanted:
        return "failed" if observed.health == "failed" else "converged"
    if observed is not None and observed.health == "failed":
        return "failed"
    return "timed_out" if now >= assignment.deadline else "in_flight"


def taken_from(before: Desired | None, event: DesiredStateAssigned) -> str | None:
    """The rollout whose desired state `event` replaces on its device (None: no rollout's, or the
    same rollout's own — its rollback restoring the device)."""
    if before is None or before.rollout_id is None or before.rollout_id == event.rollout_id:
        return None
    return before.rollout_id


def taken(state: Rollout, devices: Iterable[str], view: FleetView) -> Rollout:
    """Another desired state (a later rollout's, or another rollout's rollback) replaced this
    rollout's on `devices`: from now on each counts here as it stood at that moment (converged,
    failed or restored stay so; one still in flight timed out), as the fleet read model counts it
    (`projections.fleet.model.put_device`). Returns the new state (one version for all of them)."""
    device_at = {position: device for device in devices if (position := state.positions.get(device)) is not None}
    if state.spec is None or not device_at:
        return state

    def leave(position: int, assignment: Assignment) -> Assignment:
        if assignment.left:
            return assignment
        # as it stood at its deadline: whatever has not converged or failed by now has timed out
        return msgspec.structs.replace(
            assignment, left=sys.intern(status_of(state, device_at[position], assignment, view, assignment.deadline)))

    return msgspec.structs.replace(state, ledger=state.ledger.changed(device_at, leave))


def in_flight_rule(count: int, percent: float | None) -> tuple[int, float]:
    """(max_in_flight, max_in_flight_percent) a start records from what the operator gave: a
    count (0: none given), a share of each wave, both (the share, with the count as its floor),
    or neither (the default rule: DEFAULT_IN_FLIGHT and DEFAULT_IN_FLIGHT_PERCENT)."""
    if percent is not None:
        if not 0 < percent <= 100:
            raise Invalid(f"max_in_flight share must be above 0% and at most 100%, got {percent}%",
                          field="max_in_flight_percent")
        return max(count, 1), percent
    if count > 0:
        return count, 0.0
    if count < 0:
        raise Invalid(f"max_in_flight must be 1 to {MAX_IN_FLIGHT_MAX:,}", field="max_in_flight")
    return DEFAULT_IN_FLIGHT, DEFAULT_IN_FLIGHT_PERCENT


def in_flight_limit(spec: RolloutStarted, wave_size: int) -> int:
    """How many devices of a wave of `wave_size` may be in flight at once."""
    share = math.ceil(wave_size * spec.max_in_flight_percent / 100) if spec.max_in_flight_percent else 0
    return max(spec.max_in_flight, share, 1)


def tick(state: Rollout, view: FleetView, now: datetime) -> list[Event]:
    """What the rollout does next, given the time and what devices report."""
    if state.status == "rolling_back":
        return _restore(state, view, now)
    if state.status != "running" or state.spec is None:
        return []
    spec = state.spec
    if spec.not_before is not None and now < parse_time(spec.not_before):
        return []  # a scheduled start: the plan is recorded, nothing is assigned yet
    if state.phase == "assigning":
        statuses = [(d, status_of(state, d, a, view, now)) for d, a in state.wave_assignments(state.wave)]
        in_flight = sum(1 for _, s in statuses if s == "in_flight")
        pending = [d for d, s in statuses if s == "pending"]
        ready, events = _inside_windows(state, pending, view, now, spec.ignore_windows or state.windows_ignored)
        if ready:
            room = in_flight_limit(spec, len(state.waves[state.wave])) - in_flight
            return events + (_assign(state, ready[:room], view, now) if room > 0 else [])
        if pending:  # every device left waits for its site's window
            return events
        if in_flight == 0:
            until = now + timedelta(seconds=spec.bake_seconds)
            return [*events, RolloutWaveBaking(rollout_id=state.rollout_id, wave=state.wave,
                                               until=format_time(until))]
        return events
    if state.phase == "baking" and state.bake_until is not None and now >= parse_time(state.bake_until):
        verdict = evaluate_gate(state, view, now)
        if verdict.passed:
            if state.wave in spec.approve_after and state.wave < len(state.waves) - 1:
                return [verdict, RolloutWaveHeld(rollout_id=state.rollout_id, wave=state.wave)]
            return [verdict, *_advance(state)]
        reason = f"gate failed on wave {state.wave + 1}: " + "; ".join(verdict.reasons)
        if spec.on_failure == "rollback":
            return [verdict, *rollback(evolve(state, verdict), reason=reason)]
        return [verdict, RolloutPaused(rollout_id=state.rollout_id, reason=reason)]
    return []


def windows_of(view: FleetView, device: str) -> tuple[Window, ...]:
    """A device's maintenance windows: its own (`maintenance-window` label), else its site's."""
    own = view.device_windows.get(device)
    return own if own is not None else view.windows.get(view.site_of.get(device, ""), ())


def _inside_windows(state: Rollout, devices: list[str], view: FleetView, now: datetime, ignore: bool,
                    ) -> tuple[list[str], list[Event]]:
    """The devices whose sites are open now, and a RolloutWaveWaiting when the set of closed sites
    holding devices back differs from the one recorded (an empty one when the wait is over)."""
    if ignore:
        over = state.waiting is not None
        return devices, [RolloutWaveWaiting(rollout_id=state.rollout_id, wave=state.wave)] if over else []
    open_now: dict[str | tuple[Window, ...], bool] = {}  # per site, or per device's own windows
    ready: list[str] = []
    held: dict[str, set[tuple[Window, ...]]] = {}  # site -> the closed windows holding its devices back
    for device in devices:
        site = view.site_of.get(device, "")
        own = view.device_windows.get(device) if view.device_windows else None
        key = site if own is None else own
        if key not in open_now:
            open_now[key] = is_open(own if own is not None else view.windows.get(site, ()), now)
        if open_now[key]:
            ready.append(device)
        else:
            held.setdefault(site, set()).add(own if own is not None else view.windows.get(site, ()))
    recorded = set(state.waiting.opens) if state.waiting is not None else set()
    if set(held) == recorded:
        return ready, []
    opens = {}
    for site in sorted(held):
        moments = [m for w in held[site] if (m := next_open(w, now)) is not None]
        opens[site] = format_time(min(moments)) if moments else ""
    return ready, [RolloutWaveWaiting(rollout_id=state.rollout_id, wave=state.wave, opens=opens)]


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


def _restore(state: Rollout, view: FleetView, now: datetime) -> list[Event]:
    assert state.rollback is not None
    assert state.spec is not None
    target = state.rollback
    pending = [d for d, assignment in state.assigned.items() if not assignment.restored]
    # Rollbacks ignore maintenance windows unless the rollout was started to respect them there too.
    ignore = state.spec.ignore_windows or state.windows_ignored or not state.spec.rollback_in_windows
    todo, events = _inside_windows(state, pending, view, now, ignore)
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
    if len(todo) == len(pending):
        events.append(RolloutRolledBack(rollout_id=state.rollout_id))
    return events


# --- schedule (dry run) ---------------------------------------------------------------------------


def expected_schedule(state: Rollout, view: FleetView, now: datetime, *,
                      round_seconds: float = 0.0, commit_rate: float | None = None) -> list[dict[str, Any]]:
    """When each wave is expected to run given its sites' maintenance windows: it starts when the
    first of its sites is open (not before the previous wave's bake ends, nor `not_before`), has
    every site open by `all_sites_open`, is assigned in `rounds` of up to its in-flight limit, each
    taking `round_seconds` (the devices apply and report) plus committing the wave at
    `commit_rate` per second (None: not counted), and bakes until `bake_ends`. A window that
    closes mid-wave is not modelled (an estimate, not a promise); a site that does not open within
    8 days makes that wave and the ones after it unknown (None)."""
    spec = state.spec
    assert spec is not None
    moment: datetime | None = max(now, parse_time(spec.not_before)) if spec.not_before else now
    schedule: list[dict[str, Any]] = []
    for number, wave in enumerate(state.waves):
        entry: dict[str, Any] = {"wave": number, "starts": None, "all_sites_open": None, "bake_ends": None}
        if moment is not None:
            after = moment
            opens = [after if spec.ignore_windows else next_open(windows, after)
                     for windows in {windows_of(view, d) for d in wave}]
            known = [o for o in opens if o is not None]
            moment = max(known) if known and len(known) == len(opens) else None
            entry["starts"] = format_time(min(known)) if known else None
            limit = in_flight_limit(spec, len(wave))
            entry["in_flight"], entry["rounds"] = limit, math.ceil(len(wave) / limit)
            if moment is not None:
                entry["all_sites_open"] = format_time(moment)
                committing = len(wave) / commit_rate if commit_rate else 0.0
                moment += timedelta(seconds=entry["rounds"] * round_seconds + committing)
                entry["assigned_by"] = format_time(moment)
                moment += timedelta(seconds=spec.bake_seconds)
                entry["bake_ends"] = format_time(moment)
        schedule.append(entry)
    return schedule


# --- gates --------------------------------------------------------------------------------------


MAX_DISTRIBUTIONS = 32  # metrics whose distribution a gate event records (gated ones always)
EXACT_UP_TO = 100  # a distribution keeps every value up to this many, else p1..p100


def percentile(values: Sequence[float], aggregate: str) -> float:
    """Nearest-rank percentile, or avg/max/min."""
    return aggregate_of(distribution(values), aggregate)


def distribution(values: Sequence[float]) -> MetricDistribution:
    """What a gate event records of one metric's values (see MetricDistribution)."""
    ordered = sorted(values)
    count = len(ordered)
    kept = ordered if count <= EXACT_UP_TO else [ordered[math.ceil(k / 100 * count) - 1] for k in range(1, 101)]
    return MetricDistribution(count=count, sum=sum(ordered), min=ordered[0], values=kept)


def aggregate_of(dist: MetricDistribution, aggregate: str) -> float:
    """avg, max, min or a nearest-rank percentile `pN` of a recorded distribution."""
    if aggregate == "avg":
        return dist.sum / dist.count
    if aggregate == "max":
        return dist.values[-1]
    if aggregate == "min":
        return dist.min
    k = int(aggregate[1:])
    if len(dist.values) == dist.count:  # every value kept
        return dist.values[max(math.ceil(k / 100 * dist.count), 1) - 1]
    return dist.values[k - 1]


def _holds(value: float, gate: MetricGate) -> bool:
    return {"<=": value <= gate.threshold, "<": value < gate.threshold,
            ">=": value >= gate.threshold, ">": value > gate.threshold}[gate.op]


class Verdict(msgspec.Struct, frozen=True):
    """A gate's judgement of its inputs: passed only when no rule failed and none was unknown;
    `unknown` names the rules the inputs cannot decide (an old event without distributions)."""

    reasons: list[str]
    metrics: dict[str, float]
    unknown: list[str] = []

    @property
    def passed(self) -> bool | None:
        """True, False, or None when no rule failed but some could not be judged."""
        if self.reasons:
            return False
        return None if self.unknown else True


def judge(inputs: GateInputs, gates: Gates) -> Verdict:
    """Hold recorded gate inputs to `gates`: the one definition of every gate rule, used when a
    wave's bake ends and again by what-if on the inputs recorded in the log."""
    total = inputs.devices
    reasons: list[str] = []
    unknown: list[str] = []
    if inputs.healthy / total < gates.min_healthy:
        reasons.append(f"healthy {inputs.healthy}/{total} < {gates.min_healthy:.0%}")
    if inputs.failed / total > gates.max_failed:
        reasons.append(f"failed {inputs.failed}/{total} > {gates.max_failed:.0%}")
    if inputs.offline / total > gates.max_offline:
        reasons.append(f"offline {inputs.offline}/{total} > {gates.max_offline:.0%}")
    metrics: dict[str, float] = {}
    for gate in gates.metrics:
        key = f"{gate.metric} {gate.aggregate}"
        dist = inputs.distributions.get(gate.metric)
        if dist is not None and dist.count:
            value = aggregate_of(dist, gate.aggregate)
        elif not inputs.distributions_recorded and key in inputs.metrics:
            value = inputs.metrics[key]  # an older event: only the aggregates it was gated on
        elif inputs.distributions_recorded and gate.metric not in inputs.distributions:
            reasons.append(f"{key}: no device reported {gate.metric}")
            continue
        else:
            unknown.append(f"{key}: not recorded (the gate event predates recorded distributions)")
            continue
        metrics[key] = value
        if not _holds(value, gate):
            reasons.append(f"{key} = {value:g}, wanted {gate.op} {gate.threshold:g}")
    return Verdict(reasons, metrics, unknown)


def evaluate_gate(state: Rollout, view: FleetView, now: datetime) -> RolloutGateEvaluated:
    """The verdict on the current wave's devices, with every input recorded."""
    spec = state.spec
    assert spec is not None
    wave = state.waves[state.wave]
    counts: dict[str, Any] = dict.fromkeys(("healthy", "converged", "failed", "timed_out", "offline", "degraded"), 0)
    samples: dict[str, list[float]] = {}
    for device, assignment in state.wave_assignments(state.wave):
        status = status_of(state, device, assignment, view, now)
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
    gates = spec.gates
    gated = [g.metric for g in gates.metrics if g.metric in samples]
    kept = list(dict.fromkeys([*gated, *sorted(samples)]))[:max(MAX_DISTRIBUTIONS, len(gated))]
    inputs = GateInputs(devices=len(wave), distributions={m: distribution(samples[m]) for m in kept},
                        distributions_recorded=True, **counts)
    verdict = judge(inputs, gates)
    return RolloutGateEvaluated(rollout_id=state.rollout_id, wave=state.wave, passed=not verdict.reasons,
                                inputs=msgspec.structs.replace(inputs, metrics=verdict.metrics),
                                gates=gates, reasons=verdict.reasons)
