"""In-flight that scales (issue #26): `--max-in-flight` as a count or a share of each wave, a
default that grows with the wave, and a dry run's expected duration counting the rounds."""

from __future__ import annotations

import pytest

from services.rollout import domain
from services.rollout.spec import parse_canary, parse_waves
from shared.errors import Invalid
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import Gates, RolloutStarted
from tests.unit.snapshots import FixedSnapshot
from tests.unit.test_rollout_domain import T0, fleet, view_for


def started(count: int, percent: float) -> RolloutStarted:
    return RolloutStarted(rollout_id="r", snapshot_id="s", target="", max_in_flight=count,
                          max_in_flight_percent=percent)


def test_the_rule_a_start_records() -> None:
    assert domain.in_flight_rule(0, None) == (domain.DEFAULT_IN_FLIGHT, domain.DEFAULT_IN_FLIGHT_PERCENT)
    assert domain.in_flight_rule(200, None) == (200, 0.0)  # a count alone: as before
    assert domain.in_flight_rule(0, 10.0) == (1, 10.0)  # a share alone
    assert domain.in_flight_rule(300, 10.0) == (300, 10.0)  # a share with a floor
    for bad in (0.0, -5.0, 100.5):
        with pytest.raises(Invalid) as refused:
            domain.in_flight_rule(0, bad)
        assert refused.value.field == "max_in_flight_percent"
    with pytest.raises(Invalid):
        domain.in_flight_rule(-1, None)


def test_the_limit_of_a_wave_is_the_larger_of_the_count_and_the_share() -> None:
    assert domain.in_flight_limit(started(500, 0.0), 1_000_000) == 500  # a count alone never scales
    assert domain.in_flight_limit(started(1, 10.0), 270_000) == 27_000
    assert domain.in_flight_limit(started(1, 10.0), 5) == 1  # at least one
    default = started(*domain.in_flight_rule(0, None))
    assert domain.in_flight_limit(default, 40) == 500  # small waves: all at once
    assert domain.in_flight_limit(default, 900_000) == 225_000  # a quarter of a large one


def begin(devices: dict[str, str], count: int, percent: float | None) -> domain.Rollout:
    state = domain.initial("r1")
    max_in_flight, share = domain.in_flight_rule(count, percent)
    for event in domain.start(
            "r1", snapshot_id="snap-2", target="", devices=devices, snapshot=FixedSnapshot("hash-new"),
            canary=parse_canary(""), percents=parse_waves("100"), max_in_flight=max_in_flight,
            max_in_flight_percent=share, bake_seconds=60, apply_timeout_seconds=60, gates=Gates(),
            on_failure="pause", approve_after=[], state=state):
        state = domain.evolve(state, event)
    return state


def test_a_tick_assigns_a_share_of_the_wave_at_once() -> None:
    devices = fleet(200)
    state = begin(devices, 0, 10.0)
    assigned = [e for e in domain.tick(state, view_for(devices), T0) if isinstance(e, DesiredStateAssigned)]
    assert len(assigned) == 20


def test_the_expected_schedule_counts_rounds_of_the_in_flight_limit() -> None:
    devices = fleet(200)
    state = begin(devices, 0, 10.0)
    [wave] = domain.expected_schedule(state, view_for(devices), T0, round_seconds=60, commit_rate=100)
    assert (wave["in_flight"], wave["rounds"]) == (20, 10)
    # ten rounds of a minute, 200 devices committed at 100/s, then the 60 s bake
    assert wave["assigned_by"] == "2026-01-01T00:10:02.000000Z"
    assert wave["bake_ends"] == "2026-01-01T00:11:02.000000Z"

