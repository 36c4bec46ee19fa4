"""The rollout aggregate's fold at scale: one rollout of N devices folded event by event, as the
rollout service folds its own commits and a replay folds the log. No server: this is the pure
domain's cost, the part of a rollout that the immutable aggregate (issue 13) could have made slow.

    .venv/bin/python -m benchmarks.rollout_fold [--devices 1000000] [--rounds 3]

Phases, each timed over the whole rollout:
- plan: the start's events (RolloutStarted, the wave plan in parts of 10,000, wave 0 started);
- assign: a RolloutDevicesAssigned per chunk of 999 devices in plan order, as `tick` decides them;
- status: `tick` once with every device assigned and in flight (every device judged);
- taken: a later rollout takes the devices: 100,000 of them one at a time (as a replay folds its
  desired events), the others a chunk of 999 at a time (as the service folds its own commit);
- restore: a rollback's RolloutDevicesRestored per chunk of 999, in plan order.

The raw limit beside each phase: the same per-device bookkeeping done in place in a plain dict (a
dict insert or replace per device), what a mutable fold costs at the least.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from services.rollout import domain
from services.rollout.domain import Assignment, Desired, FleetView, Observed
from services.rollout.fleet_index import SnapshotInfo
from services.rollout.spec import parse_canary
from shared.events.rollout import Gates, RolloutDevicesAssigned, RolloutDevicesRestored, RolloutRollbackStarted
from shared.times import format_time

T0 = datetime(2026, 12, 1, tzinfo=UTC)
TAKEN = 100_000


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def one_round(devices: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(ours, raw) seconds per phase."""
    start_events = domain.start(
        "r-big", snapshot_id="new", target="", snapshot=SnapshotInfo("bench", 1, {"app": {"v": 2}}), devices=devices, canary=parse_canary(""),
        percents=[100], max_in_flight=len(devices), bake_seconds=0, apply_timeout_seconds=600,
        gates=Gates(), on_failure="pause", approve_after=[], state=domain.initial("r-big"))
    state = domain.initial("r-big")

    def plan() -> None:
        nonlocal state
        for event in start_events:
            state = domain.evolve(state, event)

    out: dict[str, tuple[float, float]] = {}
    plan_seconds = timed(plan)
    order = list(state.devices)
    raw_plan = timed(lambda: {device: position for position, device in enumerate(order)})
    out["plan"] = (plan_seconds, raw_plan)

    at = format_time(T0)
    chunks = [order[i:i + domain.CHUNK] for i in range(0, len(order), domain.CHUNK)]
    assigned_events = [RolloutDevicesAssigned(rollout_id="r-big", wave=0, at=at, devices=chunk,
                                              previous={d: ["old", "h-old"] for d in chunk}) for chunk in chunks]

    def assign() -> None:
        nonlocal state
        for event in assigned_events:
            state = domain.evolve(state, event)

    raw: dict[str, Assignment] = {}

    def raw_assign() -> None:
        deadline = T0 + timedelta(seconds=600)
        for event in assigned_events:
            for device in event.devices:
                prev = event.previous.get(device)
                raw[device] = Assignment(0, deadline, (prev[0], prev[1]) if prev else None)

    out["assign"] = (timed(assign), timed(raw_assign))
    view = FleetView(site_of=devices, desired={d: Desired("new", "h-new", 2, "r-big") for d in devices},
                     observed={d: Observed(online=True, config_hash="h-old") for d in devices})
    out["status"] = (timed(lambda: domain.tick(state, view, T0)),
                     timed(lambda: [raw.get(d) is not None and view.observed.get(d) is not None for d in order]))

    step = max(2, len(order) // TAKEN)  # every step-th device one at a time (100,000 of a million), the rest by chunk
    singles, rest = order[::step], [d for n, d in enumerate(order) if n % step]

    def take_singly() -> None:
        nonlocal state
        for device in singles:
            state = domain.taken(state, [device], view)

    def take_by_chunk() -> None:
        nonlocal state
        for offset in range(0, len(rest), domain.CHUNK):
            state = domain.taken(state, rest[offset:offset + domain.CHUNK], view)

    def raw_take(devices: list[str]) -> None:
        for device in devices:
            raw[device] = msgspec.structs.replace(raw[device], left="in_flight")

    out["taken, one at a time"] = (timed(take_singly), timed(lambda: raw_take(singles)))
    out["taken, by chunk"] = (timed(take_by_chunk), timed(lambda: raw_take(rest)))
    state = domain.evolve(state, RolloutRollbackStarted(rollout_id="r-big", reason="bench", devices=len(order)))
    restored_events = [RolloutDevicesRestored(rollout_id="r-big", devices=chunk) for chunk in chunks]

    def restore() -> None:
        nonlocal state
        for event in restored_events:
            state = domain.evolve(state, event)

    def raw_restore() -> None:
        for event in restored_events:
            for device in event.devices:
                raw[device] = msgspec.structs.replace(raw[device], restored=True)

    out["restore"] = (timed(restore), timed(raw_restore))
    assert len(state.assigned) == len(order)
    assert sum(a.restored for _, a in state.assigned.items()) == len(order)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    devices = {f"dev-{i:07d}": f"site-{i % args.sites:03d}" for i in range(args.devices)}
    rounds = []
    for number in range(args.rounds):
        rounds.append(one_round(devices))
        print(f"round {number + 1}: " + ", ".join(f"{k} {v[0]:.2f}s (raw {v[1]:.2f}s)" for k, v in rounds[-1].items()),
              file=sys.stderr)
    print(f"Rollout fold, {args.devices:,} devices, median of {args.rounds} rounds\n")
    print("| phase | ours (s) | raw: the same bookkeeping in place in a dict (s) | raw / ours |")
    print("|---|---:|---:|---:|")
    for phase in rounds[0]:
        ours = statistics.median(r[phase][0] for r in rounds)
        raw = statistics.median(r[phase][1] for r in rounds)
        print(f"| {phase} | {ours:.3f} | {raw:.3f} | {raw / ours:.2f}x |")


if __name__ == "__main__":
    main()
