"""The projection runner: an ordered consumer of FLEET_EVENTS from each projection's checkpoint+1,
applying events in batches; a batch's rows and the new checkpoint commit in one PostgreSQL
transaction, so redelivery or a crash between apply and ack never applies an event twice.

- Unknown event types are skipped and counted (the checkpoint still moves past them).
- A poison event (one that does not decode, or that an apply function or PostgreSQL refuses) is
  recorded in `projection_poison` with its sequence, aggregate and error, and skipped: the events
  before it commit, the checkpoint moves past it, the events after it are applied, and the
  projection goes on (DESIGN §11: bad input never stops a read model for good). A rebuild does the
  same. `fleet projections status` and `/readyz` name the skipped events.
- A lost PostgreSQL or NATS connection is retried with backoff, resuming from the checkpoint.
- Each projection lives in its own schema `rm_<name>`. A rebuild builds `rm_<name>_build` from
  sequence 1, then, in one transaction holding the status row, applies the last tail, renames the
  schemas and bumps the generation; queries keep reading the old schema until that commit.
- A projection whose migrations (its version) differ from what the live schema was built with
  rebuilds itself at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import asyncpg

from shared import telemetry
from shared.envelope import Envelope, Event, decode_event
from shared.errors import FleetError, Unavailable
from shared.eventlog import UNDECODABLE, EventLog, Recorded
from shared.transient import PG_TRANSIENT

log = logging.getLogger(__name__)

CONTROL_SQL = Path(__file__).parent / "control.sql"
BATCH_SIZE = 1000
WRITES_IN_FLIGHT = 2  # a rebuild's bulk writes running at once (PostgreSQL parses them in its own processes)
AFTER_LOAD_IN_PARALLEL = 3  # index builds and analyzes at once after a rebuild's load


class Item(NamedTuple):
    """One known event of a batch."""

    seq: int
    envelope: Envelope
    event: Event


class Poison(Exception):
    """An apply function raised on `items[index]` (log sequence `seq`)."""

    def __init__(self, index: int, seq: int, cause: BaseException) -> None:
        super().__init__(f"event {seq}: {cause!r}")
        self.index = index
        self.seq = seq
        self.cause = cause


class _Restart(Exception):
    """The live schema was swapped or the checkpoint moved under us: start again from it."""


class Projection(Protocol):
    """A read model: a name, SQL migrations, and how to apply a batch inside a transaction."""

    name: str
    migrations: Path

    async def apply_batch(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None: ...


Statement = tuple[str, tuple[Any, ...]]  # SQL and its arguments


class Builder(Protocol):
    """Builds a projection's rows from sequence 1 in memory and writes them in bulk (rebuilds only:
    a schema under construction has no readers and no checkpoint worth keeping)."""

    def add(self, items: Sequence[Item], last_seq: int, last_at: str) -> None:
        """Fold a batch in order; raise Poison naming the event an apply function refused (the
        events before it stay folded)."""

    def should_flush(self) -> bool:
        """Whether enough is pending to write now."""

    def take(self, *, final: bool) -> list[Statement]:
        """Hand over what is pending (everything when `final`) as statements into the schema on
        the search path. They run while folding goes on, several at once, each on its own
        connection in its own transaction, in no set order (so none may depend on another)."""


AfterBatch = Callable[[asyncpg.Connection, int, str], Awaitable[None]]


def schema_of(name: str) -> str:
    """The live schema of a projection."""
    return f"rm_{name}"


def migration_files(projection: Projection) -> list[Path]:
    """The projection's migrations in order (`NNN_what.sql`)."""
    return sorted(projection.migrations.glob("[0-9][0-9][0-9]_*.sql"))


AFTER_LOAD = "-- @after-load"


def migration_parts(projection: Projection) -> tuple[list[str], list[str]]:
    """Each migration split at its `-- @after-load` marker: what creates the tables, and what a
    rebuild may run once its rows are written (indexes); a row-by-row build runs both at once."""
    before, after = [], []
    for migration in migration_files(projection):
        head, _, tail = migration.read_text().partition(AFTER_LOAD)
        before.append(head)
        after.append(tail.partition("\n")[2] if tail else "")
    return [sql for sql in before if _has_sql(sql)], [sql for sql in after if _has_sql(sql)]


def _has_sql(text: str) -> bool:
    """Whether a script holds a statement, not only comments (PostgreSQL answers an empty query
    with nothing asyncpg can read)."""
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def version_of(projection: Projection) -> int:
    """The schema version: the number of the newest migration."""
    files = migration_files(projection)
    return int(files[-1].name[:3]) if files else 0


RETRYABLE: tuple[type[BaseException], ...] = (*PG_TRANSIENT, FleetError)


async def _unlock(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """Release a session's advisory lock. When the connection cannot say it (its server went away
    mid-operation), it is closed instead: the session's end releases the lock as well, and the
    error that brought us here is the one raised."""
    try:
        await conn.execute(sql, *args)
    except PG_TRANSIENT:
        with contextlib.suppress(asyncpg.InterfaceError):  # already closed or handed back
            conn.terminate()


CONTROL_LOCK = 724201
LOCK_TIMEOUT = 30.0  # seconds a starting runner waits for the start-up lock before giving up


async def take_control_lock(conn: asyncpg.Connection, timeout: float = LOCK_TIMEOUT) -> None:
    """Take the start-up lock (concurrent starters: one at a time), waiting at most `timeout`
    seconds; a wait is logged with who holds it, and the end of the wait is Unavailable (the
    supervisor restarts the part) instead of a hang (only fleet_owner may take advisory locks at
    all: shared.pgroles)."""
    deadline = asyncio.get_running_loop().time() + timeout
    logged = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", CONTROL_LOCK):
        if not logged:
            holder = await conn.fetchrow(
                "SELECT l.pid, a.usename FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.objid = $1 AND l.granted", CONTROL_LOCK)
            log.warning("waiting (up to %.0f s) for the projections' start-up lock, held by %s", timeout,
                        f"pid {holder['pid']} ({holder['usename']})" if holder else "another session")
            logged = True
        if asyncio.get_running_loop().time() >= deadline:
            raise Unavailable(f"the projections' start-up lock was held for more than {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def ensure_control(conn: asyncpg.Connection, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Create the control tables if missing (idempotent)."""
    await take_control_lock(conn, lock_timeout)
    try:
        await conn.execute(CONTROL_SQL.read_text())
    finally:
        await _unlock(conn, "SELECT pg_advisory_unlock($1)", CONTROL_LOCK)


def decode_batch(records: Sequence[Recorded]) -> tuple[list[Item], int]:
    """Known events as Items, and how many were of unknown types."""
    items: list[Item] = []
    unknown = 0
    for record in records:
        event = _decode(record)
        if event is None:
            unknown += 1
        else:
            items.append(Item(record.seq, record.envelope, event))
    return items, unknown


class _Undecodable(Event, frozen=True, kw_only=True):
    """Stands in for a known type whose data does not decode; applying it is a poison event."""

    reason: str


NUL = "\x00"


def _decode(record: Recorded) -> Event | None:
    envelope = record.envelope
    if envelope.type == UNDECODABLE:  # a body that is no envelope
        return _Undecodable(reason=f"not an event envelope: {envelope.causation_id}")
    if b"\\u0000" in bytes(envelope.data) or any(NUL in (text or "") for text in (
            envelope.type, envelope.aggregate, envelope.aggregate_id, envelope.actor, envelope.at,
            envelope.causation_id, envelope.correlation_id)):
        # PostgreSQL text and jsonb cannot hold it: poison before any write (a bulk write of a
        # rebuild would otherwise fail as a whole, with no event to name)
        return _Undecodable(reason=f"{envelope.type} holds a NUL character, which PostgreSQL cannot store")
    try:
        return decode_event(record.envelope)
    except Exception as exc:  # a known type that does not decode is poison, not unknown
        return _Undecodable(reason=f"{record.envelope.type}: {exc}")


def _batches(log_: EventLog, from_seq: int, to_seq: int | None, follow: bool,
             size: int) -> AsyncIterator[list[Recorded]]:
    return log_.batches(from_seq, to_seq, follow=follow, size=size)


def _cancelled() -> bool:
    """Is the running task being cancelled (even if what it awaited raised something else)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Runner:
    """Keeps one projection up to date with the log."""

    def __init__(self, pool: asyncpg.Pool, eventlog: EventLog, projection: Projection, *,
                 batch_size: int = BATCH_SIZE, after_batch: AfterBatch | None = None,
                 retry_wait: float = 1.0) -> None:
        self.pool = pool
        self.log = eventlog
        self.projection = projection
        self.name = projection.name
        self.batch_size = batch_size
        self.after_batch = after_batch
        self.retry_wait = retry_wait
        self.version = version_of(projection)
        self.rate = 0.0
        self.checkpoint = 0  # the last sequence applied while following (its `progress` duty reads it)
        self.rebuilding = False

    async def run(self) -> None:
        """Follow the log until cancelled."""
        wait = self.retry_wait
        while True:
            try:
                await self._ensure_built()
                await self._follow()
            except _Restart:
                continue
            except RETRYABLE as exc:
                if _cancelled():  # a cancellation asyncpg reported as a lost connection: end
                    raise asyncio.CancelledError from exc
                log.warning("projection %s: %r; retrying in %.1fs from its checkpoint",
                            self.name, exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)
                continue
            wait = self.retry_wait

    async def _ensure_built(self) -> None:
        async with self.pool.acquire() as conn:
            await ensure_control(conn)
            row = await conn.fetchrow("SELECT version FROM projection_status WHERE name = $1", self.name)
        if row is None or row["version"] != self.version:
            log.info("projection %s: schema version %s -> %s, rebuilding", self.name,
                     None if row is None else row["version"], self.version)
            self.rebuilding = True
            try:
                await rebuild(self.pool, self.log, self.projection, batch_size=self.batch_size,
                              after_batch=self.after_batch, only_if_stale=True)
            finally:
                self.rebuilding = False

    async def _follow(self) -> None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT checkpoint, generation FROM projection_status WHERE name = $1", self.name)
        checkpoint, generation = int(row["checkpoint"]), int(row["generation"])
        self.checkpoint = checkpoint
        rate_saved = 0.0
        async for batch in _batches(self.log, checkpoint + 1, None, True, self.batch_size):
            fresh = [r for r in batch if r.seq > checkpoint]  # redelivered events change nothing
            if not fresh:
                continue
            started, started_ns = time.perf_counter(), time.time_ns()
            await apply_records(self.pool, self.projection, schema_of(self.name), fresh,
                                expect=(checkpoint, generation), after_batch=self.after_batch)
            ended_ns = time.time_ns()
            for record in fresh:  # the command's trace goes on into the projection that applied it
                telemetry.child_span(f"project {self.name} {record.envelope.type}", record.traceparent,
                                     started_ns, ended_ns, {"fleet.seq": record.seq})
            checkpoint = self.checkpoint = fresh[-1].seq
            elapsed = max(time.perf_counter() - started, 1e-6)
            self.rate = 0.8 * self.rate + 0.2 * (len(fresh) / elapsed) if self.rate else len(fresh) / elapsed
            if time.monotonic() - rate_saved > 1.0:
                rate_saved = time.monotonic()
                async with self.pool.acquire() as conn:
                    await conn.execute("UPDATE projection_status SET rate = $2 WHERE name = $1",
                                       self.name, self.rate)


async def apply_records(pool: asyncpg.Pool, projection: Projection, schema: str,
                        records: Sequence[Recorded], *, expect: tuple[int, int] | None,
                        after_batch: AfterBatch | None = None, status: bool = True) -> None:
    """Apply one batch and move the checkpoint past it, in one transaction.

    `expect` = (checkpoint, generation) the caller believes live; a mismatch raises _Restart.
    `status=False` is used while building a fresh schema (no status row to move yet)."""
    items, unknown = decode_batch(records)
    last = records[-1]
    try:
        async with pool.acquire() as conn, conn.transaction():
            await _apply_in(conn, projection, schema, items, unknown=unknown, last_seq=last.seq,
                            expect=expect, status=status)
            if after_batch is not None:
                await after_batch(conn, last.seq, last.envelope.at)
        return
    except Poison as poison:
        await _skip_poison(pool, projection, schema, records, poison, expect=expect,
                           after_batch=after_batch, status=status)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, PG_TRANSIENT):
            raise
        if len(records) == 1:
            await _skip_poison(pool, projection, schema, records, Poison(0, last.seq, exc), expect=expect,
                               after_batch=after_batch, status=status)
            return
        # Which event did PostgreSQL refuse? Apply one by one: the culprit becomes poison.
        for record in records:
            await apply_records(pool, projection, schema, [record],
                                expect=expect, after_batch=None, status=status)
            if expect is not None:
                expect = (record.seq, expect[1])


async def _apply_in(conn: asyncpg.Connection, projection: Projection, schema: str, items: Sequence[Item], *,
                    unknown: int, last_seq: int, expect: tuple[int, int] | None, status: bool) -> None:
    await conn.execute(f"SET LOCAL search_path TO {schema}, public")
    if not status:
        # A fresh schema under construction: a crash restarts the build from scratch anyway, so its
        # batches need not wait for the WAL flush. (The swap that makes it live is synchronous.)
        await conn.execute("SET LOCAL synchronous_commit TO off")
    if status:
        row = await conn.fetchrow(
            "SELECT checkpoint, generation FROM projection_status WHERE name = $1 FOR UPDATE",
            projection.name)
        if expect is not None and (row is None or (row["checkpoint"], row["generation"]) != expect):
            raise _Restart()
    undecodable_poison(items)
    if items:
        await projection.apply_batch(conn, items)
    if status:
        await conn.execute(
            "UPDATE projection_status SET checkpoint = $2, applied = applied + $3, "
            "skipped_unknown = skipped_unknown + $4, updated_at = now(), state = 'running' WHERE name = $1",
            projection.name, last_seq, len(items), unknown)
    else:
        await conn.execute(
            "UPDATE build_checkpoint SET checkpoint = $1, applied = applied + $2, "
            "skipped_unknown = skipped_unknown + $3", last_seq, len(items), unknown)


async def _skip_poison(pool: asyncpg.Pool, projection: Projection, schema: str, records: Sequence[Recorded],
                       poison: Poison, *, expect: tuple[int, int] | None, after_batch: AfterBatch | None,
                       status: bool) -> None:
    """Commit the events before the poison, record the poison and move the checkpoint past it,
    then apply the events after it (each step its own transaction, each checking `expect`)."""
    before = [r for r in records if r.seq < poison.seq]
    after = [r for r in records if r.seq > poison.seq]
    if before:
        await apply_records(pool, projection, schema, before, expect=expect, status=status)
        expect = None if expect is None else (before[-1].seq, expect[1])
    poisoned = next(r for r in records if r.seq == poison.seq)
    async with pool.acquire() as conn, conn.transaction():
        if status:
            row = await conn.fetchrow(
                "SELECT checkpoint, generation FROM projection_status WHERE name = $1 FOR UPDATE",
                projection.name)
            if expect is not None and (row is None or (row["checkpoint"], row["generation"]) != expect):
                raise _Restart()
            await conn.execute("UPDATE projection_status SET checkpoint = $2, updated_at = now() WHERE name = $1",
                               projection.name, poisoned.seq)
        else:
            await conn.execute(f"UPDATE {schema}.build_checkpoint SET checkpoint = $1", poisoned.seq)
        await record_poison(conn, projection.name, poisoned, poison.cause, building=not status)
    if after:
        expect = None if expect is None else (poisoned.seq, expect[1])
        await apply_records(pool, projection, schema, after, expect=expect, after_batch=after_batch,
                            status=status)


async def rebuild(pool: asyncpg.Pool, eventlog: EventLog, projection: Projection, *,
                  batch_size: int = BATCH_SIZE, after_batch: AfterBatch | None = None,
                  progress: Callable[[int, int], None] | None = None, only_if_stale: bool = False) -> int:
    """Build the projection from sequence 1 into a fresh schema and swap it in atomically.

    One rebuild of a projection at a time (an advisory lock); with `only_if_stale`, a rebuild that
    finds the schema already at the current version (built by someone else meanwhile) does nothing.
    Returns the checkpoint the new schema went live with."""
    async with pool.acquire() as lock:
        await lock.execute("SELECT pg_advisory_lock(hashtext($1))", f"rebuild:{projection.name}")
        try:
            if only_if_stale:
                await ensure_control(lock)
                row = await lock.fetchrow("SELECT version, checkpoint FROM projection_status WHERE name = $1",
                                          projection.name)
                if row is not None and row["version"] == version_of(projection):
                    return int(row["checkpoint"])
            return await _rebuild(pool, eventlog, projection, batch_size=batch_size,
                                  after_batch=after_batch, progress=progress)
        finally:
            await _unlock(lock, "SELECT pg_advisory_unlock(hashtext($1))", f"rebuild:{projection.name}")


async def _rebuild(pool: asyncpg.Pool, eventlog: EventLog, projection: Projection, *, batch_size: int,
                   after_batch: AfterBatch | None, progress: Callable[[int, int], None] | None) -> int:
    name = projection.name
    live, build = schema_of(name), f"{schema_of(name)}_build"
    version = version_of(projection)
    async with pool.acquire() as conn:
        await ensure_control(conn)
        await conn.execute(
            "INSERT INTO projection_status (name, version) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
            name)
        await conn.execute(
            "UPDATE projection_status SET state = 'rebuilding', updated_at = now() WHERE name = $1", name)
        async with conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {build} CASCADE")
            await conn.execute(f"CREATE SCHEMA {build}")
            await conn.execute(f"SET LOCAL search_path TO {build}, public")
            tables, indexes = migration_parts(projection)
            make_builder: Callable[[], Builder] | None = getattr(projection, "builder", None)
            for sql in tables if make_builder is not None else [*tables, *indexes]:
                await conn.execute(sql)
            await conn.execute(
                "CREATE TABLE build_checkpoint (checkpoint bigint NOT NULL, applied bigint NOT NULL, "
                "skipped_unknown bigint NOT NULL)")
            await conn.execute("INSERT INTO build_checkpoint VALUES (0, 0, 0)")
    target = await eventlog.last_stream_seq()
    checkpoint = 0
    if make_builder is not None:
        checkpoint = await _bulk_build(pool, eventlog, projection, make_builder(), build, target=target,
                                       batch_size=batch_size, progress=progress)
        await _after_load(pool, build, indexes)
    else:
        async for batch in _batches(eventlog, 1, target, False, batch_size):
            await apply_records(pool, projection, build, batch, expect=None, after_batch=after_batch,
                                status=False)
            checkpoint = batch[-1].seq
            if progress is not None:
                progress(checkpoint, target)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow("SELECT 1 FROM projection_status WHERE name = $1 FOR UPDATE", name)
        # The tail appended meanwhile, applied while the live runner waits on the row lock.
        tail_to = await eventlog.last_stream_seq()
        if tail_to > checkpoint:
            async for batch in _batches(eventlog, checkpoint + 1, tail_to, False, batch_size):
                await _apply_tail(conn, projection, build, batch)
            checkpoint = tail_to
        counts = await conn.fetchrow(f"SELECT * FROM {build}.build_checkpoint")
        await conn.execute(f"DROP TABLE {build}.build_checkpoint")
        await conn.execute(f"DROP SCHEMA IF EXISTS {live}_old CASCADE")
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", live)
        if exists:
            await conn.execute(f"ALTER SCHEMA {live} RENAME TO {live}_old")
        await conn.execute(f"ALTER SCHEMA {build} RENAME TO {live}")
        generation = await conn.fetchval(
            "UPDATE projection_status SET version = $2, generation = generation + 1, checkpoint = $3, "
            "applied = $4, skipped_unknown = $5, state = 'running', rebuilt_at = now(), updated_at = now() "
            "WHERE name = $1 RETURNING generation",
            name, version, checkpoint, counts["applied"], counts["skipped_unknown"])
        # The poison the build met is the live schema's now; what the old one met is gone with it.
        await conn.execute("DELETE FROM projection_poison WHERE name = $1 AND generation <> $2", name, generation)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {live}_old CASCADE")
    log.info("projection %s rebuilt to sequence %d (version %d)", name, checkpoint, version)
    return checkpoint


async def _apply_tail(conn: asyncpg.Connection, projection: Projection, build: str,
                      records: Sequence[Recorded]) -> None:
    """Apply a batch of the tail inside the swap's transaction (a savepoint per attempt); when an
    event is poison, apply the batch one event at a time and record and skip the ones refused."""
    try:
        async with conn.transaction():
            items, unknown = decode_batch(records)
            await _apply_in(conn, projection, build, items, unknown=unknown, last_seq=records[-1].seq,
                            expect=None, status=False)
        return
    except (Poison, asyncpg.PostgresError) as exc:
        if isinstance(exc, PG_TRANSIENT):
            raise
        if len(records) == 1:
            cause = exc.cause if isinstance(exc, Poison) else exc
            await record_poison(conn, projection.name, records[0], cause, building=True)
            await conn.execute(f"UPDATE {build}.build_checkpoint SET checkpoint = $1", records[0].seq)
            return
    for record in records:
        await _apply_tail(conn, projection, build, [record])


async def _after_load(pool: asyncpg.Pool, build: str, indexes: Sequence[str]) -> None:
    """Build the indexes of a freshly loaded schema, several at once (each on its own connection:
    the folding is over, so the server has every core), then analyze its tables (fresh tables have
    no statistics; without them the planner guesses, badly)."""

    async def run(sql: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {build}, public")
            await conn.execute("SET LOCAL maintenance_work_mem TO '256MB'")
            await conn.execute(sql)

    async with pool.acquire() as conn:
        tables = [r["tablename"] for r in
                  await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", build)]
    await _gather_bounded([*(run(sql) for sql in indexes)], AFTER_LOAD_IN_PARALLEL)
    await _gather_bounded([run(f'ANALYZE {build}."{table}"') for table in tables], AFTER_LOAD_IN_PARALLEL)


async def _gather_bounded(jobs: Sequence[Awaitable[None]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[None]) -> None:
        async with semaphore:
            await job

    await asyncio.gather(*(one(job) for job in jobs))


async def _bulk_build(pool: asyncpg.Pool, eventlog: EventLog, projection: Projection, builder: Builder,
                      build: str, *, target: int, batch_size: int,
                      progress: Callable[[int, int], None] | None) -> int:
    """Fold the log up to `target` in memory, writing in bulk; return the sequence reached. What
    the builder hands over is written while folding goes on (up to WRITES_IN_FLIGHT statements at
    once, each on its own connection; folding waits when that many are running)."""
    checkpoint = applied = skipped = 0
    writing: set[asyncio.Future[None]] = set()

    async def write(statement: Statement) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {build}, public")
            await conn.execute("SET LOCAL synchronous_commit TO off")
            await conn.execute(statement[0], *statement[1])

    async def start(statements: list[Statement]) -> None:
        for statement in statements:
            while len(writing) >= WRITES_IN_FLIGHT:
                done, _ = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    writing.discard(future)
                    future.result()  # a failed write fails the build
            writing.add(asyncio.ensure_future(write(statement)))

    try:
        async for batch in _batches(eventlog, 1, target, False, max(batch_size, 5000)):
            items, unknown = decode_batch(batch)
            rest: Sequence[Item] = items
            while rest:  # a poison event is recorded and skipped; the fold goes on after it
                cut = next((i for i, item in enumerate(rest) if isinstance(item.event, _Undecodable)), len(rest))
                try:
                    if cut:
                        last = rest[cut - 1] if cut < len(rest) else batch[-1]
                        builder.add(rest[:cut], last.seq, last.envelope.at)
                    if cut == len(rest):
                        break
                    undecodable_poison(rest[cut:cut + 1])  # raises: that event did not decode
                except Poison as poison:
                    record = next(r for r in batch if r.seq == poison.seq)
                    async with pool.acquire() as conn:
                        await record_poison(conn, projection.name, record, poison.cause, building=True)
                    rest = rest[next(i for i, item in enumerate(rest) if item.seq == poison.seq) + 1:]
                    applied -= 1
            applied += len(items)
            skipped += unknown
            checkpoint = batch[-1].seq
            if builder.should_flush():
                await start(builder.take(final=False))
            if progress is not None:
                progress(checkpoint, target)
        started = time.perf_counter()
        await start(builder.take(final=True))
        while writing:
            await writing.pop()
        async with pool.acquire() as conn:
            await conn.execute(f"UPDATE {build}.build_checkpoint SET checkpoint = $1, applied = $2, "
                               "skipped_unknown = $3", checkpoint, applied, skipped)
        log.info("projection %s: built to %d in memory; final write %.1fs", projection.name, checkpoint,
                 time.perf_counter() - started)
    finally:
        for future in writing:
            future.cancel()
        await asyncio.gather(*writing, return_exceptions=True)
    return checkpoint


def undecodable_poison(items: Sequence[Item]) -> None:
    """Raise Poison at the first event whose envelope or data did not decode."""
    for index, item in enumerate(items):
        if isinstance(item.event, _Undecodable):
            raise Poison(index, item.seq, ValueError(item.event.reason))


async def record_poison(conn: asyncpg.Connection, name: str, record: Recorded, cause: BaseException, *,
                        building: bool) -> None:
    """Remember an event the projection skipped (for the live schema's generation, or for the one
    a rebuild will swap in), so operators see it and can decide."""
    message = f"{type(cause).__name__}: {cause}"[:2000]
    log.error("projection %s skipped event %d (%s %s): %s", name, record.seq, record.envelope.type,
              record.envelope.aggregate_id, message)
    await conn.execute(
        "INSERT INTO projection_poison (name, generation, seq, type, aggregate, aggregate_id, error) "
        "SELECT $1, generation + $7, $2, $3, $4, $5, $6 FROM projection_status WHERE name = $1 "
        "ON CONFLICT (name, generation, seq) DO UPDATE SET error = EXCLUDED.error",
        name, record.seq, _printable(record.envelope.type), _printable(record.envelope.aggregate),
        _printable(record.envelope.aggregate_id), _printable(message), int(building))
    if not building:
        await conn.execute(
            "UPDATE projection_status SET error_seq = $2, error = $3, error_at = now() WHERE name = $1",
            name, record.seq, _printable(message))


def _printable(text: str) -> str:
    """Text PostgreSQL accepts whatever the event held (no NUL), bounded."""
    return text.replace("\x00", "\\0")[:2000]


async def create_pool(database_url: str, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python values."""
    from projections.sqlrows import init_connection

    pool: asyncpg.Pool = await asyncpg.create_pool(database_url, init=init_connection, **kwargs)
    return pool
