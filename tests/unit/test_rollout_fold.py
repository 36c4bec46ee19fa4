"""The rollout service's fold of recorded events (`RolloutService._fold`, no server: folding does no
I/O). A batch marks the devices another rollout took once per rollout, and must count each as it
stood when it was taken: a batch folded at once ends as the same events folded one at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from nats.aio.client import Client as NATS

from services.rollout import domain
from services.rollout.handlers import RolloutService
from services.rollout.spec import parse_canary
from shared.envelope import Event, seal
from shared.eventlog import EventLog, Recorded
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import DeviceReportedState
from shared.events.registry import DeviceAdded, SiteAdded
from shared.events.rollout import Gates, RolloutDevicesAssigned
from shared.times import format_time
from tests.unit.snapshots import FixedSnapshot

T0 = datetime(2026, 12, 1, tzinfo=UTC)
DEVICES = ["d1", "d2", "d3"]


def service() -> RolloutService:
    """A rollout service that only folds (its NATS connection and log are never used here)."""
    return RolloutService(cast(NATS, None), cast(EventLog, None))


def recorded(events: list[Event], first_seq: int) -> list[tuple[Recorded, Event | None]]:
    return [(Recorded(first_seq + n, event.subject, seal(event, actor="test", at=T0)), event)
            for n, event in enumerate(events)]


def history() -> list[Event]:
    """Three devices; rollout r-old gives all three its hash `h-old`."""
    started = domain.start(
        "r-old", snapshot_id="old", target="", snapshot=FixedSnapshot("h-old"), devices=dict.fromkeys(DEVICES, "s1"),
        canary=parse_canary(""), percents=[100], max_in_flight=10, bake_seconds=0,
        apply_timeout_seconds=60, gates=Gates(), on_failure="pause", approve_after=[], state=domain.initial("r-old"))
    assigned = [DesiredStateAssigned(device_id=d, site_id="s1", snapshot_id="old", config_hash="h-old", revision=1,
                                     rollout_id="r-old", reason="rollout") for d in DEVICES]
    return [SiteAdded(site_id="s1", name="s1"), *(DeviceAdded(device_id=d, site_id="s1") for d in DEVICES),
            *started, *assigned,
            RolloutDevicesAssigned(rollout_id="r-old", wave=0, at=format_time(T0), devices=DEVICES)]


def a_commit_of_r_new_and_then_reports() -> list[Event]:
    """r-new takes d1 and d2 from r-old before they report `h-old`; then d1, d2 and d3 report it."""
    return [*(DesiredStateAssigned(device_id=d, site_id="s1", snapshot_id="new", config_hash="h-new", revision=2,
                                   rollout_id="r-new", reason="rollout") for d in ("d1", "d2")),
            *(DeviceReportedState(device_id=d, snapshot_id="old", config_hash="h-old") for d in DEVICES)]


def test_a_batch_counts_the_devices_it_takes_as_they_stood_when_taken() -> None:
    at_once, one_by_one = service(), service()
    for folding in (at_once, one_by_one):
        folding._fold(recorded(history(), 1))
    batch = recorded(a_commit_of_r_new_and_then_reports(), 100)
    at_once._fold(batch)
    for pair in batch:
        one_by_one._fold([pair])
    left = {d: a.left for d, a in at_once.store.get("r-old").state.assigned.items()}
    # taken while in flight: timed out as at their deadline (the reports came after), whatever they say now
    assert left == {"d1": "timed_out", "d2": "timed_out", "d3": ""}
    assert at_once.store.get("r-old").state == one_by_one.store.get("r-old").state
    assert at_once.index.view.observed == one_by_one.index.view.observed
