"""Duties and the duty check's rule, without servers (shared.liveness, fleet.supervisor.judge)."""

from __future__ import annotations

from fleet.supervisor import judge
from projections.api.picture import judge_picture
from shared.liveness import Duty, DutyReport, PartReport, Vitals


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_duty_stalls_once_its_bound_has_passed_since_it_was_last_done() -> None:
    clock = Clock()
    duty = Duty("tick", 10.0, clock)
    clock.now += 10.0
    assert duty.stalled_since(clock.now) is None
    clock.now += 0.5
    assert duty.stalled_since(clock.now) == clock.now - 10.5
    duty.done()
    assert duty.stalled_since(clock.now) is None


def test_a_report_names_the_stalled_duty_and_since_when() -> None:
    clock = Clock()
    vitals = Vitals("drift", "host:/data/drift", clock)
    vitals.duty("heartbeats", 20.0)
    kept = vitals.duty("writes", 20.0)
    clock.now += 30.0
    kept.done()
    report = vitals.report()
    assert [d.name for d in report.stalled] == ["heartbeats"]
    assert report.stalled[0].stalled_since == "1970-01-12T13:46:40.000000Z"
    assert report.instance == "host:/data/drift"


def test_work_that_ends_stops_being_reported_and_work_that_begins_starts_as_done() -> None:
    clock = Clock()
    vitals = Vitals("rollout", "x", clock)
    duty = Duty("tick", 5.0, clock)
    clock.now += 100.0  # a long rebuild before serving is no stall
    vitals.add(duty)
    assert vitals.report().stalled == []
    vitals.remove("tick")
    assert vitals.report().duties == []


def _report(*duties: DutyReport) -> PartReport:
    return PartReport(part="drift", instance="x", at="2026-01-01T00:00:00.000000Z", duties=list(duties))


def test_judge_restarts_a_part_that_answers_with_a_stalled_duty() -> None:
    stalled = DutyReport(name="heartbeats", bound=20, last="2026-01-01T00:00:00.000000Z",
                         stalled_since="2026-01-01T00:00:00.000000Z")
    verdict = judge(_report(stalled), quiet_for=0, bound=60, last_answer=None)
    assert (verdict.stalled, verdict.since, verdict.restart) == ("heartbeats", stalled.stalled_since, True)


def test_judge_leaves_a_working_part_alone() -> None:
    kept = DutyReport(name="heartbeats", bound=20, last="2026-01-01T00:00:00.000000Z")
    assert not judge(_report(kept), quiet_for=1000, bound=60, last_answer=None).restart


def test_judge_restarts_a_part_silent_for_longer_than_the_bound_only() -> None:
    assert not judge(None, quiet_for=59, bound=60, last_answer="t").restart
    verdict = judge(None, quiet_for=61, bound=60, last_answer="t")
    assert (verdict.stalled, verdict.since, verdict.restart) == ("answering", "t", True)


def _drift(last: str, stalled_since: str | None = None) -> PartReport:
    duty = DutyReport(name="heartbeats", bound=20, last=last, stalled_since=stalled_since)
    return PartReport(part="drift", instance="x", at=last, duties=[duty])


T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T0_TEXT = "2027-01-15T08:00:00.000000Z"


def test_the_picture_is_fresh_while_drift_hears_what_it_expects() -> None:
    as_of, fresh = judge_picture([_drift(T0_TEXT)], now=T0 + 3, bound=22, last_as_of=None, watching_since=T0 - 100)
    assert as_of == T0
    assert (fresh.stale, fresh.as_of) == (False, T0_TEXT)


def test_the_picture_is_stale_since_drift_last_answered_once_it_stops_answering() -> None:
    _, fresh = judge_picture([], now=T0 + 21, bound=22, last_as_of=T0, watching_since=T0 - 100)
    assert not fresh.stale
    _, fresh = judge_picture([], now=T0 + 23, bound=22, last_as_of=T0, watching_since=T0 - 100)
    assert (fresh.stale, fresh.stale_since, fresh.reason) == (True, T0_TEXT, "drift is not answering")


def test_the_picture_is_stale_when_drift_says_its_hearing_stalled() -> None:
    _, fresh = judge_picture([_drift(T0_TEXT, T0_TEXT)], now=T0 + 1, bound=22, last_as_of=None,
                             watching_since=T0)
    assert (fresh.stale, fresh.stale_since) == (True, T0_TEXT)


def test_before_drift_ever_answers_the_picture_goes_stale_from_when_the_api_started() -> None:
    _, fresh = judge_picture([], now=T0 + 30, bound=22, last_as_of=None, watching_since=T0)
    assert (fresh.stale, fresh.as_of, fresh.stale_since) == (True, None, T0_TEXT)


def test_a_drift_that_answers_without_hearing_yet_is_starting() -> None:
    starting = PartReport(part="drift", instance="x", at=T0_TEXT, duties=[])
    _, fresh = judge_picture([starting], now=T0 + 30, bound=22, last_as_of=None, watching_since=T0)
    assert (fresh.stale, fresh.reason) == (True, "drift is starting (rebuilding its picture)")


def test_with_several_instances_the_picture_is_as_old_as_the_oldest_hearing() -> None:
    as_of, _ = judge_picture([_drift(T0_TEXT), _drift("2027-01-15T08:00:05.000000Z")], now=T0 + 6, bound=22,
                             last_as_of=None, watching_since=T0)
    assert as_of == T0


def test_fleet_status_names_the_stalled_duty_and_since_when() -> None:
    from fleet.cli.up import _duties

    assert _duties({"stalled": "heartbeats", "stalled_since": T0_TEXT}) == \
        f"[red]heartbeats stalled since {T0_TEXT}[/red]"
    assert _duties({"answered_at": T0_TEXT, "restarted_for": "answering stalled since t"}) == \
        "ok (restarted: answering stalled since t)"
    assert _duties({"answered_at": T0_TEXT}) == "ok"
    assert _duties({"name": "nats"}) == "-"  # a server: no duties
