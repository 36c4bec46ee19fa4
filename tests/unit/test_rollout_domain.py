"""The rollout domain as a pure state machine: planning, gates, commands, and hypothesis runs of
random interleavings of device reports, timers and operator commands."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rollout import domain
from services.rollout.domain import Desired, FleetView, Observed, Rollout
from services.rollout.spec import Canary, parse_canary, parse_fraction, parse_metric_gate, parse_waves
from shared.envelope import Event
from shared.errors import Conflict, Invalid, NotFound
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import (
    Gates,
    RolloutDevicesAssigned,
    RolloutDevicesRestored,
    RolloutGateEvaluated,
    RolloutResumed,
    RolloutRollbackStarted,
    RolloutStarted,
    RolloutWavePlanned,
    RolloutWaveStarted,
)
from shared.times import parse_time
from shared.windows import is_open, parse_windows
from tests.unit.snapshots import FixedSnapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NEW = "hash-new"


def fleet(n: int, sites: int = 4) -> dict[str, str]:
    return {f"d{i:03d}": f"s{i % sites}" for i in range(n)}


def begin(devices: dict[str, str], *, canary: str = "", waves: str = "50,100", max_in_flight: int = 5,
          bake: float = 0, timeout: float = 60, gates: Gates | None = None, on_failure: str = "pause",
          approve_after: tuple[int, ...] = (), **windows: Any) -> tuple[Rollout, list[Event]]:
    state = domain.initial("r1")
    events = domain.start(
        "r1", snapshot_id="snap-2", target="tier=edge", devices=devices,
        snapshot=FixedSnapshot(NEW), canary=parse_canary(canary),
        percents=parse_waves(waves), max_in_flight=max_in_flight,
        bake_seconds=bake, apply_timeout_seconds=timeout, gates=gates or Gates(min_healthy=1.0, max_failed=0),
        on_failure=on_failure, approve_after=list(approve_after), state=state, **windows)
    for event in events:
        state = domain.evolve(state, event)
    return state, events


def view_for(devices: dict[str, str]) -> FleetView:
    return FleetView(site_of=dict(devices),
                     desired={d: Desired("snap-1", "hash-old", 1) for d in devices},
                     observed={d: Observed(online=True, config_hash="hash-old") for d in devices})


def apply(state: Rollout, view: FleetView, events: list[Event]) -> Rollout:
    """The rollout after `events` (and the view with their desired states); `state` itself never
    changes: evolve returns new values."""
    before = msgspec.msgpack.encode(state)
    for event in events:
        if isinstance(event, DesiredStateAssigned):
            view.desired[event.device_id] = Desired(event.snapshot_id, event.config_hash, event.revision,
                                                    event.rollout_id)
        else:
            after = domain.evolve(state, event)
            assert msgspec.msgpack.encode(state) == before, f"evolve changed its input on {type(event).__name__}"
            state, before = after, msgspec.msgpack.encode(after)
    return state


def run_to_rest(state: Rollout, view: FleetView, now: datetime, converge: bool = True) -> tuple[Rollout, datetime]:
    """Tick, letting every assigned device converge healthy, until nothing more happens."""
    for _ in range(1000):
        events = domain.tick(state, view, now)
        state = apply(state, view, events)
        if converge:
            for device in state.assigned:
                view.observed[device] = Observed(online=True, config_hash=view.desired[device].config_hash)
        if not events:
            now += timedelta(seconds=1)
            if not domain.tick(state, view, now):
                return state, now
    raise AssertionError("did not come to rest")


def test_parsing() -> None:
    assert parse_canary("5") == Canary(count=5)
    assert parse_canary("2%") == Canary(percent=2)
    assert parse_canary("site:a,b") == Canary(sites=["a", "b"])
    assert parse_canary("") is None
    assert parse_waves("10,50,100") == [10, 50, 100]
    assert parse_fraction("95%", "min_healthy") == 0.95
    assert parse_fraction("0.5", "x") == 0.5
    gate = parse_metric_gate("error_rate p95<=0.02")
    assert (gate.metric, gate.aggregate, gate.op, gate.threshold) == ("error_rate", "p95", "<=", 0.02)
    for bad, field in [("0", "canary"), ("100%", "canary"), ("site:", "canary"), ("x", "canary")]:
        with pytest.raises(Invalid) as err:
            parse_canary(bad)
        assert err.value.field == field
    for bad in ["10,50", "50,10,100", "0,100", "a,100"]:
        with pytest.raises(Invalid, match=r"waves|percentages"):
            parse_waves(bad)
    with pytest.raises(Invalid, match="metric gate"):
        parse_metric_gate("error_rate < 2")
    with pytest.raises(Invalid):
        parse_fraction("150%", "max_failed")


def test_plan_is_deterministic_with_canary_sites_first() -> None:
    devices = fleet(40)
    a = domain.plan_waves("r1", devices, parse_canary("site:s1"), [50, 100])
    b = domain.plan_waves("r1", dict(reversed(list(devices.items()))), parse_canary("site:s1"), [50, 100])
    assert a == b
    assert {devices[d] for d in a[0]} == {"s1"}
    assert len(a[0]) == 10
    assert sum(len(w) for w in a) == 40
    assert len(a[0]) + len(a[1]) == 20  # cumulative 50%
    assert sorted(d for w in a for d in w) == sorted(devices)
    assert domain.plan_waves("r2", devices, parse_canary("3"), [100])[0] != a[0]


def test_healthy_rollout_completes_wave_by_wave_within_max_in_flight() -> None:
    devices = fleet(20)
    state, _ = begin(devices, canary="2", waves="50,100", max_in_flight=3)
    view = view_for(devices)
    first = domain.tick(state, view, T0)
    assigned = [e for e in first if isinstance(e, DesiredStateAssigned)]
    assert len(assigned) == 2  # canary of 2 (< max_in_flight)
    assert all(e.previous_snapshot_id == "snap-1" and e.revision == 2 for e in assigned)
    state = apply(state, view, first)
    assert domain.tick(state, view, T0) == []  # in flight, nothing more in the canary wave
    state, _ = run_to_rest(state, view, T0)
    assert state.status == "completed"
    assert all(view.desired[d].snapshot_id == "snap-2" for d in devices)


def test_failed_gate_pauses_with_its_inputs_and_resume_overrides() -> None:
    devices = fleet(8)
    state, _ = begin(devices, canary="site:s0", waves="100")
    view = view_for(devices)
    now = T0
    state = apply(state, view, domain.tick(state, view, now))
    for d in state.assigned:
        view.observed[d] = Observed(online=True, config_hash=NEW, health="failed")
    events = domain.tick(state, view, now)  # all settled -> bake
    state = apply(state, view, events)
    events = domain.tick(state, view, now)  # bake 0 -> gate
    verdict = events[0]
    assert isinstance(verdict, RolloutGateEvaluated)
    assert not verdict.passed
    assert verdict.inputs.failed == 2
    assert verdict.inputs.devices == 2
    assert any("failed 2/2" in r for r in verdict.reasons)
    state = apply(state, view, events)
    assert state.status == "paused"
    assert domain.tick(state, view, now + timedelta(hours=1)) == []  # never advances past it
    resumed = domain.resume(state)
    assert isinstance(resumed[0], RolloutResumed)
    assert resumed[0].override_gate
    assert isinstance(resumed[1], RolloutWaveStarted)


def test_failed_gate_rolls_back_every_touched_device_once() -> None:
    devices = fleet(40)
    state, _ = begin(devices, canary="site:s0", waves="100", on_failure="rollback", max_in_flight=10)
    view = view_for(devices)
    state = apply(state, view, domain.tick(state, view, T0))
    canary = state.waves[0]
    assert len(state.assigned) == len(canary) == 10 and list(state.assigned) == list(canary)
    for d in state.assigned:
        view.observed[d] = Observed(online=True, config_hash=NEW, health="failed")
    state = apply(state, view, domain.tick(state, view, T0))
    state = apply(state, view, domain.tick(state, view, T0))
    assert state.status == "rolling_back"
    plan = domain.rollback_plan(state)
    # in plan order (the order restored: consecutive positions in the ledger), not sorted by id
    assert plan == [(d, "snap-1", "hash-old") for d in canary]
    assert list(canary) != sorted(canary)
    restore = domain.tick(state, view, T0)
    assert [e.device_id for e in restore if isinstance(e, DesiredStateAssigned)] == list(canary)
    state = apply(state, view, restore)
    assert state.status == "rolled_back"
    assert {d: view.desired[d].snapshot_id for d in state.assigned} == dict.fromkeys(state.assigned, "snap-1")
    assert domain.rollback(state) == []  # twice is a no-op
    assert domain.tick(state, view, T0) == []


def test_timeout_counts_as_failed_and_offline_devices_do_not_block() -> None:
    devices = fleet(4, sites=1)
    state, _ = begin(devices, waves="100", timeout=30, max_in_flight=10)
    view = view_for(devices)
    state = apply(state, view, domain.tick(state, view, T0))
    assert all(domain.device_status(state, d, view, T0) == "in_flight" for d in devices)
    late = T0 + timedelta(seconds=31)
    assert all(domain.device_status(state, d, view, late) == "timed_out" for d in devices)
    state = apply(state, view, domain.tick(state, view, late))
    gate = domain.tick(state, view, late)[0]
    assert isinstance(gate, RolloutGateEvaluated)
    assert gate.inputs.timed_out == 4
    assert not gate.passed


def test_metric_gate_records_the_aggregate() -> None:
    devices = fleet(10, sites=1)
    gates = Gates(min_healthy=0.5, max_failed=0.5, max_offline=0.5,
                  metrics=[parse_metric_gate("error_rate p90<=0.05")])
    state, _ = begin(devices, waves="100", max_in_flight=10, gates=gates)
    view = view_for(devices)
    state = apply(state, view, domain.tick(state, view, T0))
    for i, d in enumerate(sorted(devices)):
        view.observed[d] = Observed(online=True, config_hash=NEW, metrics={"error_rate": i / 100})
    state = apply(state, view, domain.tick(state, view, T0))
    gate = domain.tick(state, view, T0)[0]
    assert isinstance(gate, RolloutGateEvaluated)
    assert gate.inputs.metrics == {"error_rate p90": 0.08}
    assert not gate.passed
    assert "error_rate p90 = 0.08, wanted <= 0.05" in gate.reasons


def test_held_wave_waits_for_promote() -> None:
    devices = fleet(10)
    state, _ = begin(devices, canary="2", waves="100", approve_after=(0,))
    view = view_for(devices)
    with pytest.raises(Conflict, match="not holding"):
        domain.promote(state)
    state, now = run_to_rest(state, view, T0)
    assert (state.status, state.phase, state.wave) == ("running", "held", 0)
    assert domain.tick(state, view, now + timedelta(days=1)) == []  # holds until promoted
    state = apply(state, view, domain.promote(state))
    state, _ = run_to_rest(state, view, now)
    assert state.status == "completed"


def test_commands_refuse_what_makes_no_sense() -> None:
    with pytest.raises(NotFound, match="does not exist"):
        domain.pause(domain.initial("nope"))
    with pytest.raises(Invalid, match="matches no active device"):
        begin({})
    state, _ = begin(fleet(4))
    assert domain.pause(state)
    state = apply(state, FleetView(), domain.pause(state))
    assert domain.pause(state) == []  # already paused
    state = apply(state, FleetView(), domain.abort(state))
    with pytest.raises(Conflict):
        domain.resume(state)
    with pytest.raises(Conflict):
        domain.promote(state)
    with pytest.raises(Conflict, match="already exists"):
        domain.start("r1", snapshot_id="s", target="", devices=fleet(2), snapshot=FixedSnapshot("h"),
                     canary=parse_canary(""), percents=[100], max_in_flight=1,
                     bake_seconds=0, apply_timeout_seconds=1, gates=Gates(), on_failure="pause",
                     approve_after=[], state=state)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(0, 20)),
        st.tuples(st.just("report"), st.integers(0, 29), st.sampled_from(["ok", "degraded", "failed", "offline"])),
        st.tuples(st.just("cmd"), st.sampled_from(["pause", "resume", "abort", "promote", "rollback"])),
    ),
    max_size=60,
)


WINDOWS = {"s1": parse_windows(["Daily 00:01-00:04 UTC", "Daily 00:09-00:12 UTC"]),
           "s2": parse_windows(["Daily 01:03-01:06 Europe/Berlin"])}  # s0: none, always open


@settings(max_examples=150, deadline=None)
@given(actions=actions, max_in_flight=st.integers(1, 6), canary=st.sampled_from(["", "3", "10%", "site:s1"]),
       on_failure=st.sampled_from(["pause", "rollback"]), approve=st.booleans(), windows=st.booleans(),
       ignore_windows=st.booleans(), rollback_in_windows=st.booleans())
def test_random_interleavings_keep_the_invariants(
    actions: list[tuple[Any, ...]], max_in_flight: int, canary: str, on_failure: str, approve: bool,
    windows: bool, ignore_windows: bool, rollback_in_windows: bool,
) -> None:
    devices = fleet(30, sites=3)
    state, _ = begin(devices, canary=canary, waves="30,60,100", max_in_flight=max_in_flight, bake=5,
                     timeout=40, gates=Gates(min_healthy=0.8, max_failed=0.1, max_offline=0.2),
                     on_failure=on_failure, approve_after=(0,) if approve else (),
                     ignore_windows=ignore_windows, rollback_in_windows=rollback_in_windows)
    view = view_for(devices)
    if windows:
        view.windows = dict(WINDOWS)
    now = T0
    failed_gate_pending = False
    names = sorted(devices)

    def step(events: list[Event]) -> None:
        nonlocal failed_gate_pending, state
        for event in events:
            if isinstance(event, DesiredStateAssigned) and not ignore_windows and (
                    event.reason == "rollout" or rollback_in_windows):
                site = devices[event.device_id]
                assert is_open(view.windows.get(site, ()), now), f"assigned at closed site {site} at {now}"
            if isinstance(event, RolloutDevicesAssigned):
                wave = state.waves[state.wave]
                assert event.wave == state.wave
                assert set(event.devices) <= set(wave), "assigned outside its wave"
                assert not set(event.devices) & set(state.assigned), "assigned twice"
            if isinstance(event, RolloutWaveStarted) and event.wave > 0:
                assert not failed_gate_pending, "advanced past a failed gate"
            if isinstance(event, RolloutGateEvaluated):
                failed_gate_pending = not event.passed
                again = domain.judge(event.inputs, event.gates)  # what-if's judge, on what was recorded
                assert (again.passed, again.reasons, again.metrics) == (event.passed, event.reasons,
                                                                         event.inputs.metrics)
            if isinstance(event, RolloutResumed) and event.override_gate:
                failed_gate_pending = False
        state = apply(state, view, events)
        if state.status == "running" and state.phase == "assigning":
            in_flight = sum(domain.device_status(state, d, view, now) == "in_flight" for d in state.waves[state.wave])
            assert in_flight <= max_in_flight

    for action in actions:
        if action[0] == "tick":
            now += timedelta(seconds=action[1])
            step(domain.tick(state, view, now))
        elif action[0] == "report":
            device = names[action[1]]
            if device in state.assigned:
                health = action[2]
                view.observed[device] = Observed(online=health != "offline", config_hash=view.desired[device].config_hash,
                                                 health="ok" if health == "offline" else health)
        else:
            with contextlib.suppress(Conflict):
                step({"pause": domain.pause, "resume": domain.resume, "abort": domain.abort,
                      "promote": domain.promote, "rollback": domain.rollback}[action[1]](state))

    # Devices all report healthy from here on: the rollout must come to a terminal state, or to
    # a state that only an operator can move (paused, held).
    for device in devices:
        view.observed[device] = Observed(online=True, config_hash=view.desired[device].config_hash)
    for _ in range(200):
        now += timedelta(seconds=10)
        if state.waiting is not None:  # jump to the next opening of a site the rollout waits for
            now = max(now, min(parse_time(t) for t in state.waiting.opens.values()))
        step(domain.tick(state, view, now))
        for device in state.assigned:
            view.observed[device] = Observed(online=True, config_hash=view.desired[device].config_hash)
        if state.phase == "held" and state.status == "running":
            step(domain.promote(state))
        if state.status == "paused":
            step(domain.resume(state))
    assert state.status in ("completed", "aborted", "rolled_back")
    # The value a checkpoint stores is the value itself: decoded, it equals the folded one.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=Rollout) == state


@given(target=st.sets(st.integers(0, 29), max_size=30),
       others=st.lists(st.tuples(st.sets(st.integers(0, 29), max_size=10),
                                 st.sampled_from([*domain.ACTIVE, *domain.TERMINAL])), max_size=4),
       snapshot=st.sampled_from(["ok", "missing", "retired"]))
def test_start_refuses_what_it_must_and_plans_each_target_device_once(
        target: set[int], others: list[tuple[set[int], str]], snapshot: str) -> None:
    devices = {f"d{i:03d}": f"s{i % 4}" for i in sorted(target)}
    rollouts = [Rollout(f"o{n}", status=status, waves=(tuple(f"d{i:03d}" for i in sorted(held)),))
                for n, (held, status) in enumerate(others)]
    busy = {d for r in rollouts if r.active for d in r.devices} & devices.keys()

    def start() -> list[Event]:
        chosen = {"ok": FixedSnapshot("h"), "missing": None, "retired": FixedSnapshot("h", retired=True)}[snapshot]
        return domain.start("r1", snapshot_id="snap", snapshot=chosen, target="t", devices=devices, others=rollouts,
                            canary=parse_canary(""), percents=[50, 100], max_in_flight=5,
                            bake_seconds=0, apply_timeout_seconds=60, gates=Gates(), on_failure="pause",
                            approve_after=[], state=domain.initial("r1"))

    if snapshot == "missing":
        with pytest.raises(NotFound, match="snap does not exist"):
            start()
    elif snapshot == "retired":
        with pytest.raises(Invalid, match="retired"):
            start()
    elif not devices:
        with pytest.raises(Invalid, match="matches no active device"):
            start()
    elif busy:  # a device is in one active rollout at a time
        with pytest.raises(Conflict, match=f"{len(busy)} target devices are already in an active rollout"):
            start()
    else:
        events = start()
        started = events[0]
        assert isinstance(started, RolloutStarted)
        assert started.config_hashes == dict.fromkeys(set(devices.values()), "h")
        planned = [d for e in events if isinstance(e, RolloutWavePlanned) for d in e.devices]
        assert sorted(planned) == sorted(devices)  # every target device, once


@settings(max_examples=100, deadline=None)
@given(reports=st.lists(st.sampled_from(["none", "converged", "failed", "other"]), min_size=12, max_size=12),
       restored=st.sets(st.integers(0, 11)), chunks=st.integers(1, 12))
def test_devices_taken_at_once_count_as_taken_one_at_a_time(reports: list[str], restored: set[int], chunks: int) -> None:
    devices = fleet(12, sites=2)
    state, _ = begin(devices, waves="100", max_in_flight=12, on_failure="rollback")
    view = view_for(devices)
    state = apply(state, view, domain.tick(state, view, T0))
    names = list(state.waves[0])
    state = apply(state, view, [RolloutRollbackStarted(rollout_id="r1", devices=12),
                                RolloutDevicesRestored(rollout_id="r1", devices=[names[i] for i in sorted(restored)])])
    for device, report in zip(names, reports, strict=True):
        hashes = {"converged": NEW, "failed": NEW, "other": "hash-x"}
        if report != "none":
            view.observed[device] = Observed(online=True, config_hash=hashes[report],
                                             health="failed" if report == "failed" else "ok")
    one_by_one = state
    for device in names:
        one_by_one = domain.taken(one_by_one, [device], view)
    at_once = state
    for offset in range(0, 12, chunks):
        at_once = domain.taken(at_once, names[offset:offset + chunks], view)
    assert at_once == one_by_one
    assert {d: a.left for d, a in at_once.assigned.items()} == {
        d: domain.device_status(state, d, view, state.assigned[d].deadline) for d in names}
    assert domain.taken(at_once, names, view) == at_once  # taken once: later marks change nothing
