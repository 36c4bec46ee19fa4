"""`fleet rollout watch` stops only at a terminal status or a pause that needs an operator, and its
exit code tells the truth: the rollout is driven through its real transitions by the pure domain
on an injected clock, one decided event at a time, while the watch loop polls it."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet.cli.rollout import WATCH_FAILED, WATCH_NEEDS_OPERATOR, WATCH_OK, watch_exit, watch_until_done
from services.rollout import domain
from services.rollout.domain import Desired, FleetView, Observed, Rollout
from services.rollout.spec import parse_canary, parse_waves
from shared.envelope import Event
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import Gates
from tests.unit.snapshots import FixedSnapshot

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Driven:
    """A rollout the domain advances on a fake clock; each poll lands one more decided event, so
    the watch sees every intermediate status (rolling_back included), as a slow service shows it."""

    def __init__(self, *, healthy: bool, on_failure: str = "rollback", approve_after: list[int] | None = None,
                 bake: float = 30) -> None:
        devices = {f"d{i}": f"s{i % 2}" for i in range(6)}
        self.now = T0
        self.healthy = healthy
        self.state: Rollout = domain.initial("r1")
        self.view = FleetView(site_of=dict(devices), desired={d: Desired("old", "h-old", 1) for d in devices},
                              observed={d: Observed(online=True, config_hash="h-old") for d in devices})
        self.pending: deque[Event] = deque(domain.start(
            "r1", snapshot_id="new", target="", devices=devices, snapshot=FixedSnapshot("h-new"),
            canary=parse_canary("2"), percents=parse_waves("50,100"), max_in_flight=10,
            bake_seconds=bake, apply_timeout_seconds=60, gates=Gates(min_healthy=1.0), on_failure=on_failure,
            approve_after=approve_after or [], state=self.state))
        self.seen: list[tuple[str, str]] = []
        self.slept = 0.0

    def _land(self, event: Event) -> None:
        if isinstance(event, DesiredStateAssigned):
            self.view.desired[event.device_id] = Desired(event.snapshot_id, event.config_hash, event.revision)
            if event.reason == "rollout":  # the device applies it, healthy or not
                self.view.observed[event.device_id] = Observed(
                    online=True, config_hash=event.config_hash, health="ok" if self.healthy else "failed")
        else:
            self.state = domain.evolve(self.state, event)

    async def get(self) -> dict[str, Any]:
        if not self.pending:
            self.pending.extend(domain.tick(self.state, self.view, self.now))
        if self.pending:
            self._land(self.pending.popleft())
        result = {"status": self.state.status, "phase": self.state.phase}
        self.seen.append((result["status"], result["phase"]))
        return result

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.slept += seconds


async def test_a_failed_gate_that_rolls_back_is_watched_to_the_end_and_exits_1() -> None:
    rollout = Driven(healthy=False, on_failure="rollback")
    result, code = await watch_until_done(rollout.get, rollout.sleep, 5.0)
    assert ("rolling_back", "gate_failed") in rollout.seen  # the old watch stopped here with 0
    assert result["status"] == "rolled_back"
    assert code == WATCH_FAILED
    assert rollout.slept >= 30  # the bake ran on the injected clock, nothing really waited


async def test_a_failed_gate_that_pauses_exits_1_and_a_healthy_rollout_exits_0() -> None:
    paused = Driven(healthy=False, on_failure="pause")
    result, code = await watch_until_done(paused.get, paused.sleep, 5.0)
    assert (result["status"], result["phase"], code) == ("paused", "gate_failed", WATCH_FAILED)
    healthy = Driven(healthy=True)
    result, code = await watch_until_done(healthy.get, healthy.sleep, 5.0)
    assert (result["status"], code) == ("completed", WATCH_OK)
    assert ("running", "baking") in healthy.seen


async def test_a_wave_held_for_promote_stops_the_watch_for_an_operator() -> None:
    held = Driven(healthy=True, approve_after=[0])
    result, code = await watch_until_done(held.get, held.sleep, 5.0)
    assert (result["status"], result["phase"], code) == ("running", "held", WATCH_NEEDS_OPERATOR)


@pytest.mark.parametrize(("status", "phase", "code"), [
    ("running", "assigning", None), ("running", "baking", None), ("rolling_back", "gate_failed", None),
    ("rolling_back", "assigning", None), ("rolled_back", "gate_failed", WATCH_FAILED),
    ("rolled_back", "assigning", WATCH_FAILED), ("aborted", "baking", WATCH_FAILED),
    ("paused", "gate_failed", WATCH_FAILED), ("paused", "assigning", WATCH_NEEDS_OPERATOR),
    ("completed", "baking", WATCH_OK),
])
def test_every_status_has_one_meaning(status: str, phase: str, code: int | None) -> None:
    assert watch_exit({"status": status, "phase": phase}) == code
