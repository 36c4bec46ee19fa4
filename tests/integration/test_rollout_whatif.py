"""`what_if` through the real rollout service: verdicts recorded in the log (one rollout started 40
days ago, two recent) are rebuilt at start-up and judged again with proposed gates, for one rollout
or for every rollout within `since`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nats.aio.client import Client as NATS

from services.rollout import domain
from services.rollout.handlers import RolloutService
from services.rollout.spec import parse_metric_gate
from shared.commands import CommandClient
from shared.envelope import Event, seal
from shared.errors import Invalid
from shared.eventlog import EventLog, Write
from shared.events.rollout import GateInputs, Gates, RolloutGateEvaluated, RolloutStarted
from shared.times import format_time, utcnow

GATES = Gates(min_healthy=0.9, metrics=[parse_metric_gate("error_rate p95<=0.02")])


def verdict(rollout_id: str, healthy: int, rates: list[float]) -> RolloutGateEvaluated:
    inputs = GateInputs(devices=len(rates), healthy=healthy, converged=len(rates), failed=0, timed_out=0,
                        offline=0, degraded=0, distributions={"error_rate": domain.distribution(rates)},
                        distributions_recorded=True)
    judged = domain.judge(inputs, GATES)
    return RolloutGateEvaluated(rollout_id=rollout_id, wave=0, passed=not judged.reasons, gates=GATES,
                                inputs=inputs, reasons=judged.reasons)


async def test_what_if_over_one_rollout_and_over_a_window(nc: NATS, eventlog: EventLog) -> None:
    now = utcnow()
    for rollout_id, age, gate in (("r-old", 40, verdict("r-old", 10, [0.03] * 10)),
                                  ("r-good", 2, verdict("r-good", 10, [0.001] * 9 + [0.015])),
                                  ("r-bad", 1, verdict("r-bad", 8, [0.001] * 10))):
        events: list[Event] = [RolloutStarted(rollout_id=rollout_id, snapshot_id="s", target="", gates=GATES,
                                              wave_sizes=[10]), gate]
        at = format_time(now - timedelta(days=age))
        await eventlog.append_batch([Write(f"fleet.evt.rollout.{rollout_id}",
                                           [seal(e, actor="service:rollout", at=at) for e in events], 0)])
    service = RolloutService(nc, eventlog, tick_interval=3600)
    await service.start()
    try:
        client = CommandClient(nc, actor="operator:alice")
        p99 = {"metric": "error_rate", "aggregate": "p99", "op": "<=", "value": 0.01}
        one = (await client.send("rollout", "what_if", {"rollout_id": "r-good", "metrics": [p99]})).result
        [good] = one["results"]
        assert good["outcome"] == "stops_earlier"
        assert good["waves"][0]["what_if_reasons"] == ["error_rate p99 = 0.015, wanted <= 0.01"]
        window = (await client.send("rollout", "what_if", {"since_seconds": 30 * 86400, "min_healthy": 0.8,
                                                           "metrics": [p99]})).result
        assert {r["rollout_id"]: r["outcome"] for r in window["results"]} == {"r-good": "stops_earlier",
                                                                             "r-bad": "would_pass"}
        assert window["summary"] == ("1 of 2 rollouts would have stopped earlier; 1 of 1 rollouts that failed a "
                                     "gate would have passed it")
        with pytest.raises(Invalid):
            await client.send("rollout", "what_if", {"since_seconds": 0})
    finally:
        await service.stop()
