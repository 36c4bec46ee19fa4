"""The pure side of the projections: the fleet fold, incremental counters, change rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.changes.model import change_row, site_change
from projections.fleet import model
from projections.fleet.filters import NO_PROBLEM, problem_rank
from projections.fleet.snapshots import decode_state, encode_state
from shared.envelope import Event, seal
from shared.events import desired, observed, registry, snapshot

DEVICES = ["d1", "d2", "d3"]
SITES = ["s1", "s2"]
SNAPS = ["a", "b"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _event(kind: int, device: str, site: str, snap: str, flag: bool) -> Event:
    match kind:
        case 0:
            return registry.DeviceAdded(device_id=device, site_id=site, labels={"tier": "edge" if flag else "core"})
        case 1:
            return registry.DeviceMoved(device_id=device, from_site_id="x", to_site_id=site)
        case 2:
            return registry.DeviceRetired(device_id=device)
        case 3:
            return desired.DesiredStateAssigned(device_id=device, site_id=site, snapshot_id=snap,
                                                config_hash=f"h{snap}", revision=1)
        case 4:
            return observed.DeviceCameOnline(device_id=device, site_id=site, snapshot_id=snap, config_hash=f"h{snap}",
                                             health="ok" if flag else "degraded")
        case 5:
            return observed.DeviceWentOffline(device_id=device, last_seen="2026-11-01T00:00:00.000000Z")
        case 6:
            return observed.DeviceReportedState(device_id=device, snapshot_id=snap if flag else None, config_hash=None)
        case 7:
            return observed.DeviceHealthChanged(device_id=device, health="failed" if flag else "ok", previous="ok")
        case 8:
            return observed.DriftBegan(device_id=device, desired_snapshot_id=snap, desired_config_hash=None,
                                       reported_snapshot_id=None, reported_config_hash=None,
                                       since="2026-11-01T00:00:00.000000Z")
        case 9:
            return observed.DriftEnded(device_id=device, duration_seconds=3.0)
        case 10:
            return observed.DeviceStuck(device_id=device, attempts=5)
        case 12:
            return observed.DriftAcknowledged(device_id=device, reason="accepted")
        case 13:
            return observed.ReconcileForced(device_id=device)
        case _:
            return registry.DeviceRelabeled(device_id=device, labels={"hw": "v2"})


events = st.lists(
    st.builds(_event, st.integers(0, 13), st.sampled_from(DEVICES), st.sampled_from(SITES), st.sampled_from(SNAPS),
              st.booleans()),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 7))
def test_counters_kept_by_deltas_equal_a_full_recount(history: list[Event], batch: int) -> None:
    """What the runner does per batch (load rows, fold, add new and remove old contributions)
    gives the same counters as counting the final state from scratch."""
    envelopes = [seal(e, actor="t", at=T0 + timedelta(seconds=i)) for i, e in enumerate(history)]
    stored: dict[str, model.DeviceRow] = {}
    cells: dict[model.CounterKey, list[int]] = {}
    for start in range(0, len(history), batch):
        part = list(range(start, min(start + batch, len(history))))
        state = model.FleetState(devices=dict(stored))
        before = dict(state.devices)
        for i in part:
            model.apply(state, i + 1, envelopes[i], history[i])
        for device, row in state.devices.items():
            if before.get(device) is not row:
                model.add_counts(cells, before.get(device), -1)
                model.add_counts(cells, row, 1)
        stored = state.devices
    whole = model.FleetState()
    for i, event in enumerate(history):
        model.apply(whole, i + 1, envelopes[i], event)
    assert whole.devices == stored
    assert {k: v for k, v in cells.items() if any(v)} == model.count_all(whole)
    for values in cells.values():
        assert all(v >= 0 for v in values)


def test_fold_tracks_a_device_through_its_life() -> None:
    state = model.FleetState()
    history: list[Event] = [
        registry.DeviceAdded(device_id="d1", site_id="s1", labels={"tier": "edge"}),
        desired.DesiredStateAssigned(device_id="d1", site_id="s1", snapshot_id="a", config_hash="ha", revision=1,
                                     rollout_id="r1"),
        observed.DeviceCameOnline(device_id="d1", site_id="s1", snapshot_id="b", config_hash="hb"),
        observed.DriftBegan(device_id="d1", desired_snapshot_id="a", desired_config_hash="ha",
                            reported_snapshot_id="b", reported_config_hash="hb", since="2026-11-01T00:01:00.000000Z"),
        observed.DeviceHealthChanged(device_id="d1", health="degraded", previous="ok"),
    ]
    for i, event in enumerate(history, 1):
        model.apply(state, i, seal(event, actor="t", at=T0 + timedelta(seconds=i)), event)
    row = state.devices["d1"]
    assert (row.site_id, row.desired_snapshot_id, row.reported_snapshot_id, row.rollout_id) == ("s1", "a", "b", "r1")
    assert (row.online, row.health, row.drifted_since) == (True, "degraded", "2026-11-01T00:01:00.000000Z")
    assert row.last_seen == "2026-11-01T00:00:03.000000Z"
    assert problem_rank(row) == 3
    assert model.count_all(state) == {("s1", "b"): [1, 1, 0, 0, 1, 0, 0, 1, 0]}
    decoded = decode_state(encode_state(state))
    assert decoded.devices == state.devices and decoded.seq == state.seq


def test_problem_rank_orders_worst_first() -> None:
    base = model.DeviceRow(device_id="d", registered=True, online=True, health="ok")
    offline = model.DeviceRow(device_id="d", registered=True, online=False)
    failed = model.DeviceRow(device_id="d", registered=True, online=True, health="failed")
    drifted = model.DeviceRow(device_id="d", registered=True, online=True, health="ok", drifted_since="x")
    assert [problem_rank(r) for r in (offline, failed, drifted, base)] == [0, 1, 4, NO_PROBLEM]
    accepted = model.DeviceRow(device_id="d", registered=True, online=True, drifted_since="x", stuck=True,
                               acknowledged=True)
    assert problem_rank(accepted) == 5


def test_an_acknowledged_drift_and_a_forced_reconcile_fold() -> None:
    state = model.FleetState()
    history: list[Event] = [
        registry.DeviceAdded(device_id="d1", site_id="s1"),
        observed.DeviceCameOnline(device_id="d1", site_id="s1", snapshot_id="b", config_hash="hb"),
        observed.DriftBegan(device_id="d1", desired_snapshot_id="a", desired_config_hash="ha",
                            reported_snapshot_id="b", reported_config_hash="hb", since="2026-11-01T00:01:00.000000Z"),
        observed.DeviceStuck(device_id="d1", attempts=3),
        observed.ReconcileForced(device_id="d1", reason="disk"),
        observed.DriftAcknowledged(device_id="d1", reason="lab unit"),
    ]
    rows = []
    for i, event in enumerate(history, 1):
        model.apply(state, i, seal(event, actor="operator:t", at=T0 + timedelta(seconds=i)), event)
        rows.append(state.devices["d1"])
    assert rows[3].stuck and not rows[4].stuck and rows[4].reconcile_attempts == 0
    assert rows[5].acknowledged and problem_rank(rows[5]) == 5
    ended = observed.DriftEnded(device_id="d1", duration_seconds=9.0)
    model.apply(state, 7, seal(ended, actor="t", at=T0), ended)
    assert not state.devices["d1"].acknowledged
    assert change_row(8, seal(history[-1], actor="operator:t", at=T0), history[-1], lambda _: "s1").summary == (
        "device d1 drift acknowledged: lab unit")


def test_snapshots_and_sites_fold() -> None:
    state = model.FleetState()
    history: list[Event] = [
        registry.SiteAdded(site_id="s1", name="One"),
        registry.SiteRetired(site_id="s1", reason="closed"),
        snapshot.SnapshotCreated(snapshot_id="a", name="edge", version=1, config={}),
        snapshot.SnapshotMarkedKnownGood(snapshot_id="a", target="tier=edge"),
        snapshot.SnapshotMarkedKnownGood(snapshot_id="a", target="tier=edge"),
    ]
    for i, event in enumerate(history, 1):
        model.apply(state, i, seal(event, actor="t", at=T0), event)
    assert state.sites["s1"].retired and state.sites["s1"].name == "One"
    assert state.snapshots["a"].known_good_targets == ["tier=edge"]


def test_change_rows_say_who_what_where() -> None:
    moved = registry.DeviceMoved(device_id="d1", from_site_id="s1", to_site_id="s2")
    assert site_change(moved) == ("d1", "s2")
    health = observed.DeviceHealthChanged(device_id="d1", health="failed", previous="ok")
    row = change_row(7, seal(health, actor="service:drift", at=T0), health, {"d1": "s2"}.get)
    assert (row.seq, row.actor, row.device_id, row.site_id, row.type) == (7, "service:drift", "d1", "s2",
                                                                            "DeviceHealthChanged")
    assert row.summary == "device d1 health ok -> failed"
    assigned = desired.DesiredStateAssigned(device_id="d1", site_id="s2", snapshot_id="b", config_hash="h", revision=2,
                                            rollout_id="r9", previous_snapshot_id="a")
    row = change_row(8, seal(assigned, actor="service:rollout", at=T0), assigned, lambda _: None)
    assert (row.snapshot_id, row.rollout_id, row.site_id) == ("b", "r9", "s2")
    assert "rollout r9" in row.summary and "was a" in row.summary


def test_rollout_events_fold_into_the_rollouts_row() -> None:
    from shared.events import rollout

    state = model.FleetState()
    inputs = rollout.GateInputs(devices=2, healthy=1, converged=2, failed=1, timed_out=0, offline=0, degraded=0)
    history: list[Event] = [
        rollout.RolloutStarted(rollout_id="r1", snapshot_id="b", target="tier=edge", wave_percents=[50, 100],
                               wave_sizes=[2, 2]),
        rollout.RolloutWaveStarted(rollout_id="r1", wave=0),
        rollout.RolloutDevicesAssigned(rollout_id="r1", wave=0, at="2026-11-01T00:00:00.000000Z", devices=["d1", "d2"]),
        rollout.RolloutWaveBaking(rollout_id="r1", wave=0, until="2026-11-01T00:01:00.000000Z"),
        rollout.RolloutGateEvaluated(rollout_id="r1", wave=0, passed=False, inputs=inputs, gates=rollout.Gates(),
                                     reasons=["failed 0.50 > 0.05"]),
        rollout.RolloutRollbackStarted(rollout_id="r1", reason="gate failed", devices=2),
        rollout.RolloutDevicesRestored(rollout_id="r1", devices=["d1", "d2"]),
    ]
    statuses = []
    for i, event in enumerate(history, 1):
        model.apply(state, i, seal(event, actor="service:rollout", at=T0 + timedelta(seconds=i)), event)
        statuses.append(state.rollouts["r1"].status)
    row = state.rollouts["r1"]
    assert statuses == ["running", "running", "running", "baking", "baking", "rolling_back", "rolling_back"]
    assert (row.snapshot_id, row.target, row.wave) == ("b", "tier=edge", 0)
    assert row.counts == {"devices": 4, "waves": 2, "assigned": 2, "restored": 2}
    assert row.last_gate is not None
    assert row.last_gate["passed"] is False
    assert row.last_gate["inputs"]["failed"] == 1
    done = rollout.RolloutRolledBack(rollout_id="r1")
    model.apply(state, 9, seal(done, actor="service:rollout", at=T0), done)
    assert state.rollouts["r1"].status == "rolled_back"
    row8 = change_row(8, seal(history[4], actor="service:rollout", at=T0), history[4], lambda _: None)
    assert row8.rollout_id == "r1"
    assert row8.summary == ("rollout r1 wave 1 gate failed: failed 0.50 > 0.05 (healthy 1/2, failed 1, offline 0, "
                            "timed out 0)")
