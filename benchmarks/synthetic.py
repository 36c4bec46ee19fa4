"""A generated but plausible fleet history, for tests and benchmarks of the read side: sites,
snapshots, devices registered, assigned, coming online, then rounds of reported state, health
changes, drift, going offline. Deterministic for a seed. Returned as rounds of writes in which no
subject repeats, so each round can go to `EventLog.append_batch` as atomic batches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from shared.envelope import Event, seal
from shared.eventlog import Write
from shared.events import desired, observed, registry, snapshot
from shared.times import format_time


class _Clock:
    def __init__(self, start: datetime, step: timedelta) -> None:
        self.now = start
        self.step = step

    def tick(self) -> datetime:
        self.now += self.step
        return self.now


def _write(event: Event, actor: str, clock: _Clock) -> Write:
    return Write(event.subject, [seal(event, actor=actor, at=clock.tick())], None)


def fleet_history(devices: int, *, sites: int = 20, snapshots: int = 4, rounds: int = 2,
                  churn: float = 0.5, seed: int = 7, start: datetime, span: timedelta = timedelta(days=1),
                  ) -> Iterator[list[Write]]:
    """Rounds of writes. Events total about devices * (4 + rounds * churn)."""
    rng = random.Random(seed)
    total = sites + snapshots + devices * 4 + int(devices * rounds * churn)
    clock = _Clock(start, span / max(total, 1))
    site_ids = [f"site-{i:03d}" for i in range(sites)]
    snap_ids = [f"snap-{i}" for i in range(snapshots)]
    yield [_write(registry.SiteAdded(site_id=s, name=f"Site {s}", labels={"region": f"r{i % 3}"}),
                  "operator:gen", clock) for i, s in enumerate(site_ids)]
    yield [_write(snapshot.SnapshotCreated(snapshot_id=s, name="edge", version=i + 1, config={"v": i}),
                  "operator:gen", clock) for i, s in enumerate(snap_ids)]
    device_ids = [f"dev-{i:07d}" for i in range(devices)]
    where = {d: site_ids[i % sites] for i, d in enumerate(device_ids)}
    running: dict[str, str | None] = dict.fromkeys(device_ids)
    health = dict.fromkeys(device_ids, "ok")
    online = dict.fromkeys(device_ids, False)
    drifting = dict.fromkeys(device_ids, False)
    yield [_write(registry.DeviceAdded(device_id=d, site_id=where[d],
                                       labels={"tier": rng.choice(["edge", "core"]), "hw": f"v{rng.randint(1, 3)}"}),
                  "operator:gen", clock) for d in device_ids]
    want = {d: rng.choice(snap_ids[:2]) for d in device_ids}
    yield [_write(desired.DesiredStateAssigned(device_id=d, site_id=where[d], snapshot_id=want[d],
                                               config_hash=f"h-{want[d]}", revision=1, rollout_id="r-initial"),
                  "service:rollout", clock) for d in device_ids]
    batch = []
    for d in device_ids:
        running[d] = want[d]
        online[d] = True
        batch.append(_write(observed.DeviceCameOnline(device_id=d, site_id=where[d], snapshot_id=want[d],
                                                      config_hash=f"h-{want[d]}"), "service:drift", clock))
    yield batch
    for _ in range(rounds):
        chosen = rng.sample(device_ids, int(devices * churn))
        batch = []
        for d in chosen:
            roll = rng.random()
            event: Event
            if roll < 0.35:
                new = rng.choice(snap_ids)
                event = observed.DeviceReportedState(device_id=d, snapshot_id=new, config_hash=f"h-{new}",
                                                     previous_snapshot_id=running[d])
                running[d] = new
            elif roll < 0.6:
                new_health = rng.choice(["ok", "degraded", "failed"])
                event = observed.DeviceHealthChanged(device_id=d, health=new_health, previous=health[d])
                health[d] = new_health
            elif roll < 0.75:
                if drifting[d]:
                    event = observed.DriftEnded(device_id=d, duration_seconds=60.0)
                else:
                    event = observed.DriftBegan(device_id=d, desired_snapshot_id=want[d],
                                                desired_config_hash=f"h-{want[d]}",
                                                reported_snapshot_id=running[d],
                                                reported_config_hash=f"h-{running[d]}",
                                                since=format_time(clock.now))
                drifting[d] = not drifting[d]
            elif roll < 0.9:
                if online[d]:
                    event = observed.DeviceWentOffline(device_id=d, last_seen=format_time(clock.now))
                else:
                    event = observed.DeviceCameOnline(device_id=d, site_id=where[d], snapshot_id=running[d],
                                                      config_hash=f"h-{running[d]}", health=health[d])
                online[d] = not online[d]
            else:
                event = registry.DeviceRelabeled(device_id=d, labels={"tier": rng.choice(["edge", "core"]),
                                                                      "hw": "v9"})
            batch.append(_write(event, "service:drift", clock))
        yield batch
