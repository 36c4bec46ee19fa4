"""Benchmark of the projections and the query API (issue 4), all in one run on one machine.

    .venv/bin/python -m benchmarks.projections [--devices 100000] [--rounds 2] [--peer-events 30000]

Starts an EmbeddedNats (`sync_interval: always`) and a durable EmbeddedPostgres in a temporary
directory, appends a generated fleet history spanning two days (sites, snapshots, devices added,
assigned, coming online, then rounds of reported state, health, drift, offline and relabel events;
about devices x (3 + rounds/2) events), then measures:

- raw: a nats-py ordered consumer counting every message of the stream (no decoding) — the limit;
- replay: `EventLog.replay` decoding every envelope and event, and `EventLog.batches` (what the
  runner reads with, in batches of 5,000) doing the same;
- rebuild: `projections.runner.rebuild` of each projection from sequence 1 into a fresh schema
  (rows and checkpoint committed per batch of 1,000 in one transaction), events/s, and the fleet
  projection again with point-in-time snapshots every 50,000 events;
- peer: the `eventsourcing` library's ProjectionRunner catching up the same events (stored in its
  PostgreSQL application recorder) into an equivalent view (same fold, devices + counters, one
  transaction per event with its tracking record, as the library's projections do); run on the
  first `--peer-events` events only, because it is slow;
- API (uvicorn in a subprocess, `fleet service api`): GET /v1/summary p50/p99, a filtered device
  page p99, a point-in-time summary one day back cold (first ask) and warm (asked again);
- live: the fleet runner following `--live-events` more events (health changes) with its
  point-in-time hook, each batch's time and the hook's (a delta copy every 50,000 events), and
  one full copy of the whole read model timed on its own (what the hook does every
  `snapshots.FULL_EVERY` copies) — how long a copy holds up the projection.

The history is appended in atomic batches of 1,000 events, several batches in flight at once
(`--append-in-flight`); a round's devices are distinct, so the order inside a round is free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from nats.js import api

from benchmarks.eventlog import configure_eventsourcing
from benchmarks.synthetic import fleet_history
from projections.changes.store import ChangesProjection
from projections.fleet import model, snapshots
from projections.fleet.store import FleetProjection, load_state
from projections.pointintime import FLEET_VERSION, SNAPSHOT_EVERY, snapshot_hook
from projections.runner import Runner, create_pool, decode_batch, rebuild
from shared import tokens
from shared.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from shared.envelope import Envelope, decode_event, seal
from shared.eventlog import EventLog, Write
from shared.events import observed
from shared.subjects import EVENTS_STREAM, EVENTS_WILDCARD

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def append_round(log: EventLog, writes: list[Write], in_flight: int) -> None:
    """Append one round (distinct subjects) as atomic batches of 1,000, `in_flight` at once."""
    chunks = iter(range(0, len(writes), 1000))

    async def worker() -> None:
        for start in chunks:
            await log.append_batch(writes[start:start + 1000])

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def generate(log: EventLog, devices: int, rounds: int, now: datetime, in_flight: int) -> tuple[int, float]:
    started = time.perf_counter()
    for writes in fleet_history(devices, rounds=rounds, start=now - timedelta(days=2), span=timedelta(days=2)):
        await append_round(log, writes, in_flight)
    return await log.last_stream_seq(), time.perf_counter() - started


async def live_pauses(pool: Any, log: EventLog, devices: int, events: int, in_flight: int) -> dict[str, float]:
    """The fleet runner following `events` more events with its point-in-time hook (as `fleet
    service projections` runs it: full copies composed in the background): per-batch time, the
    hook's time, the background composition's; then one full copy read from the read model
    inside a transaction (what the hook does when it has no pool or no full copy yet), timed."""
    hook = snapshot_hook(SNAPSHOT_EVERY, pool=pool)
    hook_times: list[tuple[float, int]] = []
    compose_times: list[float] = []
    make_full = snapshots.make_full

    async def timed_make_full(*args: Any, **kwargs: Any) -> bool:
        started = time.perf_counter()
        made = await make_full(*args, **kwargs)
        compose_times.append(time.perf_counter() - started if made else -1.0)
        return made

    snapshots.make_full = timed_make_full

    async def timed_hook(conn: Any, seq: int, at: str) -> None:
        before = await conn.fetchval("SELECT count(*) FROM pit_snapshots WHERE version = $1", FLEET_VERSION)
        started = time.perf_counter()
        await hook(conn, seq, at)
        after = await conn.fetchval("SELECT count(*) FROM pit_snapshots WHERE version = $1", FLEET_VERSION)
        hook_times.append((time.perf_counter() - started, after - before))

    projection = FleetProjection(snapshot_every=SNAPSHOT_EVERY)
    batch_times: list[float] = []
    apply_batch = projection.apply_batch

    async def timed_apply(conn: Any, items: Any) -> None:
        started = time.perf_counter()
        await apply_batch(conn, items)
        batch_times.append(time.perf_counter() - started)

    projection.apply_batch = timed_apply  # type: ignore[method-assign]  # times each batch the runner applies
    runner = Runner(pool, log, projection, after_batch=timed_hook)
    task = asyncio.create_task(runner.run())
    rng = random.Random(11)
    ids = [f"dev-{i:07d}" for i in range(devices)]
    clock = datetime.now(UTC) - timedelta(minutes=5)
    started = time.perf_counter()
    for round_start in range(0, events, min(devices, 100_000)):
        count = min(devices, 100_000, events - round_start)
        writes = []
        for device_id in rng.sample(ids, count):
            clock += timedelta(microseconds=100)
            event = observed.DeviceHealthChanged(device_id=device_id, health=rng.choice(["ok", "degraded", "failed"]),
                                                 previous="unknown")
            writes.append(Write(event.subject, [seal(event, actor="service:drift", at=clock)], None))
        await append_round(log, writes, in_flight)
    head = await log.last_stream_seq()
    while True:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT checkpoint FROM projection_status WHERE name = 'fleet'") >= head:
                break
        await asyncio.sleep(0.2)
    took = time.perf_counter() - started
    await hook.idle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    snapshots.make_full = make_full
    copies = [t for t, made in hook_times if made]
    out = {"live_events": float(events), "live_seconds": took, "live_batches": float(len(batch_times)),
           "live_batch_p50_ms": _pct(batch_times, 0.5) * 1000, "live_batch_max_ms": max(batch_times) * 1000,
           "live_copies": float(len(copies)), "live_copy_max_s": max(copies, default=0.0),
           "live_hook_p50_ms": _pct([t for t, _ in hook_times], 0.5) * 1000,
           "live_composed": float(len(compose_times)), "live_compose_max_s": max(compose_times, default=0.0)}
    async with pool.acquire() as conn, conn.transaction():  # what the hook does for a full copy
        started = time.perf_counter()
        await conn.execute("SET LOCAL search_path TO rm_fleet, public")
        state = await load_state(conn)
        state.seq = head
        blob = snapshots.encode_state(state)
        out["full_copy_s"] = time.perf_counter() - started  # measured only: not stored
        out["full_copy_mb"] = len(blob) / 1e6
    return out


async def raw_rate(nc: Any, head: int) -> float:
    """A bare ordered consumer counting messages: the most the stream gives a Python reader."""
    js = nc.jetstream()
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Any) -> None:
        nonlocal count
        count += 1
        if count >= head:
            done.set()

    started = time.perf_counter()
    sub = await js.subscribe(EVENTS_WILDCARD, stream=EVENTS_STREAM, ordered_consumer=True, cb=on_msg,
                             deliver_policy=api.DeliverPolicy.ALL, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return head / elapsed


async def replay_only(log: EventLog, head: int) -> None:
    """`EventLog.replay`, decoding every event."""
    async for record in log.replay(1, head):
        decode_event(record.envelope)


async def reader_only(log: EventLog, head: int) -> None:
    """The runner's reading (`EventLog.batches` of 5,000, as a rebuild reads) decoding every envelope and event."""
    async for batch in log.batches(1, head, size=5000):
        decode_batch(batch)


async def api_latencies(base: str, head: int, now: datetime, token: str) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(200):  # until it answers
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        r = await client.get("/v1/summary")
        assert r.status_code == 200, r.text
        assert r.json()["as_of_seq"] == head, r.text

        async def timed(path: str, n: int, **params: Any) -> list[float]:
            times = []
            for _ in range(n):
                t = time.perf_counter()
                response = await client.get(path, params=params)
                times.append(time.perf_counter() - t)
                assert response.status_code == 200, response.text
            return times

        await timed("/v1/summary", 50)  # warm-up
        summary = await timed("/v1/summary", 1000)
        out["summary_p50_ms"] = _pct(summary, 0.5) * 1000
        out["summary_p99_ms"] = _pct(summary, 0.99) * 1000
        page = await timed("/v1/devices", 500, site="site-007", health="failed", limit=50)
        out["device_page_p50_ms"] = _pct(page, 0.5) * 1000
        out["device_page_p99_ms"] = _pct(page, 0.99) * 1000
        sel = await timed("/v1/devices", 500, selector="tier=edge,hw in (v1,v2)", online="true", limit=100)
        out["selector_page_p99_ms"] = _pct(sel, 0.99) * 1000
        at = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        t = time.perf_counter()
        r = await client.get("/v1/summary", params={"at": at})
        out["pit_cold_s"] = time.perf_counter() - t
        assert r.status_code == 200, r.text
        assert r.json()["historical"], r.text
        out["pit_seq"] = r.json()["as_of_seq"]
        warm = await timed("/v1/summary", 50, at=at)
        out["pit_warm_p50_ms"] = _pct(warm, 0.5) * 1000
        out["pit_warm_p99_ms"] = _pct(warm, 0.99) * 1000
    return out


# --- the eventsourcing peer ------------------------------------------------------------------------

def peer(pg: EmbeddedPostgres, dbname: str, envelopes: list[Envelope]) -> float:
    """Events/s of eventsourcing's ProjectionRunner catching up `envelopes` into a fleet view."""
    from dataclasses import dataclass as es_dataclass

    from eventsourcing.application import Application
    from eventsourcing.domain import DomainEvent
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection, ProjectionRunner
    from psycopg.sql import SQL

    configure_eventsourcing(pg, dbname)

    @es_dataclass(frozen=True)
    class FleetFact(DomainEvent):
        type: str
        aggregate: str
        aggregate_id: str
        at: str
        actor: str
        event_id: str
        data: dict[str, Any]

    globals()["FleetFact"] = FleetFact  # resolvable by topic
    FleetFact.__module__ = __name__
    FleetFact.__qualname__ = "FleetFact"

    class FleetLog(Application[uuid.UUID]):
        name = "FleetLog"

    app = FleetLog()
    versions: dict[str, int] = {}
    stored = []
    for env in envelopes:
        key = f"{env.aggregate}.{env.aggregate_id}"
        versions[key] = versions.get(key, 0) + 1
        fact = FleetFact(originator_id=uuid.uuid5(uuid.NAMESPACE_URL, key), originator_version=versions[key],
                         timestamp=datetime.now(UTC), type=env.type, aggregate=env.aggregate,
                         aggregate_id=env.aggregate_id, at=env.at, actor=env.actor, event_id=env.id,
                         data=msgspec.json.decode(env.data))
        stored.append(app.mapper.to_stored_event(fact))
    for i in range(0, len(stored), 1000):
        app.recorder.insert_events(stored[i:i + 1000])
    last = app.recorder.max_notification_id()
    app.close()
    migration = "\n".join(  # the fleet read model's schema, every migration in order
        path.read_text() for path in sorted((Path(__file__).resolve().parents[1] / "projections/fleet/migrations")
                                            .glob("*.sql")))
    encoder = msgspec.json.Encoder()

    class FleetView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            ours = [SQL("CREATE SCHEMA IF NOT EXISTS es_view"),
                    SQL("SET LOCAL search_path TO es_view, public"),
                    SQL(migration.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
                        .replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS")
                        .replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))]
            self.sql_create_statements += ours  # type: ignore[arg-type]  # SQL where eventsourcing says Composed; it runs either

        def apply(self, fact: Any, tracking: Tracking) -> None:
            env = Envelope(type=fact.type, v=1, id=fact.event_id, aggregate=fact.aggregate,
                           aggregate_id=fact.aggregate_id, at=fact.at, actor=fact.actor,
                           data=msgspec.Raw(encoder.encode(fact.data)))
            event = decode_event(env)
            touched = model.touches(env)
            with self.datastore.transaction(commit=True) as curs:
                if event is not None and touched is not None and touched[0] == "devices":
                    curs.execute("SELECT * FROM es_view.devices WHERE device_id = %s", (env.aggregate_id,))
                    found = curs.fetchone()
                    old = None if found is None else msgspec.convert(dict(found), model.DeviceRow)
                    state = model.FleetState(devices={} if old is None else {old.device_id: old})
                    model.apply(state, tracking.notification_id, env, event)
                    row = state.devices[env.aggregate_id]
                    values = {f: getattr(row, f) for f in model.DeviceRow.__struct_fields__}
                    values["labels"] = encoder.encode(row.labels).decode()
                    values["metadata"] = encoder.encode(row.metadata).decode()
                    columns = list(values)
                    curs.execute(
                        "INSERT INTO es_view.devices (" + ", ".join(columns) + ") VALUES ("
                        + ", ".join(f"%({c})s" + ("::jsonb" if c in ("labels", "metadata") else "") for c in columns)
                        + ") ON CONFLICT (device_id) DO UPDATE SET "
                        + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "device_id"), values)
                    cells: dict[model.CounterKey, list[int]] = {}
                    model.add_counts(cells, old, -1)
                    model.add_counts(cells, row, 1)
                    for (site, snap), delta in cells.items():
                        if any(delta):
                            curs.execute(
                                "INSERT INTO es_view.device_counts (site_id, snapshot_id, "
                                + ", ".join(model.COUNTER_FIELDS) + ") VALUES (%s, %s, "
                                + ", ".join(["%s"] * len(model.COUNTER_FIELDS)) + ") ON CONFLICT (site_id, snapshot_id) "
                                "DO UPDATE SET " + ", ".join(f"{f} = es_view.device_counts.{f} + EXCLUDED.{f}"
                                                             for f in model.COUNTER_FIELDS),
                                (site, snap, *delta))
                self._insert_tracking(curs, tracking)

    class FleetViewProjection(Projection[FleetView]):
        name = "fleetview"

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            self.view.apply(domain_event, tracking)

    started = time.perf_counter()
    with ProjectionRunner(application_class=FleetLog, projection_class=FleetViewProjection,
                          view_class=FleetView) as runner:
        runner.wait(last, timeout=3600)
    return len(envelopes) / (time.perf_counter() - started)


# --- the run ---------------------------------------------------------------------------------------

async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-projections-"))
    ns = EmbeddedNats(tmp / "nats")
    pg = EmbeddedPostgres(tmp / "pg", durable=True)
    await ns.start()
    await pg.start()
    api_proc = None
    figures: dict[str, float] = {}
    try:
        url = await pg.create_database("bench")
        nc = await nats.connect(ns.url)
        log = EventLog(nc)
        await log.ensure_stream()
        now = datetime.now(UTC)
        loads = [os.getloadavg()]
        print(f"started {now:%Y-%m-%d %H:%M} UTC, load average {loads[0]}", flush=True)
        head, took = await generate(log, args.devices, args.rounds, now, args.append_in_flight)
        figures["generate_s"] = took
        print(f"generated {head} events for {args.devices} devices in {took:.1f}s "
              f"({head / took:,.0f} events/s), max RSS {_rss_mb():,.0f} MB", flush=True)
        # Raw is measured right before each of ours, so load from other work falls on both sides of
        # a ratio alike; the table reports the pairs' median ratio.
        pool = await create_pool(url, min_size=1, max_size=4)
        runs: dict[str, list[tuple[float, float]]] = {}

        async def paired(name: str, ours: Any) -> None:
            raw = await raw_rate(nc, head)
            started = time.perf_counter()
            await ours()
            rate = head / (time.perf_counter() - started)
            runs.setdefault(name, []).append((raw, rate))
            print(f"{name}: raw {raw:.0f} events/s, ours {rate:.0f} events/s ({rate / raw:.2f}x)", flush=True)

        measures = {
            "replay": lambda: replay_only(log, head),
            "reader": lambda: reader_only(log, head),
            "rebuild_fleet": lambda: rebuild(pool, log, FleetProjection()),
            "rebuild_changes": lambda: rebuild(pool, log, ChangesProjection()),
            "rebuild_fleet_with_snapshots": lambda: rebuild(pool, log, FleetProjection(snapshot_every=SNAPSHOT_EVERY)),
        }
        for _ in range(args.repeat):
            for name, ours in measures.items():
                if name not in args.skip:
                    await paired(name, ours)
                    loads.append(os.getloadavg())
        if "rebuild_fleet_with_snapshots" in args.skip:  # the API needs both read models and the copies
            await rebuild(pool, log, FleetProjection(snapshot_every=SNAPSHOT_EVERY))
        if "rebuild_changes" in args.skip:
            await rebuild(pool, log, ChangesProjection())
        print(f"rebuilds done, max RSS {_rss_mb():,.0f} MB", flush=True)
        for name, pairs in runs.items():
            figures[name] = statistics.median(rate for _, rate in pairs)
            figures[f"{name}_raw"] = statistics.median(raw for raw, _ in pairs)
            figures[f"{name}_ratio"] = statistics.median(rate / raw for raw, rate in pairs)
            figures[f"{name}_ratio_min"] = min(rate / raw for raw, rate in pairs)
            figures[f"{name}_ratio_max"] = max(rate / raw for raw, rate in pairs)

        port = free_port()
        env = {**os.environ, "FLEET_DATABASE_URL": url, "FLEET_NATS_URL": ns.url,
               "FLEET_API_URL": f"http://127.0.0.1:{port}", "FLEET_DATA_DIR": str(tmp / "data"),
               "FLEET_LOG_LEVEL": "warning"}
        api_proc = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
            [sys.executable, "-c", "from fleet.cli import main; main()", "service", "api"], env=env, cwd=ROOT)
        # under auth, as deployed: a viewer token (verified once with argon2, then cached)
        token, _ = await tokens.create(log.nc, f"bench-{port}", "viewer", "benchmark", now.isoformat())
        figures.update(await api_latencies(f"http://127.0.0.1:{port}", head, now, token))
        loads.append(os.getloadavg())
        print({k: round(v, 2) for k, v in figures.items()}, flush=True)
        api_proc.terminate()
        api_proc.wait(10)
        api_proc = None
        if args.live_events:
            figures.update(await live_pauses(pool, log, args.devices, args.live_events, args.append_in_flight))
            loads.append(os.getloadavg())
            print({k: round(v, 2) for k, v in figures.items() if k.startswith(("live", "full"))}, flush=True)
        await pool.close()

        if args.peer_events:
            envelopes = [r.envelope async for r in log.replay(1, min(head, args.peer_events))]
            peer_url = await pg.create_database("peer")
            del peer_url
            figures["peer_events"] = len(envelopes)
            figures["peer"] = await asyncio.to_thread(peer, pg, "peer", envelopes)
            print(f"eventsourcing ProjectionRunner: {figures['peer']:.0f} events/s", flush=True)
        await nc.close()
    finally:
        if api_proc is not None:
            api_proc.terminate()
            api_proc.wait(10)
        ns.stop()
        pg.stop()
        for part in ("nats", "pg"):
            shutil.rmtree(tmp / part, ignore_errors=True)

    print()
    print(f"# Projections benchmark — {args.devices} devices, {head} events, {platform.node()}, "
          f"{os.cpu_count()} cores, {args.repeat} paired runs, started {now:%Y-%m-%d %H:%M} UTC, "
          f"took {(datetime.now(UTC) - now).total_seconds() / 60:.0f} min")
    print(f"load average (1 min) during the run: {min(load[0] for load in loads):.1f}-{max(load[0] for load in loads):.1f}; "
          f"generation {figures['generate_s']:.0f} s; max RSS of the benchmark process {_rss_mb():,.0f} MB")
    print("| measure | raw / peer events/s | ours events/s | ours / them (range) | goal |")
    print("|---|---:|---:|---:|---|")
    for name, goal in (("rebuild_fleet", ">= 0.5x"), ("rebuild_changes", ">= 0.5x"),
                       ("rebuild_fleet_with_snapshots", ">= 0.5x"), ("replay", "-"), ("reader", "-")):
        if name not in figures:
            continue
        print(f"| {name} vs raw ordered consumer | {figures[name + '_raw']:,.0f} | {figures[name]:,.0f} | "
              f"{figures[name + '_ratio']:.2f}x ({figures[name + '_ratio_min']:.2f}-"
              f"{figures[name + '_ratio_max']:.2f}) | {goal} |")
    if "peer" in figures and "rebuild_fleet" in figures:
        print(f"| fleet view catch-up vs eventsourcing ProjectionRunner (peer on the first "
              f"{figures['peer_events']:.0f} events) | {figures['peer']:,.0f} | "
              f"{figures['rebuild_fleet']:,.0f} | {figures['rebuild_fleet'] / figures['peer']:.1f}x | >= 2x |")
    print(f"| GET /v1/summary p50 / p99 | - | {figures['summary_p50_ms']:.1f} / {figures['summary_p99_ms']:.1f} ms"
          " | - | p99 <= 20 ms |")
    print(f"| filtered device page (site + health, 50) p50 / p99 | - | {figures['device_page_p50_ms']:.1f} / "
          f"{figures['device_page_p99_ms']:.1f} ms | - | p99 <= 10 ms |")
    print(f"| selector device page (tier=edge,hw in (v1,v2), online, 100) p99 | - | "
          f"{figures['selector_page_p99_ms']:.1f} ms | - | - |")
    print(f"| point-in-time summary one day back (seq {figures['pit_seq']:.0f}) cold / warm p50 | - | "
          f"{figures['pit_cold_s']:.2f} s / {figures['pit_warm_p50_ms']:.1f} ms | - | <= 30 s / <= 50 ms |")
    if "live_batches" in figures:
        print(f"| live fleet runner, {figures['live_events']:.0f} more events: batch p50 / max | - | "
              f"{figures['live_batch_p50_ms']:.0f} / {figures['live_batch_max_ms']:.0f} ms | - | - |")
        print(f"| live point-in-time copy in the batch (delta), {figures['live_copies']:.0f} taken: longest | - | "
              f"{figures['live_copy_max_s'] * 1000:.0f} ms | - | - |")
        print(f"| full copies composed in the background: {figures['live_composed']:.0f}, longest | - | "
              f"{figures['live_compose_max_s']:.1f} s | - | - |")
        print(f"| full copy read from the read model in a transaction ({figures['full_copy_mb']:.0f} MB) | - | "
              f"{figures['full_copy_s']:.1f} s | - | - |")
    (tmp / "results.json").write_text(json.dumps({"devices": args.devices, "events": head, **figures}, indent=1))
    print(f"\n(raw figures in {tmp / 'results.json'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer-events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2, help="paired raw/ours runs of each measure")
    parser.add_argument("--append-in-flight", type=int, default=4, help="atomic batches appended at once")
    parser.add_argument("--live-events", type=int, default=100_000,
                        help="events the live fleet runner follows after the API part (0: skip)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["replay", "reader", "rebuild_fleet", "rebuild_changes", "rebuild_fleet_with_snapshots"],
                        help="leave out a paired measure (repeatable)")
    asyncio.run(main(parser.parse_args()))
