"""Benchmark of the projections and the query API (issue 4), all in one run on one machine.

    .venv/bin/python -m benchmarks.projections [--devices 100000] [--rounds 2] [--peer-events 30000]

Starts an EmbeddedNats (`sync_interval: always`) and a durable EmbeddedPostgres in a temporary
directory, appends a generated fleet history spanning two days (sites, snapshots, devices added,
assigned, coming online, then rounds of reported state, health, drift, offline and relabel events;
about devices x (3 + rounds/2) events), then measures:

- raw: a nats-py ordered consumer counting every message of the stream (no decoding) — the limit;
- replay: `EventLog.replay` decoding every envelope and event, and the runner's own reader
  (`projections.reader`, a callback-fed ordered consumer) doing the same;
- rebuild: `projections.runner.rebuild` of each projection from sequence 1 into a fresh schema
  (rows and checkpoint committed per batch of 1,000 in one transaction), events/s, and the fleet
  projection again with point-in-time snapshots every 50,000 events;
- peer: the `eventsourcing` library's ProjectionRunner catching up the same events (stored in its
  PostgreSQL application recorder) into an equivalent view (same fold, devices + counters, one
  transaction per event with its tracking record, as the library's projections do); run on the
  first `--peer-events` events only, because it is slow;
- API (uvicorn in a subprocess, `fleet service api`): GET /v1/summary p50/p99, a filtered device
  page p99, a point-in-time summary one day back cold (first ask) and warm (asked again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

from projections.changes.store import ChangesProjection
from projections.fleet import model
from projections.fleet.store import FleetProjection
from projections.pointintime import SNAPSHOT_EVERY
from projections.reader import batches
from projections.runner import create_pool, decode_batch, rebuild
from projections.synthetic import fleet_history
from shared.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from shared.envelope import Envelope, decode_event
from shared.eventlog import EventLog
from shared.subjects import EVENTS_STREAM, EVENTS_WILDCARD

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def generate(log: EventLog, devices: int, rounds: int, now: datetime) -> tuple[int, float]:
    started = time.perf_counter()
    for writes in fleet_history(devices, rounds=rounds, start=now - timedelta(days=2), span=timedelta(days=2)):
        await log.append_batch(writes)
    return await log.last_stream_seq(), time.perf_counter() - started


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
    """The runner's reader (projections.reader) decoding every envelope and event."""
    async for batch in batches(log, 1, head, size=5000):
        decode_batch(batch)


async def api_latencies(base: str, head: int, now: datetime) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
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

    os.environ.update({
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": pg.password_file.read_text().strip(),
    })

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
    migration = (Path(__file__).resolve().parents[1] / "projections/fleet/migrations/001_init.sql").read_text()
    encoder = msgspec.json.Encoder()

    class FleetView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            self.sql_create_statements += [SQL("CREATE SCHEMA IF NOT EXISTS es_view"),  # type: ignore[arg-type]
                                           SQL("SET LOCAL search_path TO es_view, public"),  # type: ignore[arg-type]
                                           SQL(migration.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")  # type: ignore[arg-type]
                                               .replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))]

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

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:  # type: ignore[override]
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
        head, took = await generate(log, args.devices, args.rounds, now)
        print(f"generated {head} events for {args.devices} devices in {took:.1f}s", flush=True)
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

        for _ in range(args.repeat):
            await paired("replay", lambda: replay_only(log, head))
            await paired("reader", lambda: reader_only(log, head))
            await paired("rebuild_fleet", lambda: rebuild(pool, log, FleetProjection()))
            await paired("rebuild_changes", lambda: rebuild(pool, log, ChangesProjection()))
            await paired("rebuild_fleet_with_snapshots",
                         lambda: rebuild(pool, log, FleetProjection(snapshot_every=SNAPSHOT_EVERY)))
        for name, pairs in runs.items():
            figures[name] = statistics.median(rate for _, rate in pairs)
            figures[f"{name}_raw"] = statistics.median(raw for raw, _ in pairs)
            figures[f"{name}_ratio"] = statistics.median(rate / raw for raw, rate in pairs)
            figures[f"{name}_ratio_min"] = min(rate / raw for raw, rate in pairs)
            figures[f"{name}_ratio_max"] = max(rate / raw for raw, rate in pairs)
        await pool.close()

        port = free_port()
        env = {**os.environ, "FLEET_DATABASE_URL": url, "FLEET_NATS_URL": ns.url,
               "FLEET_API_URL": f"http://127.0.0.1:{port}", "FLEET_DATA_DIR": str(tmp / "data"),
               "FLEET_LOG_LEVEL": "warning"}
        api_proc = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
            [sys.executable, "-c", "from fleet.cli import main; main()", "service", "api"], env=env, cwd=ROOT)
        figures.update(await api_latencies(f"http://127.0.0.1:{port}", head, now))
        print({k: round(v, 2) for k, v in figures.items()}, flush=True)

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
          f"{os.cpu_count()} cores, {args.repeat} paired runs")
    print("| measure | raw / peer events/s | ours events/s | ours / them (range) | goal |")
    print("|---|---:|---:|---:|---|")
    for name, goal in (("rebuild_fleet", ">= 0.5x"), ("rebuild_changes", ">= 0.5x"),
                       ("rebuild_fleet_with_snapshots", ">= 0.5x"), ("replay", "-"), ("reader", "-")):
        print(f"| {name} vs raw ordered consumer | {figures[name + '_raw']:,.0f} | {figures[name]:,.0f} | "
              f"{figures[name + '_ratio']:.2f}x ({figures[name + '_ratio_min']:.2f}-"
              f"{figures[name + '_ratio_max']:.2f}) | {goal} |")
    if "peer" in figures:
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
    (tmp / "results.json").write_text(json.dumps({"devices": args.devices, "events": head, **figures}, indent=1))
    print(f"\n(raw figures in {tmp / 'results.json'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer-events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2, help="paired raw/ours runs of each measure")
    asyncio.run(main(parser.parse_args()))
