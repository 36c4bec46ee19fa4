"""The drift service's device state machine, pure: worked examples of each rule, and hypothesis
runs of random heartbeat/time/desired-state sequences checked against invariants and against a
replay of the events they produced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.drift.domain import (
    OUT_OF_ORDER,
    RETIRED_DEVICE,
    SITE_MISMATCH,
    UNKNOWN_DEVICE,
    AcknowledgeDrift,
    Beat,
    DesiredChanged,
    DeviceState,
    ForceReconcile,
    Policy,
    Retired,
    Tick,
    decide,
    evolve,
    initial,
    observe,
    partition_of,
    reject,
    resume,
    steady,
    tick_due,
)
from shared.devices import Health, Heartbeat
from shared.envelope import Event
from shared.errors import Conflict, NotFound
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import (
    DeviceCameOnline,
    DeviceStuck,
    DeviceWentOffline,
    DriftAcknowledged,
    DriftBegan,
    DriftEnded,
    ReconcileAttempted,
    ReconcileForced,
)
from shared.events.registry import DeviceAdded, DeviceRetired
from shared.times import parse_time

POLICY = Policy(interval=10.0, offline_after=3, drift_grace=60.0, reconcile_backoff=5.0, reconcile_max_tries=3)
T0 = 1_800_000_000.0
_VOLATILE = {"last_seen", "last_seq", "mismatch_since", "seen", "flips"}


def hb(seq: int, snapshot: str | None = "s1", digest: str | None = "h1", health: str = "ok",
       site: str = "site-a") -> Heartbeat:
    return Heartbeat(device_id="d1", site=site, seq=seq, at="2027-01-01T00:00:00Z", snapshot_id=snapshot,
                     config_hash=digest, health=cast(Health, health))  # the tests pass only Health values


def registered(desired: tuple[str, str] | None = ("s1", "h1")) -> DeviceState:
    state = evolve(initial("d1"), DeviceAdded(device_id="d1", site_id="site-a"))
    if desired:
        state = evolve(state, DesiredStateAssigned(device_id="d1", site_id="site-a", snapshot_id=desired[0],
                                                   config_hash=desired[1], revision=1))
    return state


def step(state: DeviceState, command: Any, now: float) -> tuple[DeviceState, list[Event]]:
    events = decide(state, command, now, POLICY)
    for event in events:
        state = evolve(state, event)
    if isinstance(command, Beat):
        state = observe(state, command.heartbeat, now)
    return state, list(events)


def names(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- worked examples ------------------------------------------------------------------------------


def test_reject_reasons() -> None:
    assert reject(initial("d1"), hb(1)) == UNKNOWN_DEVICE
    state = registered()
    assert reject(state, hb(1, site="elsewhere")) == SITE_MISMATCH
    assert reject(evolve(state, DeviceRetired(device_id="d1")), hb(1)) == RETIRED_DEVICE
    state, _ = step(state, Beat(hb(5)), T0)
    assert reject(state, hb(5)) == OUT_OF_ORDER
    assert reject(state, hb(4)) == OUT_OF_ORDER
    assert reject(state, hb(6)) is None


def test_online_changes_and_offline_after_the_window() -> None:
    state, events = step(registered(), Beat(hb(1)), T0)
    assert names(events) == ["DeviceCameOnline"]
    state, events = step(state, Beat(hb(2)), T0 + 10)
    assert events == []  # nothing changed: no event
    state, events = step(state, Beat(hb(3, health="degraded")), T0 + 20)
    assert names(events) == ["DeviceHealthChanged"]
    state, events = step(state, Tick(), T0 + 20 + POLICY.offline_window)
    assert events == []  # exactly at the window: not yet
    state, events = step(state, Tick(), T0 + 20.001 + POLICY.offline_window)
    assert names(events) == ["DeviceWentOffline"]
    assert isinstance(events[0], DeviceWentOffline)
    assert parse_time(events[0].last_seen).timestamp() == T0 + 20
    state, events = step(state, Tick(), T0 + 500)
    assert events == []
    state, events = step(state, Beat(hb(1)), T0 + 600)  # seq restarts after offline: accepted
    assert names(events) == ["DeviceCameOnline"]


def test_drift_grace_reconcile_backoff_and_stuck() -> None:
    state, _ = step(registered(), Beat(hb(1, digest="other")), T0)
    state, events = step(state, Beat(hb(2, digest="other")), T0 + 59)
    assert events == []  # within the grace period
    state, events = step(state, Tick(), T0 + 60)
    assert names(events) == ["DriftBegan", "ReconcileAttempted"]
    attempt = events[1]
    assert isinstance(attempt, ReconcileAttempted)
    assert (attempt.attempt, attempt.revision) == (1, 2)
    assert parse_time(attempt.retry_at or "").timestamp() == T0 + 65
    state, events = step(state, Beat(hb(3, digest="other")), T0 + 64)
    assert events == []
    state, events = step(state, Beat(hb(4, digest="other")), T0 + 65)
    assert names(events) == ["ReconcileAttempted"]
    assert isinstance(events[0], ReconcileAttempted) and events[0].retry_at is not None
    assert parse_time(events[0].retry_at).timestamp() == T0 + 75
    state, events = step(state, Beat(hb(5, digest="other")), T0 + 75)
    assert isinstance(events[0], ReconcileAttempted) and events[0].retry_at is not None
    assert parse_time(events[0].retry_at).timestamp() == T0 + 95
    state, events = step(state, Beat(hb(6, digest="other")), T0 + 95)
    assert names(events) == ["DeviceStuck"]
    for later in (100, 200, 1000):
        state, events = step(state, Beat(hb(int(later), digest="other")), T0 + later)
        assert events == []
    state, events = step(state, Beat(hb(2000)), T0 + 1001)
    assert names(events) == ["DeviceReportedState", "DriftEnded"]
    ended = events[1]
    assert isinstance(ended, DriftEnded)
    assert (ended.resolution, ended.duration_seconds) == ("converged", 1001.0)
    assert not state.stuck and state.attempts == 0


def test_desired_change_ends_drift_and_clears_stuck() -> None:
    state, _ = step(registered(), Beat(hb(1, digest="other")), T0)
    for i, t in enumerate((60, 65, 75, 95), 2):
        state, _ = step(state, Beat(hb(i, digest="other")), T0 + t)
    assert state.stuck
    state = evolve(state, DesiredStateAssigned(device_id="d1", site_id="site-a", snapshot_id="s2",
                                               config_hash="h2", revision=7))
    state, events = step(state, DesiredChanged(), T0 + 100)
    assert isinstance(events[0], DriftEnded)
    assert names(events) == ["DriftEnded"] and events[0].resolution == "desired_changed"
    assert not state.stuck and not state.drifted
    state, events = step(state, Beat(hb(10, snapshot="s2", digest="h2")), T0 + 101)
    assert names(events) == ["DeviceReportedState"]
    state, events = step(state, Retired(), T0 + 102)
    assert events == []


def test_forced_reconcile_starts_the_tries_over() -> None:
    with pytest.raises(NotFound):
        decide(initial("d1"), ForceReconcile(), T0, POLICY)
    state, _ = step(registered(), Beat(hb(1)), T0)
    with pytest.raises(Conflict, match="not drifted"):
        decide(state, ForceReconcile(), T0, POLICY)
    state, _ = step(registered(), Beat(hb(1, digest="other")), T0)
    for i, t in enumerate((60, 65, 75, 95), 2):
        state, _ = step(state, Beat(hb(i, digest="other")), T0 + t)
    assert state.stuck
    state, events = step(state, ForceReconcile("disk replaced"), T0 + 100)
    assert names(events) == ["ReconcileForced"] and not state.stuck and state.attempts == 0
    state, events = step(state, Tick(), T0 + 100)
    assert isinstance(events[0], ReconcileAttempted)
    assert names(events) == ["ReconcileAttempted"] and events[0].attempt == 1
    with pytest.raises(Conflict, match="retired"):
        decide(evolve(state, DeviceRetired(device_id="d1")), ForceReconcile(), T0, POLICY)


def test_an_acknowledged_drift_is_left_alone_until_it_ends() -> None:
    with pytest.raises(NotFound):
        decide(initial("d1"), AcknowledgeDrift(), T0, POLICY)
    state, _ = step(registered(), Beat(hb(1)), T0)
    with pytest.raises(Conflict, match="not drifted: nothing to acknowledge"):
        decide(state, AcknowledgeDrift(), T0, POLICY)
    state, _ = step(registered(), Beat(hb(1, digest="other")), T0)
    state, events = step(state, Beat(hb(2, digest="other")), T0 + 60)
    assert names(events) == ["DriftBegan", "ReconcileAttempted"]
    state, events = step(state, AcknowledgeDrift("hotfix by the field engineer"), T0 + 61)
    assert names(events) == ["DriftAcknowledged"] and state.acknowledged
    with pytest.raises(Conflict, match="already acknowledged"):
        decide(state, AcknowledgeDrift(), T0 + 61, POLICY)
    for i, t in enumerate((70, 100, 200, 400), 3):  # well past every retry and the try limit
        state, events = step(state, Beat(hb(i, digest="other")), T0 + t)
        assert events == [] and not state.stuck
    state, events = step(state, ForceReconcile("now fix it"), T0 + 401)
    assert names(events) == ["ReconcileForced"] and not state.acknowledged
    state, events = step(state, Tick(), T0 + 401)
    assert names(events) == ["ReconcileAttempted"]
    state, _ = step(state, AcknowledgeDrift(), T0 + 402)
    state, events = step(state, Beat(hb(7)), T0 + 403)  # back to what it should run
    assert names(events)[-1] == "DriftEnded" and not state.acknowledged


def test_restart_gives_a_full_window_and_a_fresh_grace() -> None:
    state, _ = step(registered(), Beat(hb(1, digest="other")), T0)
    rebuilt = DeviceState(**{f: getattr(state, f) for f in state.__struct_fields__ if f not in _VOLATILE})
    resumed = resume(rebuilt, T0 + 1000)
    _, events = step(resumed, Tick(), T0 + 1000 + POLICY.offline_window)
    assert events == []
    _, events = step(resumed, Tick(), T0 + 1000 + POLICY.offline_window + 1)
    assert names(events) == ["DeviceWentOffline"]
    assert resumed.mismatch_since == T0 + 1000


# --- properties -----------------------------------------------------------------------------------

SNAPSHOTS = [None, "s1", "s2"]
HASHES = [None, "h1", "h2", "tampered"]
heartbeats = st.tuples(st.just("beat"), st.sampled_from(SNAPSHOTS), st.sampled_from(HASHES),
                       st.sampled_from(["ok", "ok", "degraded", "failed"]), st.floats(0, 40))
ticks = st.tuples(st.just("tick"), st.floats(0, 60))
desires = st.tuples(st.just("desire"), st.sampled_from(["s1", "s2"]), st.sampled_from(["h1", "h2"]))
operators = st.tuples(st.sampled_from(["ack", "force"]))
steps = st.lists(st.one_of(heartbeats, heartbeats, ticks, desires, operators), max_size=60)


def run(commands: list[tuple[Any, ...]]) -> tuple[DeviceState, list[tuple[float, Event]]]:
    """Drive the machine the way the service does; return the state and the log it wrote."""
    state = initial("d1")
    log: list[tuple[float, Event]] = []
    now, seq, revision = T0, 0, 0
    first: list[Event] = [DeviceAdded(device_id="d1", site_id="site-a")]
    for event in first:
        state = evolve(state, event)
        log.append((now, event))
    for command in commands:
        kind = command[0]
        if kind == "beat":
            _, snapshot, digest, health, dt = command
            now += dt
            seq += 1
            beat = hb(seq, snapshot, digest, health)
            assert reject(state, beat) is None
            state, events = step(state, Beat(beat), now)
        elif kind == "tick":
            now += command[1]
            state, events = step(state, Tick(), now)
        elif kind in ("ack", "force"):
            operation = AcknowledgeDrift("seen") if kind == "ack" else ForceReconcile("again")
            if not state.drifted or (kind == "ack" and state.acknowledged):
                with pytest.raises(Conflict):
                    decide(state, operation, now, POLICY)
                continue
            state, events = step(state, operation, now)
        else:
            revision += 1
            assigned = DesiredStateAssigned(device_id="d1", site_id="site-a", snapshot_id=command[1],
                                            config_hash=command[2], revision=revision)
            state = evolve(state, assigned)
            log.append((now, assigned))
            state, events = step(state, DesiredChanged(), now)
        log.extend((now, e) for e in events)
    return state, log


def durable(state: DeviceState) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(state).items() if k not in _VOLATILE}


@settings(max_examples=300, deadline=None)
@given(steps)
def test_replaying_the_log_gives_the_same_state(commands: list[tuple[Any, ...]]) -> None:
    state, log = run(commands)
    rebuilt = initial("d1")
    for _, event in log:
        rebuilt = evolve(rebuilt, event)
    assert durable(rebuilt) == durable(state)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_invariants(commands: list[tuple[Any, ...]]) -> None:
    state, log = run(commands)
    online = False
    drifting = False
    attempts = 0
    stuck = acknowledged = False
    for _, event in log:
        match event:
            case DeviceCameOnline():
                assert not online, "came online twice without going offline"
                online = True
            case DeviceWentOffline():
                assert online
                online = False
            case DriftBegan():
                assert not drifting and online
                assert event.desired_config_hash is not None
                drifting, attempts, stuck, acknowledged = True, 0, False, False
            case ReconcileAttempted():
                assert drifting and not stuck and not acknowledged, "an accepted drift is not reconciled"
                attempts += 1
                assert event.attempt == attempts <= POLICY.reconcile_max_tries
            case DeviceStuck():
                assert drifting and not stuck and not acknowledged and attempts == POLICY.reconcile_max_tries
                stuck = True
            case DriftAcknowledged():
                assert drifting and not acknowledged
                acknowledged = True
            case ReconcileForced():
                assert drifting
                attempts, stuck, acknowledged = 0, False, False
            case DriftEnded():
                assert drifting
                drifting = acknowledged = False
            case DesiredStateAssigned():
                attempts, stuck = 0, False
    assert state.online == online and state.drifted == drifting and state.stuck == stuck
    assert state.acknowledged == acknowledged
    if state.drifted:
        assert state.desired_config_hash is not None
    if state.online and not state.drifted and state.mismatch_since is not None:
        # a mismatch that outlives the grace period (while the device stays online) is drift
        due = max(state.mismatch_since + POLICY.drift_grace, state.last_seen)
        if due - state.last_seen <= POLICY.offline_window:
            assert names(decide(state, Tick(), due, POLICY))[:1] == ["DriftBegan"]


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_repeated_heartbeat_changes_nothing(commands: list[tuple[Any, ...]]) -> None:
    state, _ = run(commands)
    if not state.online:
        return
    now = state.last_seen
    again = hb(state.last_seq + 1, state.reported_snapshot_id, state.reported_config_hash, state.health)
    # Nothing beyond what time alone decides (a reconcile retry may be due at that moment).
    assert decide(state, Beat(again), now, POLICY) == decide(state, Tick(), now, POLICY)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from(SNAPSHOTS), st.sampled_from(HASHES), st.sampled_from(["ok", "degraded"]),
       st.floats(0, 20))
def test_the_steady_fast_path_agrees_with_decide(commands: list[tuple[Any, ...]], snapshot: str | None,
                                                 digest: str | None, health: str, dt: float) -> None:
    state, _ = run(commands)
    beat = hb(state.last_seq + 1, snapshot, digest, health)
    now = state.last_seen + dt
    if steady(state, beat):
        assert decide(state, Beat(beat), now, POLICY) == []
        assert observe(state, beat, now) == msgspec.structs.replace(state, last_seen=now, last_seq=beat.seq)


@settings(max_examples=300, deadline=None)
@given(steps, st.floats(0, 100))
def test_a_tick_that_is_not_due_changes_nothing(commands: list[tuple[Any, ...]], dt: float) -> None:
    state, _ = run(commands)
    now = max(state.last_seen, T0) + dt
    if not tick_due(state, now, POLICY):
        assert decide(state, Tick(), now, POLICY) == []


def test_partition_is_fnv1a_like_the_nats_server() -> None:
    # FNV-1a 32-bit reference values: "" -> 0x811c9dc5, "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968
    assert partition_of("", 2**32 - 1) == 0x811C9DC5
    assert partition_of("a", 2**32 - 1) == 0xE40C292C
    assert partition_of("foobar", 2**32 - 1) == 0xBF9CF968
    assert {partition_of(f"d{i}", 3) for i in range(100)} == {0, 1, 2}


def beats(state: DeviceState, healths: list[str], policy: Policy, start: float = 1000.0,
          every: float = 1.0) -> tuple[DeviceState, list[Event]]:
    """Feed heartbeats (one per `every` seconds, same report, the given healths) as the service does."""
    events: list[Event] = []
    for i, health in enumerate(healths):
        now = start + i * every
        beat = hb(state.last_seq + 1, health=health)
        if not steady(state, beat):
            decided = decide(state, Beat(beat), now, policy)
            for event in decided:
                state = evolve(state, event)
            events += decided
        state = observe(state, beat, now)
    return state, events


def test_a_flapping_device_becomes_a_few_events_then_one_net_change() -> None:
    """Round 1: 400 flapping heartbeats became 799 permanent log events."""
    policy = Policy(interval=10.0, flap_window=60.0, flap_changes=6)
    flapping = ["ok", "degraded"] * 200
    state, events = beats(registered(), flapping, policy)
    changes = [e for e in events if type(e).__name__ == "DeviceHealthChanged"]
    assert len(changes) <= policy.flap_changes  # the flips after that are not events
    assert state.flapping(1400.0, policy)
    # Holding still at "degraded" for the window: one event brings the state to what runs.
    settled, more = beats(state, ["degraded"] * 70, policy, start=1400.0)
    assert [(type(e).__name__, getattr(e, "health", None)) for e in more] == (
        [] if state.health == "degraded" else [("DeviceHealthChanged", "degraded")])
    assert settled.health == "degraded" and not settled.flapping(1470.0, policy)


def test_without_flap_limits_every_flip_is_an_event() -> None:
    policy = Policy(interval=10.0, flap_changes=0)
    _, events = beats(registered(), ["ok", "degraded"] * 20, policy)
    assert len([e for e in events if type(e).__name__ == "DeviceHealthChanged"]) == 39


def test_occasional_changes_are_never_taken_for_flapping() -> None:
    policy = Policy(interval=10.0, flap_window=60.0, flap_changes=6)
    healths = [h for h in ("ok", "degraded", "ok", "failed", "ok") for _ in range(30)]  # a change every 30 s
    _, events = beats(registered(), healths, policy)
    assert len([e for e in events if type(e).__name__ == "DeviceHealthChanged"]) == 4
