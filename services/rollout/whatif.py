"""Gate what-if: what proposed gate thresholds would have decided, judged on the inputs every gate
verdict recorded in the log, with the same `judge` the rollout uses when a bake ends. Pure.

Per rollout, the recorded verdicts are replayed in order and each is judged again with the
proposed gates (a threshold not proposed keeps the value the rollout was started with; proposed
metric gates replace the recorded ones). A rollout "would have stopped earlier" when the proposed
gates fail a verdict before the first one that failed in the log (or fail one where none did);
a rollout that failed a gate "would have passed" when the proposed gates pass every verdict up to
and including the one that failed. Waves after a real stop never ran, so nothing is said of them.
A metric gate on an event recorded before distributions were is judged from the recorded
aggregate when it asks for the same one, else reported as not recorded; a metric the rollout
had no gate on (so its heartbeats were not read) is reported as not observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from services.rollout.domain import Verdict, judge
from services.rollout.spec import parse_fraction, parse_metric_gate
from shared.events.rollout import Gates, RolloutGateEvaluated


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """Proposed thresholds; None keeps what each rollout was started with."""

    min_healthy: float | None = None
    max_failed: float | None = None
    max_offline: float | None = None
    metrics: list[str] | None = None  # replaces the recorded metric gates when given

    @classmethod
    def parse(cls, min_healthy: str | float | None, max_failed: str | float | None,
              max_offline: str | float | None, metrics: Sequence[str] | None) -> Proposal:
        """From what an operator typed (fractions `99%`/`0.99`, metric gates `NAME pN<=X`)."""
        for text in metrics or ():
            parse_metric_gate(text)
        return cls(
            min_healthy=None if min_healthy is None else parse_fraction(min_healthy, "min_healthy"),
            max_failed=None if max_failed is None else parse_fraction(max_failed, "max_failed"),
            max_offline=None if max_offline is None else parse_fraction(max_offline, "max_offline"),
            metrics=list(metrics) if metrics else None)

    def applied_to(self, recorded: Gates) -> Gates:
        """The gates a rollout started with, with these proposals in their place."""
        return Gates(
            min_healthy=recorded.min_healthy if self.min_healthy is None else self.min_healthy,
            max_failed=recorded.max_failed if self.max_failed is None else self.max_failed,
            max_offline=recorded.max_offline if self.max_offline is None else self.max_offline,
            metrics=recorded.metrics if self.metrics is None else [parse_metric_gate(m) for m in self.metrics])


class WaveWhatIf(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded verdict beside the what-if verdict, with the numbers of both."""

    wave: int
    devices: int
    healthy: int
    failed: int
    offline: int
    recorded_passed: bool
    recorded_reasons: list[str]
    recorded_metrics: dict[str, float]
    what_if_passed: bool | None  # None: a rule could not be judged from what was recorded
    what_if_reasons: list[str]
    what_if_metrics: dict[str, float]
    unknown: list[str] = []


class RolloutWhatIf(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout's recorded verdicts judged again; `outcome` is one of same, stops_earlier,
    would_pass, unknown, no_gates."""

    rollout_id: str
    status: str
    outcome: str
    waves: list[WaveWhatIf]


def what_if(rollout_id: str, status: str, verdicts: Sequence[RolloutGateEvaluated],
            proposal: Proposal) -> RolloutWhatIf:
    """Judge every recorded verdict of one rollout again with the proposed gates."""
    waves: list[WaveWhatIf] = []
    for recorded in verdicts:
        inputs, gates = recorded.inputs, proposal.applied_to(recorded.gates)
        # The service reads heartbeat metrics only for rollouts gated on some metric: a metric
        # neither gated nor recorded then was not observed, which is not "no device reported it".
        watched = {g.metric for g in recorded.gates.metrics} | set(inputs.distributions)
        unseen = [g for g in gates.metrics if g.metric not in watched]
        verdict = judge(inputs, msgspec.structs.replace(gates, metrics=[g for g in gates.metrics if g not in unseen]))
        if unseen:
            verdict = Verdict(verdict.reasons, verdict.metrics, [*verdict.unknown, *(
                f"{g.metric} {g.aggregate}: not observed (this rollout had no gate on {g.metric})" for g in unseen)])
        waves.append(WaveWhatIf(
            wave=recorded.wave, devices=inputs.devices, healthy=inputs.healthy, failed=inputs.failed,
            offline=inputs.offline, recorded_passed=recorded.passed, recorded_reasons=list(recorded.reasons),
            recorded_metrics=dict(inputs.metrics), what_if_passed=verdict.passed,
            what_if_reasons=verdict.reasons, what_if_metrics=verdict.metrics, unknown=verdict.unknown))
    return RolloutWhatIf(rollout_id=rollout_id, status=status, outcome=_outcome(waves), waves=waves)


def _outcome(waves: Sequence[WaveWhatIf]) -> str:
    if not waves:
        return "no_gates"
    for wave in waves:  # in recorded order: the first difference that stops the rollout decides
        if wave.what_if_passed is False:
            return "same" if not wave.recorded_passed else "stops_earlier"
        if wave.what_if_passed is None:
            return "unknown"
        if not wave.recorded_passed:
            return "would_pass"
    return "same"


def summarize(results: Sequence[RolloutWhatIf]) -> dict[str, Any]:
    """Counts over many rollouts and the sentence that says them."""
    judged = [r for r in results if r.outcome != "no_gates"]
    earlier = sum(r.outcome == "stops_earlier" for r in judged)
    would_pass = sum(r.outcome == "would_pass" for r in judged)
    unknown = sum(r.outcome == "unknown" for r in judged)
    failed = sum(any(not w.recorded_passed for w in r.waves) for r in judged)
    text = (f"{earlier} of {len(judged)} rollouts would have stopped earlier; {would_pass} of {failed} "
            f"rollouts that failed a gate would have passed it")
    if unknown:
        text += f"; {unknown} could not be judged (a metric not recorded or not observed)"
    if len(results) > len(judged):
        text += f"; {len(results) - len(judged)} had no gate verdict yet"
    return {"rollouts": len(results), "judged": len(judged), "stops_earlier": earlier,
            "failed": failed, "would_pass": would_pass, "unknown": unknown, "summary": text}
