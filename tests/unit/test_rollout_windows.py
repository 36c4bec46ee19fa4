"""Rollouts and maintenance windows in the pure domain, on an injected clock: a wave spanning
sites in different time zones assigns each site inside its own window and says what it waits for;
a "restart" (state rebuilt from the recorded events) while waiting goes on without repeating
anything; scheduled starts, --ignore-windows, rollbacks (ignore windows unless asked) and the
dry run's expected schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.registry.domain import check_device_labels
from services.rollout import domain
from services.rollout.domain import Desired, FleetView, Observed, Rollout
from services.rollout.spec import parse_canary, parse_waves
from shared.envelope import Event
from shared.errors import Invalid
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import Gates, RolloutRolledBack, RolloutStarted, RolloutWaveWaiting
from shared.windows import parse_label_windows, parse_windows
from tests.unit.snapshots import FixedSnapshot

# Monday 2026-03-02 21:30 UTC: 22:30 in Berlin (its night window is open), 16:30 in New York
# (closed until 22:00 New York = 03:00 UTC), Tokyo has no windows at all.
MONDAY_EVENING = datetime(2026, 3, 2, 21, 30, tzinfo=UTC)
WINDOWS = {"ber": parse_windows(["Mon-Fri 22:00-04:00 Europe/Berlin"]),
           "nyc": parse_windows(["Mon-Fri 22:00-04:00 America/New_York"])}
DEVICES = {f"d{i}": ("ber", "nyc", "tyo")[i % 3] for i in range(9)}


def begin(**options: Any) -> tuple[Rollout, FleetView, list[Event]]:
    state = domain.initial("r1")
    settings: dict[str, Any] = {"bake_seconds": 60.0, "on_failure": "pause", "gates": Gates(), **options}
    events = domain.start(
        "r1", snapshot_id="new", target="", devices=DEVICES, snapshot=FixedSnapshot("h"),
        canary=parse_canary(""), percents=parse_waves("100"), max_in_flight=100,
        apply_timeout_seconds=600, approve_after=[], state=state, **settings)
    for event in events:
        state = domain.evolve(state, event)
    view = FleetView(site_of=dict(DEVICES), windows=dict(WINDOWS),
                     desired={d: Desired("old", "h-old", 1) for d in DEVICES},
                     observed={d: Observed(online=True, config_hash="h-old") for d in DEVICES})
    return state, view, events


def land(state: Rollout, view: FleetView, events: list[Event], healthy: bool = True) -> Rollout:
    for event in events:
        if isinstance(event, DesiredStateAssigned):
            view.desired[event.device_id] = Desired(event.snapshot_id, event.config_hash, event.revision)
            view.observed[event.device_id] = Observed(online=True, config_hash=event.config_hash,
                                                      health="ok" if healthy else "failed")
        else:
            state = domain.evolve(state, event)
    return state


def assigned_sites(events: list[Event]) -> set[str]:
    return {DEVICES[e.device_id] for e in events if isinstance(e, DesiredStateAssigned)}


def test_a_wave_across_time_zones_assigns_each_site_in_its_own_window_and_says_what_it_waits_for() -> None:
    state, view, _ = begin()
    events = domain.tick(state, view, MONDAY_EVENING)
    assert assigned_sites(events) == {"ber", "tyo"}
    waiting = [e for e in events if isinstance(e, RolloutWaveWaiting)]
    assert [w.opens for w in waiting] == [{"nyc": "2026-03-03T03:00:00.000000Z"}]
    state = land(state, view, events)
    # Berlin and Tokyo converged; the wave neither bakes nor records the same wait again.
    for minutes in (1, 60, 300):
        assert domain.tick(state, view, MONDAY_EVENING + timedelta(minutes=minutes)) == []
    assert state.phase == "assigning"
    assert state.waiting is not None
    # 22:00 in New York: its devices are assigned and the wait is over, then the wave bakes.
    opened = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    events = domain.tick(state, view, opened)
    assert assigned_sites(events) == {"nyc"}
    assert [e.opens for e in events if isinstance(e, RolloutWaveWaiting)] == [{}]
    state = land(state, view, events)
    assert state.waiting is None
    now = opened
    while state.status == "running":
        now += timedelta(seconds=30)
        state = land(state, view, domain.tick(state, view, now))
    assert state.status == "completed"


def test_a_restart_while_waiting_rebuilds_from_the_log_and_goes_on_without_repeating() -> None:
    state, view, log = begin()
    events = domain.tick(state, view, MONDAY_EVENING)
    state = land(state, view, events)
    log += [e for e in events if not isinstance(e, DesiredStateAssigned)]
    # The service restarts: the rollout is rebuilt from its recorded events alone.
    rebuilt = domain.initial("r1")
    for event in log:
        rebuilt = domain.evolve(rebuilt, event)
    assert rebuilt.waiting is not None
    assert set(rebuilt.waiting.opens) == {"nyc"}
    assert domain.tick(rebuilt, view, MONDAY_EVENING + timedelta(hours=2)) == []  # still closed, said once
    events = domain.tick(rebuilt, view, datetime(2026, 3, 3, 3, 0, 1, tzinfo=UTC))
    assert assigned_sites(events) == {"nyc"}
    assert {e.device_id for e in events if isinstance(e, DesiredStateAssigned)} == {
        d for d, site in DEVICES.items() if site == "nyc"}


def test_ignore_windows_assigns_everywhere_and_a_scheduled_start_waits_for_its_time() -> None:
    state, view, started = begin(ignore_windows=True)
    assert isinstance(started[0], RolloutStarted)
    assert started[0].ignore_windows
    assert assigned_sites(domain.tick(state, view, MONDAY_EVENING)) == {"ber", "nyc", "tyo"}
    later = MONDAY_EVENING + timedelta(hours=12)
    state, view, _ = begin(not_before=later)
    assert domain.tick(state, view, later - timedelta(seconds=1)) == []
    assert assigned_sites(domain.tick(state, view, later)) == {"tyo"}  # Tuesday 09:30 UTC: nights closed


def test_a_rollback_ignores_windows_unless_the_rollout_asked_otherwise() -> None:
    for in_windows in (False, True):
        state, view, _ = begin(rollback_in_windows=in_windows)
        state = land(state, view, domain.tick(state, view, MONDAY_EVENING))  # ber and tyo assigned
        state = land(state, view, domain.rollback(state, "bad"))
        morning = datetime(2026, 3, 3, 4, 30, tzinfo=UTC)  # Berlin's window closed at 03:00 UTC
        events = domain.tick(state, view, morning)
        restored = assigned_sites(events)
        if in_windows:
            assert restored == {"tyo"}
            assert [e.opens for e in events if isinstance(e, RolloutWaveWaiting)] == [
                {"ber": "2026-03-03T21:00:00.000000Z"}]
            assert not any(isinstance(e, RolloutRolledBack) for e in events)
            state = land(state, view, events)
            events = domain.tick(state, view, datetime(2026, 3, 3, 21, 0, tzinfo=UTC))
            assert assigned_sites(events) == {"ber"}
        else:
            assert restored == {"ber", "tyo"}
        assert isinstance(events[-1], RolloutRolledBack)


def test_the_dry_run_schedule_follows_the_windows() -> None:
    state, view, _ = begin()
    schedule = domain.expected_schedule(state, view, MONDAY_EVENING)
    assert schedule == [{"wave": 0, "starts": "2026-03-02T21:30:00.000000Z",
                         "all_sites_open": "2026-03-03T03:00:00.000000Z", "bake_ends": "2026-03-03T03:01:00.000000Z",
                         "in_flight": 100, "rounds": 1, "assigned_by": "2026-03-03T03:00:00.000000Z"}]
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    # Next Monday night; New York is on summer time since Sunday 2026-03-08, so 22:00 there is 02:00 UTC.
    assert domain.expected_schedule(state, view, saturday)[0]["all_sites_open"] == "2026-03-10T02:00:00.000000Z"


def test_an_operator_can_ignore_windows_while_a_wave_waits() -> None:
    state, view, _ = begin()
    state = land(state, view, domain.tick(state, view, MONDAY_EVENING))
    assert state.waiting is not None
    [ignored] = domain.ignore_windows(state, "CVE fix")
    state = land(state, view, [ignored])
    assert domain.ignore_windows(state) == []  # already so
    assert state.waiting is None  # the wait is over with the operator's event
    events = domain.tick(state, view, MONDAY_EVENING + timedelta(minutes=1))
    assert assigned_sites(events) == {"nyc"}
    assert not [e for e in events if isinstance(e, RolloutWaveWaiting)]


def test_a_pause_while_waiting_records_the_wait_again_on_resume() -> None:
    state, view, _ = begin()
    state = land(state, view, domain.tick(state, view, MONDAY_EVENING))
    state = land(state, view, domain.pause(state, "lunch"))
    assert state.waiting is None
    state = land(state, view, domain.resume(state))
    events = domain.tick(state, view, MONDAY_EVENING + timedelta(minutes=5))
    assert [e.opens for e in events if isinstance(e, RolloutWaveWaiting)] == [{"nyc": "2026-03-03T03:00:00.000000Z"}]


def test_a_device_label_gives_a_device_its_own_windows() -> None:
    state, view, _ = begin()
    view.device_windows["d2"] = parse_label_windows("Sat 00:00-24:00 UTC; Sun 00:00-06:00 Asia/Tokyo")  # a tyo device
    events = domain.tick(state, view, MONDAY_EVENING)
    assert {e.device_id for e in events if isinstance(e, DesiredStateAssigned)} == {
        d for d, site in DEVICES.items() if site in ("ber", "tyo") and d != "d2"}
    [waiting] = [e for e in events if isinstance(e, RolloutWaveWaiting)]
    assert waiting.opens == {"nyc": "2026-03-03T03:00:00.000000Z", "tyo": "2026-03-07T00:00:00.000000Z"}


def test_the_registry_refuses_a_bad_window_label() -> None:
    with pytest.raises(Invalid) as info:
        check_device_labels({"maintenance-window": "Sat 00:00-24:00 UTC; weekends"})
    assert info.value.field == "labels.maintenance-window[1]"
