"""Gate what-if, pure: recorded distributions give back every whole percentile exactly, the
proposed gates are judged by the same `judge` the rollout used, and each rollout's outcome
(same, stops earlier, would pass, unknown) is what the numbers say."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.rollout import domain, whatif
from services.rollout.domain import Desired, FleetView, Observed
from services.rollout.spec import parse_canary, parse_metric_gate, parse_waves
from shared.contract.rollout import Proposal, WhatIfGates, parse_fraction, parse_metric
from shared.errors import Invalid
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import GateInputs, Gates, RolloutGateEvaluated
from shared.times import parse_duration
from tests.unit.snapshots import FixedSnapshot

T0 = datetime(2026, 5, 4, tzinfo=UTC)


@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=400))
def test_a_recorded_distribution_gives_every_whole_percentile_exactly(values: list[float]) -> None:
    dist = domain.distribution(values)
    ordered = sorted(values)
    assert len(dist.values) == min(len(values), 100)
    for k in range(1, 101):
        assert domain.aggregate_of(dist, f"p{k}") == ordered[max(math.ceil(k / 100 * len(ordered)), 1) - 1]
    assert (domain.aggregate_of(dist, "min"), domain.aggregate_of(dist, "max")) == (ordered[0], ordered[-1])
    assert domain.aggregate_of(dist, "avg") == sum(ordered) / len(ordered)


def run_rollout(error_rates: list[float], *, gates: Gates, healthy: bool = True) -> tuple[RolloutGateEvaluated, ...]:
    """A two-wave rollout through the pure domain; devices report `error_rates` (cycled)."""
    devices = {f"d{i:03d}": "s0" for i in range(len(error_rates))}
    state = domain.initial("r1")
    for event in domain.start("r1", snapshot_id="new", target="", devices=devices, snapshot=FixedSnapshot("h"),
                              canary=parse_canary(""), percents=parse_waves("50,100"),
                              max_in_flight=1000, bake_seconds=10, apply_timeout_seconds=60, gates=gates,
                              on_failure="pause", approve_after=[], state=state):
        state = domain.evolve(state, event)
    view = FleetView(site_of=dict(devices), desired={d: Desired("old", "h-old", 1) for d in devices})
    rates = dict(zip(sorted(devices), error_rates, strict=True))
    now = T0
    for _ in range(50):
        for event in domain.tick(state, view, now):
            if isinstance(event, DesiredStateAssigned):
                view.observed[event.device_id] = Observed(
                    online=True, config_hash=event.config_hash, health="ok" if healthy else "failed",
                    metrics={"error_rate": rates[event.device_id], "latency_ms": 100 * rates[event.device_id]})
            else:
                state = domain.evolve(state, event)
        now += timedelta(seconds=5)
    return state.gate_history


def test_tightening_a_percentile_stops_a_passed_rollout_earlier_with_the_numbers() -> None:
    rates = [0.001] * 190 + [0.015] * 10  # p95 0.001 (passes <=0.02); p99 0.015
    verdicts = run_rollout(rates, gates=Gates(metrics=[parse_metric_gate("error_rate p95<=0.02")]))
    assert [v.passed for v in verdicts] == [True, True]
    assert verdicts[0].inputs.distributions["error_rate"].count == 100
    result = whatif.what_if("r1", "completed", verdicts,
                            _proposal("99%", "1%", None, ["error_rate p99<=0.01", "latency_ms max<=5"]))
    assert result.outcome == "stops_earlier"
    first = result.waves[0]
    assert first.what_if_passed is False
    assert first.what_if_metrics == {"error_rate p99": 0.015, "latency_ms max": 1.5}  # latency was never gated
    assert first.what_if_reasons == ["error_rate p99 = 0.015, wanted <= 0.01"]
    assert first.recorded_metrics == {"error_rate p95": 0.001}
    same = whatif.what_if("r1", "completed", verdicts, Proposal())
    assert same.outcome == "same"
    assert [w.what_if_reasons for w in same.waves] == [v.reasons for v in verdicts]


def test_loosening_a_gate_lets_a_failed_rollout_pass() -> None:
    verdicts = run_rollout([0.001] * 10, gates=Gates(min_healthy=0.9), healthy=False)
    assert [v.passed for v in verdicts] == [False]
    result = whatif.what_if("r1", "paused", verdicts, _proposal("0%", "100%", None, None))
    assert (result.outcome, result.waves[0].what_if_passed) == ("would_pass", True)
    summary = whatif.summarize([result, whatif.what_if("r2", "running", [], Proposal())])
    assert summary["summary"] == ("0 of 1 rollouts would have stopped earlier; 1 of 1 rollouts that failed a gate "
                                  "would have passed it; 1 had no gate verdict yet")


def test_a_gate_event_from_before_distributions_is_reported_as_such() -> None:
    old = RolloutGateEvaluated(
        rollout_id="r0", wave=0, passed=True, gates=Gates(metrics=[parse_metric_gate("error_rate p95<=0.02")]),
        inputs=GateInputs(devices=10, healthy=10, converged=10, failed=0, timed_out=0, offline=0, degraded=0,
                          metrics={"error_rate p95": 0.012}))
    by_aggregate = whatif.what_if("r0", "completed", [old], _proposal(None, None, None, ["error_rate p95<=0.01"]))
    assert (by_aggregate.outcome, by_aggregate.waves[0].what_if_metrics) == ("stops_earlier", {"error_rate p95": 0.012})
    other = whatif.what_if("r0", "completed", [old], _proposal(None, None, None, ["error_rate p99<=0.01"]))
    assert other.outcome == "unknown"
    assert other.waves[0].unknown == ["error_rate p99: not recorded (the gate event predates recorded distributions)"]
    assert whatif.summarize([other])["unknown"] == 1


def _proposal(min_healthy: str | None, max_failed: str | None, max_offline: str | None,
              metrics: list[str] | None) -> Proposal:
    """What `fleet rollout what-if` sends for these flags, as the service takes it."""
    return whatif.proposal_of(WhatIfGates(
        min_healthy=None if min_healthy is None else parse_fraction(min_healthy, "min_healthy"),
        max_failed=None if max_failed is None else parse_fraction(max_failed, "max_failed"),
        max_offline=None if max_offline is None else parse_fraction(max_offline, "max_offline"),
        metrics=None if metrics is None else [parse_metric(m) for m in metrics]))


def test_what_if_input_is_checked() -> None:
    assert parse_duration("30d", "since") == 30 * 86400
    assert parse_duration("12h", "since") == 12 * 3600
    with pytest.raises(Invalid) as info:
        parse_duration("a month", "since")
    assert info.value.field == "since"
    with pytest.raises(Invalid) as info:
        _proposal("101%", None, None, None)
    assert info.value.field == "min_healthy"
    with pytest.raises(Invalid) as info:
        _proposal(None, None, None, ["error_rate p101<=1"])
    assert info.value.field == "metrics"


def test_a_metric_the_rollout_never_watched_is_not_observed_rather_than_missing() -> None:
    unwatched = RolloutGateEvaluated(
        rollout_id="r0", wave=0, passed=True, gates=Gates(),
        inputs=GateInputs(devices=10, healthy=10, converged=10, failed=0, timed_out=0, offline=0, degraded=0,
                          distributions_recorded=True))
    result = whatif.what_if("r0", "completed", [unwatched], _proposal(None, None, None, ["error_rate p99<=0.01"]))
    assert (result.outcome, result.waves[0].what_if_passed) == ("unknown", None)
    assert result.waves[0].unknown == ["error_rate p99: not observed (this rollout had no gate on error_rate)"]
    # A rule that fails decides even beside one that cannot be judged.
    nine = msgspec.structs.replace(unwatched, inputs=msgspec.structs.replace(unwatched.inputs, healthy=9))
    failing = whatif.what_if("r0", "completed", [nine], _proposal("100%", None, None, ["error_rate p99<=1"]))
    assert (failing.outcome, failing.waves[0].what_if_passed) == ("stops_earlier", False)
    assert failing.waves[0].what_if_reasons == ["healthy 9/10 < 100%"]
