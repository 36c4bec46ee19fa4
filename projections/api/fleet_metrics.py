"""The fleet-state gauges of `GET /metrics` (DESIGN §16, docs/monitoring.md): devices by site and
state, rollouts by status with the wave and gate verdict of those still moving, each projection's
checkpoint, lag and poisoned events, and the event log's size.

Everything comes from what the read models keep incrementally: the device counters are the
`device_counts` cells the projection moves by deltas (the same cells `GET /v1/summary` adds up,
so the two always agree), never a pass over the devices; rollouts and projections are a few rows.
A scrape costs O(sites x snapshots + rollouts), whatever the fleet's size
(benchmarks/scrape.py measures it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from projections.api.queries import ReadModels
from projections.api.schemas import Counts, ProjectionsAnswer, Summary
from projections.fleet import reads

log = logging.getLogger(__name__)
DEVICE_STATES = tuple(Counts.__struct_fields__)  # total online offline ok degraded failed unknown drifted stuck


class _Families:
    """A collector over families built beforehand (the reads are async; collection is not)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def device_families(summary: Summary) -> list[Metric]:
    """fleet_devices{site,state} and fleet_devices_by_snapshot{snapshot} from the summary."""
    by_site = GaugeMetricFamily("fleet_devices", "Devices (not retired) by site and state; state total "
                                "counts them all.", labels=["site", "state"])
    for site in summary.by_site:
        for state in DEVICE_STATES:
            by_site.add_metric([site.site_id, state], getattr(site, state))
    by_snapshot = GaugeMetricFamily("fleet_devices_by_snapshot", "Devices by the snapshot they report "
                                    '("" = none yet).', labels=["snapshot"])
    for snap in summary.by_snapshot:
        by_snapshot.add_metric([snap.snapshot_id], snap.total)
    return [by_site, by_snapshot]


def rollout_families(statuses: dict[str, int], active: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """fleet_rollouts{status}; for each rollout still moving, its wave and last gate verdict."""
    by_status = GaugeMetricFamily("fleet_rollouts", "Rollouts by status.", labels=["status"])
    for status, n in sorted(statuses.items()):
        by_status.add_metric([status], n)
    wave = GaugeMetricFamily("fleet_rollout_wave", "Current wave (from 1, as the API counts) of each unfinished "
                             "rollout, labelled with its status.", labels=["rollout", "snapshot", "status"])
    gate = GaugeMetricFamily("fleet_rollout_gate_passed", "Last gate verdict of each unfinished rollout "
                             "(1 passed, 0 failed; absent before its first gate).", labels=["rollout"])
    for row in active:
        rollout = str(row["rollout_id"])
        wave.add_metric([rollout, str(row["snapshot_id"]), str(row["status"])], float(row["wave"]) + 1)
        if row["passed"] is not None:
            gate.add_metric([rollout], 1.0 if row["passed"] else 0.0)
    return [by_status, wave, gate]


def projection_families(answer: ProjectionsAnswer) -> list[Metric]:
    """Each projection's checkpoint, lag, applied and skipped events, poisoned events and state."""
    names = ["projection"]
    checkpoint = GaugeMetricFamily("fleet_projection_checkpoint", "Last log sequence the projection applied.",
                                   labels=names)
    lag = GaugeMetricFamily("fleet_projection_lag_events", "Events in the log beyond the checkpoint.",
                            labels=names)
    applied = CounterMetricFamily("fleet_projection_events_applied", "Events applied since the last rebuild.",
                                  labels=names)
    skipped = CounterMetricFamily("fleet_projection_unknown_events_skipped",
                                  "Events of unknown types skipped since the last rebuild.", labels=names)
    poisoned = GaugeMetricFamily("fleet_projection_poisoned_events", "Events the projection could not apply "
                                 "and skipped (fleet projections status lists them).", labels=names)
    running = GaugeMetricFamily("fleet_projection_running", "1 while the projection's runner runs, else 0.",
                                labels=names)
    for p in answer.items:
        checkpoint.add_metric([p.name], p.checkpoint)
        if p.lag is not None:
            lag.add_metric([p.name], p.lag)
        applied.add_metric([p.name], p.applied)
        skipped.add_metric([p.name], p.skipped_unknown)
        poisoned.add_metric([p.name], p.poisoned)
        running.add_metric([p.name], 1.0 if p.state == "running" else 0.0)
    families: list[Metric] = [checkpoint, lag, applied, skipped, poisoned, running]
    if answer.log_last_seq is not None:
        families.append(GaugeMetricFamily("fleet_log_last_seq", "Sequence of the newest event in the log.",
                                          value=answer.log_last_seq))
    return families


async def log_families(models: ReadModels) -> list[Metric]:
    """The event log's bytes, and the JetStream storage its account uses and may use."""
    js = models.log.js
    try:
        info, account = await asyncio.gather(js.stream_info(models.log.stream), js.account_info())
    except Exception as exc:  # NATS down: the other gauges still answer
        log.debug("metrics: no stream/account info: %r", exc)
        return []
    return storage_families(info.state.bytes, account.storage,
                            account.limits.max_storage if account.limits else None)


def storage_families(log_bytes: int, used: int, limit: int | None) -> list[Metric]:
    """fleet_log_bytes, and the account's JetStream file storage used and allowed."""
    families: list[Metric] = [
        GaugeMetricFamily("fleet_log_bytes", "Bytes the event log (FLEET_EVENTS) holds.", value=log_bytes),
        GaugeMetricFamily("fleet_jetstream_storage_used_bytes", "File storage the account's streams use.",
                          value=used)]
    if limit is not None and limit > 0:  # -1: unlimited (then alert on the volume: docs/monitoring.md)
        families.append(GaugeMetricFamily("fleet_jetstream_storage_limit_bytes",
                                          "File storage the account may use.", value=limit))
    return families


async def fleet_families(models: ReadModels) -> list[Metric]:
    """Every fleet-state family, read now. When the read models cannot be read (PostgreSQL down,
    nothing projected yet) the scrape still answers, with fleet_read_models_up 0."""
    up = GaugeMetricFamily("fleet_read_models_up", "1 when this scrape could read the read models, else 0.")
    try:
        summary = await models.summary(None, None, site=None, snapshot=None)
        async with models.pool.acquire() as conn:
            statuses, active = await reads.rollout_gauges(conn)
        answer = await models.projections()
    except Exception as exc:  # any failure of the reads is this gauge's 0, logged
        log.warning("metrics: the read models could not be read: %r", exc)
        up.add_metric([], 0.0)
        return [up, *await log_families(models)]
    up.add_metric([], 1.0)
    return [up, *device_families(summary), *rollout_families(statuses, [dict(r) for r in active]),
            *projection_families(answer), *await log_families(models)]


async def exposition(models: ReadModels) -> bytes:
    """This process's own metrics followed by the fleet's, as Prometheus text."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(_Families(await fleet_families(models)))
    return generate_latest(REGISTRY) + generate_latest(fleet)
