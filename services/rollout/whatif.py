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
from shared.contract.rollout import Outcome, Proposal, RolloutWhatIf, WaveWhatIf, WhatIfGates
from shared.events.rollout import Gates, RolloutGateEvaluated


def proposal_of(command: WhatIfGates) -> Proposal:
    """The thresholds a what-if command proposes."""
    return Proposal(min_healthy=command.min_healthy, max_failed=command.max_failed,
                    max_offline=command.max_offline,
                    metrics=None if command.metrics is None else [m.gate() for m in command.metrics])


def applied_to(proposal: Proposal, recorded: Gates) -> Gates:
    """The gates a rollout started with, with the proposals in their place."""
    return Gates(
        min_healthy=recorded.min_healthy if proposal.min_healthy is None else proposal.min_healthy,
        max_failed=recorded.max_failed if proposal.max_failed is None else proposal.max_failed,
        max_offline=recorded.max_offline if proposal.max_offline is None else proposal.max_offline,
        metrics=recorded.metrics if proposal.metrics is None else proposal.metrics)


def what_if(rollout_id: str, status: str, verdicts: Sequence[RolloutGateEvaluated],
            proposal: Proposal) -> RolloutWhatIf:
    """Judge every recorded verdict of one rollout again with the proposed gates."""
    waves: list[WaveWhatIf] = []
    for recorded in verdicts:
        inputs, gates = recorded.inputs, applied_to(proposal, recorded.gates)
        # The service reads heartbeat metrics only for rollouts gated on some metric: a metric
        # neither gated nor recorded then was not observed, which is not "no device reported it".
        watched = {g.metric for g in recorded.gates.metrics} | set(inputs.distributions)
        unseen = [g for g in gates.metrics if g.metric not in watched]
        verdict = judge(inputs, msgspec.structs.replace(gates, metrics=[g for g in gates.metrics if g not in unseen]))
        if unseen:
            verdict = Verdict(verdict.reasons, verdict.metrics, [*verdict.unknown, *(
                f"{g.metric} {g.aggregate}: not observed (this rollout had no gate on {g.metric})" for g in unseen)])
        waves.append(WaveWhatIf(
            wave=recorded.wave + 1, devices=inputs.devices, healthy=inputs.healthy, failed=inputs.failed,
            offline=inputs.offline, recorded_passed=recorded.passed, recorded_reasons=list(recorded.reasons),
            recorded_metrics=dict(inputs.metrics), what_if_passed=verdict.passed,
            what_if_reasons=verdict.reasons, what_if_metrics=verdict.metrics, unknown=verdict.unknown))
    return RolloutWhatIf(rollout_id=rollout_id, status=status, outcome=_outcome(waves), waves=waves)


def _outcome(waves: Sequence[WaveWhatIf]) -> Outcome:
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
