"""Rollout progress in the fleet read model (issue 14): per wave, the projection counts exactly
what the rollout service's `device_status` says of each device, at every step of random
histories; a device a later rollout takes keeps counting where it stood in the earlier one, on
both sides (`domain.taken`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.fleet import model
from services.rollout import domain
from services.rollout.fleet_index import FleetIndex
from shared.envelope import Event, seal
from shared.events import desired, observed, registry, rollout
from shared.times import format_time

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DEVICES = [f"d{i}" for i in range(6)]
SITE_OF = {d: ("s1" if i % 2 else "s2") for i, d in enumerate(DEVICES)}
HASHES = {"s1": "h1", "s2": "h2"}
WAVES = [DEVICES[:2], DEVICES[2:]]
TIMEOUT = 10.0


class World:
    """Both sides fed the same events: the projection's fold and the rollout service's state."""

    def __init__(self) -> None:
        self.state = model.FleetState()
        self.index = FleetIndex()
        self.rollouts: dict[str, domain.Rollout] = {}
        self.seq = 0
        self.now = T0

    def feed(self, event: Event) -> None:
        self.seq += 1
        env = seal(event, actor="t", at=self.now)
        model.apply(self.state, self.seq, env, event)
        if isinstance(event, desired.DesiredStateAssigned):  # as the rollout service's handlers do
            loser = domain.taken_from(self.index.view.desired.get(event.device_id), event)
            if loser in self.rollouts:
                self.rollouts[loser] = domain.taken(self.rollouts[loser], [event.device_id], self.index.view)
        self.index.apply(self.seq, event)
        if env.aggregate == "rollout":
            state = self.rollouts.get(env.aggregate_id) or domain.initial(env.aggregate_id)
            self.rollouts[env.aggregate_id] = domain.evolve(state, event)

    def service_progress(self, rollout_id: str) -> list[dict[str, int]]:
        """What `fleet rollout status` shows per wave (handlers.describe)."""
        state = self.rollouts[rollout_id]
        out = []
        for number, wave in enumerate(state.waves):
            counts = {"wave": number, "size": len(wave)}
            for device in wave:
                status = domain.device_status(state, device, self.index.view, self.now)
                counts[status] = counts.get(status, 0) + 1
            out.append(counts)
        return out

    def projected(self, rollout_id: str) -> list[dict[str, int]]:
        row = self.state.rollouts[rollout_id]
        overdue = model.overdue_in(self.state, [rollout_id], format_time(self.now)).get(rollout_id, {})
        waves = model.wave_progress(row, self.state.progress.get(rollout_id, {}), overdue)
        return [{"wave": w.wave, "size": w.size,
                 **{k: getattr(w, k) for k in ("pending", "in_flight", "converged", "failed", "timed_out",
                                                "restored") if getattr(w, k)}} for w in waves]


def _start(world: World, rollout_id: str, snapshot: str) -> None:
    world.feed(rollout.RolloutStarted(rollout_id=rollout_id, snapshot_id=snapshot, target="",
                                      wave_sizes=[len(w) for w in WAVES], apply_timeout_seconds=TIMEOUT,
                                      config_hashes={s: f"{h}-{snapshot}" for s, h in HASHES.items()}))
    for number, wave in enumerate(WAVES):
        world.feed(rollout.RolloutWavePlanned(rollout_id=rollout_id, wave=number, devices=wave))
    world.feed(rollout.RolloutWaveStarted(rollout_id=rollout_id, wave=0))  # as domain.start records it


def _assign(world: World, rollout_id: str, snapshot: str, wave: int, devices: list[str]) -> None:
    for device in devices:
        world.feed(desired.DesiredStateAssigned(
            device_id=device, site_id=SITE_OF[device], snapshot_id=snapshot,
            config_hash=f"{HASHES[SITE_OF[device]]}-{snapshot}", revision=1, rollout_id=rollout_id))
    world.feed(rollout.RolloutDevicesAssigned(rollout_id=rollout_id, wave=wave, at=format_time(world.now),
                                              devices=devices))


def _fleet() -> World:
    world = World()
    for device in DEVICES:
        world.feed(registry.DeviceAdded(device_id=device, site_id=SITE_OF[device]))
    return world


step = st.tuples(st.integers(0, 6), st.sampled_from(DEVICES), st.integers(0, 2), st.integers(0, 2), st.integers(0, 8))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_projected_progress_equals_the_rollout_services_status(steps: list[tuple[int, str, int, int, int]]) -> None:
    world = _fleet()
    _start(world, "r1", "v")
    assigned: set[str] = set()
    rolled_back = False
    for kind, device, choice, health_choice, seconds in steps:
        world.now += timedelta(seconds=seconds)
        wanted = f"{HASHES[SITE_OF[device]]}-v"
        reported = (wanted, "other", None)[choice]
        health = ("ok", "degraded", "failed")[health_choice]
        match kind:
            case 0 if not rolled_back:
                wave = 0 if any(d not in assigned for d in WAVES[0]) else 1
                todo = [d for d in WAVES[wave] if d not in assigned][: choice + 1]
                if todo:
                    _assign(world, "r1", "v", wave, todo)
                    assigned.update(todo)
            case 1:
                world.feed(observed.DeviceCameOnline(device_id=device, site_id=SITE_OF[device], snapshot_id="v",
                                                     config_hash=reported, health=health))
            case 2:
                world.feed(observed.DeviceReportedState(device_id=device, snapshot_id="v", config_hash=reported))
            case 3:
                world.feed(observed.DeviceHealthChanged(device_id=device, health=health, previous="ok"))
            case 4:
                world.feed(observed.DeviceWentOffline(device_id=device, last_seen=format_time(world.now)))
            case 5 if assigned and not rolled_back:
                rolled_back = True
                world.feed(rollout.RolloutRollbackStarted(rollout_id="r1", devices=len(assigned)))
                for d in sorted(assigned):
                    world.feed(desired.DesiredStateAssigned(device_id=d, site_id=SITE_OF[d], snapshot_id="old",
                                                            config_hash="h-old", revision=2, rollout_id="r1",
                                                            reason="rollback"))
                world.feed(rollout.RolloutDevicesRestored(rollout_id="r1", devices=sorted(assigned)))
                world.feed(rollout.RolloutRolledBack(rollout_id="r1"))
            case _:
                pass
        assert world.projected("r1") == world.service_progress("r1")
    totals = model.progress_totals(model.wave_progress(world.state.rollouts["r1"], world.state.progress.get("r1", {}), {}))
    assert totals.assigned == len(assigned)
    assert totals.size == len(DEVICES)


later = st.tuples(st.integers(0, 7), st.sampled_from(DEVICES), st.integers(0, 3), st.integers(0, 2),
                 st.integers(0, 8))


@settings(max_examples=300, deadline=None)
@given(st.lists(later, max_size=50))
def test_both_count_alike_when_a_later_rollout_takes_devices(steps: list[tuple[int, str, int, int, int]]) -> None:
    """r1 assigns, r2 takes some of its devices (and others), r1 may roll back (taking its devices
    back from r2); both rollouts' progress agrees between the projection and the service."""
    world = _fleet()
    _start(world, "r1", "v")
    by: dict[str, set[str]] = {"r1": set(), "r2": set()}
    rolled_back = False
    for kind, device, choice, health_choice, seconds in steps:
        world.now += timedelta(seconds=seconds)
        reported = (f"{HASHES[SITE_OF[device]]}-v", f"{HASHES[SITE_OF[device]]}-w", "other", None)[choice]
        health = ("ok", "degraded", "failed")[health_choice]
        match kind:
            case 0 | 1 if not rolled_back:
                rollout_id, snapshot = ("r1", "v") if kind == 0 else ("r2", "w")
                if rollout_id not in world.rollouts:
                    _start(world, rollout_id, snapshot)
                mine = by[rollout_id]
                wave = 0 if any(d not in mine for d in WAVES[0]) else 1
                # r1 assigns only devices nobody had; r2 takes any it has not had yet
                todo = [d for d in WAVES[wave] if d not in mine and (kind == 1 or d not in by["r2"])][: choice + 1]
                if todo:
                    _assign(world, rollout_id, snapshot, wave, todo)
                    mine.update(todo)
            case 2:
                world.feed(observed.DeviceCameOnline(device_id=device, site_id=SITE_OF[device], snapshot_id="v",
                                                     config_hash=reported, health=health))
            case 3:
                world.feed(observed.DeviceReportedState(device_id=device, snapshot_id="v", config_hash=reported))
            case 4:
                world.feed(observed.DeviceHealthChanged(device_id=device, health=health, previous="ok"))
            case 5:
                world.feed(observed.DeviceWentOffline(device_id=device, last_seen=format_time(world.now)))
            case 6 if by["r1"] and not rolled_back:
                rolled_back = True
                world.feed(rollout.RolloutRollbackStarted(rollout_id="r1", devices=len(by["r1"])))
                for d in sorted(by["r1"]):
                    world.feed(desired.DesiredStateAssigned(device_id=d, site_id=SITE_OF[d], snapshot_id="old",
                                                            config_hash="h-old", revision=2, rollout_id="r1",
                                                            reason="rollback"))
                world.feed(rollout.RolloutDevicesRestored(rollout_id="r1", devices=sorted(by["r1"])))
                world.feed(rollout.RolloutRolledBack(rollout_id="r1"))
            case _:
                pass
        for rollout_id in world.rollouts:
            assert world.projected(rollout_id) == world.service_progress(rollout_id), rollout_id


def test_a_device_taken_by_a_later_rollout_keeps_its_standing_in_the_earlier_one() -> None:
    world = _fleet()
    _start(world, "r1", "v")
    _assign(world, "r1", "v", 0, WAVES[0])
    _assign(world, "r1", "v", 1, WAVES[1])
    for device in DEVICES[:5]:  # five apply v; d5 never reports
        world.feed(observed.DeviceCameOnline(device_id=device, site_id=SITE_OF[device], snapshot_id="v",
                                             config_hash=f"{HASHES[SITE_OF[device]]}-v"))
    world.feed(rollout.RolloutAborted(rollout_id="r1"))
    before = world.projected("r1")
    assert before == [{"wave": 0, "size": 2, "converged": 2}, {"wave": 1, "size": 4, "converged": 3, "in_flight": 1}]
    _start(world, "r2", "w")
    _assign(world, "r2", "w", 0, WAVES[0])
    _assign(world, "r2", "w", 1, WAVES[1])
    for device in DEVICES:
        world.feed(observed.DeviceReportedState(device_id=device, snapshot_id="w",
                                                config_hash=f"{HASHES[SITE_OF[device]]}-w"))
    # r1 as it stood when r2 took its devices; the one still in flight then never made it
    assert world.projected("r1") == [{"wave": 0, "size": 2, "converged": 2},
                                     {"wave": 1, "size": 4, "converged": 3, "timed_out": 1}]
    assert world.projected("r2") == [{"wave": 0, "size": 2, "converged": 2}, {"wave": 1, "size": 4, "converged": 4}]
    # and the rollout service counts both the same way
    assert world.service_progress("r1") == world.projected("r1")
    assert world.service_progress("r2") == world.projected("r2")


def test_progress_survives_a_point_in_time_copy() -> None:
    from projections.fleet.snapshots import changed_since, decode_state, encode_state, lay_over

    world = _fleet()
    _start(world, "r1", "v")
    _assign(world, "r1", "v", 0, WAVES[0])
    copy = decode_state(encode_state(world.state))
    assert copy.progress == world.state.progress
    base = world.seq
    world.feed(observed.DeviceCameOnline(device_id="d0", site_id=SITE_OF["d0"], config_hash="h2-v"))
    lay_over(copy, decode_state(encode_state(changed_since(world.state, base))))
    assert copy.progress == world.state.progress
    assert copy.devices == world.state.devices
