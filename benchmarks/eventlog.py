"""Benchmark of the event log (issue 2): raw JetStream vs `shared.eventlog`, and the `eventsourcing`
library on PostgreSQL doing the same work, all in one run on one machine.

    .venv/bin/python -m benchmarks.eventlog [--quick] [--rounds N]

Starts an EmbeddedNats (durable: `sync_interval: always`) and an EmbeddedPostgres (durable) in a
temporary directory. Replay is measured first, on a stream of exactly `replay` events; then the
appends. Each round runs the sides interleaved in small blocks (raw, ours, peer, raw, ours, ...);
events/s are medians over the rounds and each ratio is the median of the per-round ratios.

Rows:
- single append: raw `js.publish` awaited one at a time (no headers) vs `EventLog.append` of one
  freshly sealed event with an expected subject sequence (0: a new aggregate per call).
- atomic batch of 1,000: a hand-written JetStream atomic batch (Nats-Batch-Id / Nats-Batch-Sequence,
  commit as a request) vs `EventLog.append_batch` of one subject's 1,000 pre-sealed events; for
  context also the raw batch carrying Nats-Msg-Id and Fleet-Event-Type as ours does.
- replay: a raw ordered consumer counting the messages of the whole stream vs `EventLog.replay`
  decoding every event into its typed event.
- eventsourcing 9.5 (PostgreSQL persistence configured through the environment as its docs say):
  one event per aggregate save vs our single append; one aggregate with 100 (and 1,000) events per
  save vs our append of as many events to one subject, event creation timed on both sides;
  reading the whole notification log (mapped back to domain events) vs our replay of a stream with
  the same number of events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS

from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.envelope import Envelope, encode_envelope, seal
from shared.eventlog import EventLog, Write
from shared.events.registry import DeviceAdded, DeviceRelabeled
from shared.subjects import EVENTS_STREAM, EVENTS_WILDCARD

LABELS = {"rack": "r12", "zone": "north", "role": "edge"}
NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


class Sizes(msgspec.Struct):
    single: int  # events appended one per call
    batch: int  # events per raw/our atomic batch
    batches: int  # how many such batches
    peer_batch: int  # events per eventsourcing save (and our matching append)
    peer_batches: int
    replay: int  # events in the stream (and in the eventsourcing notification log) when read back
    rounds: int


FULL = Sizes(single=2000, batch=1000, batches=20, peer_batch=100, peer_batches=20, replay=100_000, rounds=5)
QUICK = Sizes(single=200, batch=1000, batches=3, peer_batch=100, peer_batches=3, replay=10_000, rounds=1)


def added(device_id: str) -> Envelope:
    return seal(DeviceAdded(device_id=device_id, site_id="site-1", labels=LABELS), actor="bench", at=NOW)


def relabeled(device_id: str, n: int) -> Envelope:
    labels = {**LABELS, "n": str(n)}
    return seal(DeviceRelabeled(device_id=device_id, labels=labels), actor="bench", at=NOW)


def history(device_id: str, count: int) -> list[Envelope]:
    return [added(device_id)] + [relabeled(device_id, n) for n in range(1, count)]


def uid() -> str:
    return uuid.uuid4().hex[:16]


# --- raw JetStream ------------------------------------------------------------------------------
# Each function does one block of work and returns the seconds it took.


async def raw_single(nc: NATS, n: int) -> float:
    js = nc.jetstream()
    payload = encode_envelope(added("raw"))
    prefix = f"fleet.evt.device.raw{uid()}-"
    started = time.perf_counter()
    for i in range(n):
        await js.publish(f"{prefix}{i}", payload)
    return time.perf_counter() - started


async def raw_batch(nc: NATS, payloads: list[bytes], with_ids: bool = False) -> float:
    """One hand-written JetStream atomic batch. `with_ids` adds the two headers every Fleetplane
    event carries (Nats-Msg-Id, Fleet-Event-Type), to show what they cost the server."""
    subject = f"fleet.evt.device.rawb{uid()}"
    batch_id = uid()
    size = len(payloads)
    started = time.perf_counter()
    for index, payload in enumerate(payloads[:-1], 1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
        if with_ids:
            headers["Nats-Msg-Id"] = f"{batch_id}-{index}"
            headers["Fleet-Event-Type"] = "DeviceRelabeled"
        await nc.publish(subject, payload, headers=headers)
    headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(size), "Nats-Batch-Commit": "1"}
    if with_ids:
        headers["Nats-Msg-Id"] = f"{batch_id}-{size}"
        headers["Fleet-Event-Type"] = "DeviceRelabeled"
    reply = await nc.request(subject, payloads[-1], timeout=10, headers=headers)
    elapsed = time.perf_counter() - started
    ack = msgspec.json.decode(reply.data)
    if "error" in ack or ack.get("count") != size:
        raise RuntimeError(f"raw atomic batch refused: {ack}")
    return elapsed


async def raw_replay(nc: NATS, total: int) -> float:
    js = nc.jetstream()
    done = asyncio.get_running_loop().create_future()
    count = 0

    async def received(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == total and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    sub = await js.subscribe(EVENTS_WILDCARD, stream=EVENTS_STREAM, cb=received, ordered_consumer=True)
    await done
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed


# --- ours ---------------------------------------------------------------------------------------


async def our_single(log: EventLog, n: int) -> float:
    """n appends of one event each, to a new aggregate (expected sequence 0); sealing the event
    is inside the clock."""
    prefix = f"ours{uid()}-"
    started = time.perf_counter()
    for i in range(n):
        device = f"{prefix}{i}"
        await log.append(f"fleet.evt.device.{device}", [added(device)], 0)
    return time.perf_counter() - started


async def our_batch(log: EventLog, size: int, *, sealed: list[Envelope] | None = None) -> float:
    """One append_batch of `size` events to one new aggregate. With `sealed`, the events were
    made before the clock started (as the raw batch's payloads are); without, sealing is timed."""
    device = f"oursb{uid()}"
    started = time.perf_counter()
    envelopes = sealed if sealed is not None else history(device, size)
    appended = await log.append_batch([Write(f"fleet.evt.device.{device}", envelopes, 0)])
    elapsed = time.perf_counter() - started
    assert len(appended) == size
    return elapsed


async def our_replay(log: EventLog, total: int) -> float:
    count = 0
    started = time.perf_counter()
    async for recorded in log.replay():
        if recorded.event is None:
            raise RuntimeError(f"unknown event type {recorded.envelope.type}")
        count += 1
    elapsed = time.perf_counter() - started
    if count != total:
        raise RuntimeError(f"replay returned {count} events, expected {total}")
    return elapsed


async def fill_stream(log: EventLog, total: int) -> None:
    """Top the stream up to `total` events with 1,000-event atomic batches (100 subjects each)."""
    have = await log.last_stream_seq()
    while have < total:
        want = min(1000, total - have)
        per = max(1, want // 100)
        writes = []
        left = want
        while left:
            device = f"fill{uid()}"
            k = min(per, left)
            writes.append(Write(f"fleet.evt.device.{device}", history(device, k), 0))
            left -= k
        await log.append_batch(writes)
        have += want


# --- eventsourcing (the peer) ---------------------------------------------------------------------


def configure_eventsourcing(pg: EmbeddedPostgres, dbname: str) -> None:
    """Point the eventsourcing library at `dbname` on `pg` the way its docs say: the environment."""
    os.environ.update({
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": pg.password_file.read_text().strip(),
    })


def peer_setup(pg: EmbeddedPostgres, dbname: str) -> Any:
    """An eventsourcing Application on PostgreSQL, configured through the environment as its
    documentation describes (PERSISTENCE_MODULE and POSTGRES_*)."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    configure_eventsourcing(pg, dbname)

    class Device(Aggregate):
        @event("Added")
        def __init__(self, site_id: str, labels: dict[str, str]) -> None:
            self.site_id = site_id
            self.labels = labels

        @event("Relabeled")
        def relabel(self, labels: dict[str, str]) -> None:
            self.labels = labels

    class Fleet(Application[Any]):
        # The notification log's page size: 1,000 instead of the default 10 (kinder to the peer).
        log_section_size = 1000

        def add(self, count: int) -> None:
            device = Device(site_id="site-1", labels=LABELS)
            for n in range(1, count):
                device.relabel({**LABELS, "n": str(n)})
            self.save(device)

    return Fleet()


def peer_saves(app: Any, per_save: int, saves: int) -> float:
    """`saves` saves of a new aggregate holding `per_save` events (made inside the clock)."""
    started = time.perf_counter()
    for _ in range(saves):
        app.add(per_save)
    return time.perf_counter() - started


def peer_fill(app: Any, total: int) -> None:
    have = app.recorder.max_notification_id() or 0
    while have < total:
        k = min(1000, total - have)
        app.add(k)
        have += k


def peer_read(app: Any, total: int) -> float:
    count = 0
    start = 1
    started = time.perf_counter()
    while True:
        notifications = app.notification_log.select(start, 1000)
        if not notifications:
            break
        for notification in notifications:
            app.mapper.to_domain_event(notification)
        count += len(notifications)
        start = notifications[-1].id + 1
    elapsed = time.perf_counter() - started
    if count != total:
        raise RuntimeError(f"notification log returned {count} events, expected {total}")
    return elapsed


# --- the run ------------------------------------------------------------------------------------


class Row(msgspec.Struct):
    operation: str
    base_label: str
    base: float  # events/s, median over rounds
    ours: float  # events/s, median over rounds
    goal: float | None  # None: shown for context, no goal
    ratio: float  # ours / base: median of the per-round ratios
    low: float
    high: float

    @property
    def met(self) -> str:
        if self.goal is None:
            return "-"
        return "yes" if self.ratio >= self.goal else "NO"


class Samples:
    """Events and seconds per measurement and round; a round's rate is events / seconds."""

    def __init__(self) -> None:
        self.rounds: dict[str, list[tuple[int, float]]] = {}

    def start_round(self) -> None:
        for values in self.rounds.values():
            values.append((0, 0.0))

    def add(self, key: str, events: int, seconds: float) -> None:
        values = self.rounds.setdefault(key, [(0, 0.0)])
        count, total = values[-1]
        values[-1] = (count + events, total + seconds)

    def rate(self, key: str) -> float:
        return statistics.median(events / seconds for events, seconds in self.rounds[key] if seconds)

    def ratios(self, ours: str, base: str) -> list[float]:
        """ours / base per round: the two ran interleaved in the same round, so load from other
        work on the machine hits both alike."""
        return [
            (oe / os_) / (be / bs)
            for (oe, os_), (be, bs) in zip(self.rounds[ours], self.rounds[base], strict=True)
            if os_ and bs
        ]

    def row(self, operation: str, label: str, base: str, ours: str, goal: float | None) -> Row:
        ratios = self.ratios(ours, base)
        return Row(operation, label, self.rate(base), self.rate(ours), goal,
                   statistics.median(ratios), min(ratios), max(ratios))

    def report(self) -> None:
        for key, values in self.rounds.items():
            events, seconds = values[-1]
            if seconds:
                print(f"  {key:<34} {events / seconds:>10,.0f} events/s", file=sys.stderr, flush=True)


async def bench(sizes: Sizes, tmp: Path) -> tuple[list[Row], int]:
    server = await EmbeddedNats(tmp / "nats").start()
    pg = await EmbeddedPostgres(tmp / "pg", durable=True).start()
    nc = None
    try:
        nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
        log = EventLog(nc)
        await log.ensure_stream()
        await pg.create_database("peer")
        app = await asyncio.to_thread(peer_setup, pg, "peer")
        # Replay first, while the stream holds exactly `sizes.replay` events (the append rounds
        # below add more); the peer's notification log gets exactly as many.
        total = sizes.replay
        await fill_stream(log, total)
        await asyncio.to_thread(peer_fill, app, total)
        s = Samples()
        for r in range(sizes.rounds):
            print(f"replay round {r + 1}/{sizes.rounds} ({total:,} events)", file=sys.stderr, flush=True)
            s.start_round()
            s.add("raw replay", total, await raw_replay(nc, total))
            s.add("ours replay", total, await our_replay(log, total))
            s.add("peer read", total, await asyncio.to_thread(peer_read, app, total))
            s.report()

        # Warm up the three writers (connections, prepared statements) before the clock runs.
        await asyncio.to_thread(peer_saves, app, 1, 10)
        await asyncio.to_thread(peer_saves, app, sizes.peer_batch, 1)
        await raw_single(nc, 10)
        await our_single(log, 10)

        b, pb = sizes.batch, sizes.peer_batch
        payloads = [encode_envelope(e) for e in history("raw", b)]
        # Work is interleaved in small blocks (raw, ours, peer, raw, ours, peer, ...) so that load
        # from other processes on the machine falls on all of them alike.
        for r in range(sizes.rounds):
            print(f"round {r + 1}/{sizes.rounds}", file=sys.stderr, flush=True)
            s.start_round()
            block = 100
            for _ in range(sizes.single // block):
                s.add("raw single", block, await raw_single(nc, block))
                s.add("ours single", block, await our_single(log, block))
                s.add("peer single", block, await asyncio.to_thread(peer_saves, app, 1, block))
            for _ in range(sizes.batches):
                sealed = history(f"oursb{uid()}", b)
                s.add(f"raw batch {b}", b, await raw_batch(nc, payloads))
                s.add(f"raw batch {b} + ids", b, await raw_batch(nc, payloads, with_ids=True))
                s.add(f"ours batch {b}", b, await our_batch(log, b, sealed=sealed))
            for _ in range(sizes.peer_batches):
                s.add(f"raw batch {pb}", pb, await raw_batch(nc, payloads[:pb]))
                s.add(f"ours batch {pb} (sealing timed)", pb, await our_batch(log, pb))
                s.add(f"peer batch {pb}", pb, await asyncio.to_thread(peer_saves, app, pb, 1))
            for _ in range(max(1, sizes.peer_batches * pb // b)):
                s.add(f"ours batch {b} (sealing timed)", b, await our_batch(log, b))
                s.add(f"peer batch {b}", b, await asyncio.to_thread(peer_saves, app, b, 1))
            s.report()

    finally:
        if nc is not None:
            await nc.close()
        server.stop()
        pg.stop()

    rows = [
        s.row("single append, 1 event per call", "raw js.publish", "raw single", "ours single", 0.8),
        s.row(f"atomic batch of {b} events", "raw atomic batch", f"raw batch {b}", f"ours batch {b}", 0.7),
        s.row("(same; raw also sends Nats-Msg-Id, Fleet-Event-Type)", "raw atomic batch + ids",
              f"raw batch {b} + ids", f"ours batch {b}", None),
        s.row(f"replay {total:,} events, typed", "raw ordered consumer", "raw replay", "ours replay", 0.6),
        s.row("single append vs 1-event save", "eventsourcing", "peer single", "ours single", 2.0),
        s.row(f"{pb} events per append vs per save", "eventsourcing",
              f"peer batch {pb}", f"ours batch {pb} (sealing timed)", 3.0),
        s.row(f"(same; raw atomic batch of {pb})", "raw atomic batch",
              f"raw batch {pb}", f"ours batch {pb} (sealing timed)", None),
        s.row(f"{b} events per append vs per save", "eventsourcing",
              f"peer batch {b}", f"ours batch {b} (sealing timed)", 3.0),
        s.row("replay vs notification-log read", "eventsourcing", "peer read", "ours replay", 2.0),
    ]
    return rows, total


def table(rows: list[Row]) -> str:
    lines = [
        "| operation | raw / peer | raw / peer events/s | ours events/s | ours / them (range) | goal | met? |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        goal = "-" if row.goal is None else f">= {row.goal:g}x"
        lines.append(
            f"| {row.operation} | {row.base_label} | {row.base:,.0f} | {row.ours:,.0f} | "
            f"{row.ratio:.2f}x ({row.low:.2f}-{row.high:.2f}) | {goal} | {row.met} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement (median)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes.rounds = args.rounds
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        rows, _ = asyncio.run(bench(sizes, Path(tmp)))
    print(f"\nEvent log benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{'quick' if args.quick else 'full'} sizes {msgspec.json.encode(sizes).decode()}.\n"
          f"events/s: median of {sizes.rounds} round(s); ours / them: median (and range) of the "
          "per-round ratios, each round running both sides interleaved.\n")
    print(table(rows))


if __name__ == "__main__":
    main()
