"""The read models and change summaries of the window and what-if additions: a waiting wave shows
as `waiting` on the rollouts row (the dashboard's pill) and back to `running` when the wait is over;
every new event has a readable change summary; recorded distributions stay out of the row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from projections.changes.model import change_row
from projections.fleet import model
from services.rollout.domain import distribution
from shared.envelope import Event, seal
from shared.events import rollout

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_a_waiting_wave_shows_on_the_rollouts_row_and_in_the_changes() -> None:
    state = model.FleetState()
    inputs = rollout.GateInputs(devices=2, healthy=2, converged=2, failed=0, timed_out=0, offline=0, degraded=0,
                                distributions={"error_rate": distribution([0.1, 0.2])}, distributions_recorded=True)
    history: list[Event] = [
        rollout.RolloutStarted(rollout_id="r1", snapshot_id="b", target="", wave_sizes=[2],
                               not_before="2026-11-02T00:00:00.000000Z"),
        rollout.RolloutWaveStarted(rollout_id="r1", wave=0),
        rollout.RolloutWaveWaiting(rollout_id="r1", wave=0, opens={"ber": "2026-11-02T21:00:00.000000Z", "nyc": ""}),
        rollout.RolloutWindowsIgnored(rollout_id="r1", reason="CVE fix"),
        rollout.RolloutWaveWaiting(rollout_id="r1", wave=0),
        rollout.RolloutGateEvaluated(rollout_id="r1", wave=0, passed=True, inputs=inputs, gates=rollout.Gates()),
    ]
    statuses, summaries = [], []
    for i, event in enumerate(history, 1):
        envelope = seal(event, actor="operator:alice", at=T0 + timedelta(seconds=i))
        model.apply(state, i, envelope, event)
        statuses.append(state.rollouts["r1"].status)
        summaries.append(change_row(i, envelope, event, lambda _: None).summary)
    assert statuses == ["running", "running", "waiting", "running", "running", "running"]
    assert summaries[0] == ("rollout r1 of b to every device started: 2 devices in 1 waves (2), on failure pause, "
                            "not before 2026-11-02T00:00:00.000000Z")
    assert summaries[2] == ("rollout r1 wave 1 waits for maintenance windows: ber (opens 2026-11-02T21:00:00.000000Z), "
                            "nyc (opens not within 8 days)")
    assert summaries[3] == "rollout r1 ignores maintenance windows from now: CVE fix"
    assert summaries[4] == "rollout r1 wave 1 no longer waits for maintenance windows"
    last_gate = state.rollouts["r1"].last_gate
    assert last_gate is not None
    assert "distributions" not in last_gate["inputs"]
