"""Answers to the query API's questions, live from the read models or historical from a replay.

Live answers read the data and the projection's checkpoint in one read-only repeatable-read
transaction, so `as_of_seq` is exactly the sequence the rows reflect. Historical answers (`at=` or
`at_seq=`) come from `PointInTime` (fleet) or from `changes` cut at the sequence (changes are
append-only, so the rows up to a sequence are the changes as they stood then).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from projections.api.diff import DiffCache
from projections.api.picture import PictureWatch
from projections.api.schemas import (
    ChangePage,
    Counts,
    DeviceAnswer,
    DevicePage,
    PoisonedEvent,
    ProjectionsAnswer,
    ProjectionState,
    RolloutAnswer,
    RolloutItem,
    RolloutPage,
    SiteCounts,
    SiteItem,
    SitePage,
    SiteSnapshot,
    SnapshotCounts,
    SnapshotItem,
    SnapshotPage,
    Summary,
    SummaryCell,
)
from projections.changes.model import ChangeRow
from projections.fleet import model, reads
from projections.fleet.filters import DeviceFilter
from projections.fleet.model import COUNTER_FIELDS, FleetState, RolloutRow, SnapshotRow
from projections.fleet.store import DEVICES, ROLLOUTS, load_progress
from projections.pointintime import PointInTime
from shared.errors import Invalid, NotFound, Unavailable
from shared.eventlog import EventLog
from shared.times import format_time, parse_time, utcnow

FLEET, CHANGES = "fleet", "changes"
MIN_SEQ_WAIT = 5.0
POISON_LISTED = 20  # skipped events listed per projection (all are counted)
# The log's head (for `lag`) is a NATS round trip. A head younger than HEAD_REFRESH is used as is;
# an older one is refreshed in the background while answers go on using it, up to HEAD_MAX_AGE,
# past which an answer waits for a fresh one. So under steady traffic no answer waits on NATS, and
# `lag` is computed from a head at most HEAD_MAX_AGE old.
HEAD_REFRESH = 0.2
HEAD_MAX_AGE = 1.0


# --- cursors ---------------------------------------------------------------------------------------

def query_key(endpoint: str, params: dict[str, Any]) -> str:
    """A short fingerprint of a query (everything but cursor and limit)."""
    text = endpoint + msgspec.json.encode(sorted((k, str(v)) for k, v in params.items() if v is not None)).decode()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_cursor(key: str, last: str | int) -> str:
    """An opaque cursor continuing after `last` for the query `key`."""
    return base64.urlsafe_b64encode(msgspec.json.encode([key, last])).decode().rstrip("=")


def read_cursor(cursor: str | None, key: str) -> str | int | None:
    """Where a cursor continues; a cursor of another query or garbage is refused."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fingerprint, last = msgspec.json.decode(raw, type=tuple[str, str | int])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise Invalid("not a cursor this API issued", field="cursor") from None
    if fingerprint != key:
        raise Invalid("this cursor belongs to another query (filters changed?)", field="cursor")
    return last


# --- filters (the device filter is the fleet projection's: projections.fleet.filters) -----------

class ChangeFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of GET /v1/changes."""

    start: datetime | None = None
    end: datetime | None = None
    device: str | None = None
    site: str | None = None
    snapshot: str | None = None
    rollout: str | None = None
    actor: str | None = None
    type: str | None = None
    order: str = "desc"


__all__ = ["ChangeFilter", "DeviceFilter", "ReadModels"]
CHANGE_COLUMNS = list(ChangeRow.__struct_fields__)


def _checkpoint_of(value: int | None, name: str) -> int:
    if value is None:
        raise Unavailable(f"the {name} projection has not been built yet", field="projection")
    return int(value)


def _sum(cells: Iterable[dict[str, int]]) -> Counts:
    total = dict.fromkeys(COUNTER_FIELDS, 0)
    for cell in cells:
        for f in COUNTER_FIELDS:
            total[f] += cell[f]
    return Counts(**total)


def _numbered_from_one(item: RolloutItem) -> RolloutItem:
    """Waves as the API (like every command reply) counts them, from 1; the read model keeps the
    events' numbering, from 0 (docs/contract.md)."""
    gate = item.last_gate
    return msgspec.structs.replace(
        item, wave=item.wave + 1,
        last_gate={**gate, "wave": gate["wave"] + 1} if gate and isinstance(gate.get("wave"), int) else gate,
        progress=[msgspec.structs.replace(w, wave=w.wave + 1) for w in item.progress])


class ReadModels:
    """The query side: a PostgreSQL pool, the event log (head and replays), point in time."""

    def __init__(self, pool: asyncpg.Pool, eventlog: EventLog, *, ready_lag: int = 1000,
                 picture: PictureWatch | None = None) -> None:
        self.pool = pool
        self.picture = picture  # how fresh drift's picture of the devices is (None: not watched)
        self.log = eventlog
        self.pit = PointInTime(pool, eventlog)
        self.diffs = DiffCache()
        self.ready_lag = ready_lag
        self._head: tuple[float, int | None] = (float("-inf"), None)
        self._refreshing: asyncio.Future[int | None] | None = None

    # --- freshness ---------------------------------------------------------------------------------

    async def log_head(self, max_age: float = HEAD_MAX_AGE) -> int | None:
        """The log's last sequence as known at most `max_age` seconds ago (None when NATS is
        unreachable); `max_age=0` asks NATS now."""
        if max_age <= 0:
            return await self._fetch_head()
        stamp, value = self._head
        age = time.monotonic() - stamp
        if age >= HEAD_REFRESH and self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh_head())
        if age < max_age or self._refreshing is None:
            return value
        return await asyncio.shield(self._refreshing)

    async def _refresh_head(self) -> int | None:
        try:
            return await self._fetch_head()
        finally:
            self._refreshing = None

    async def _fetch_head(self) -> int | None:
        started = time.monotonic()
        try:
            value: int | None = await asyncio.wait_for(self.log.last_stream_seq(), 2.0)
        except Exception:  # the log being down (or unreachable) is not our 500
            value = None
        if started >= self._head[0]:
            self._head = (started, value)  # stamped when asked: the head is at least this new
        return value

    async def _head_reaching(self, seq: int) -> int | None:
        """The head, asked again from NATS when the known one is behind `seq` (a sequence a client
        just got from a command reply may be newer than the head known a moment ago)."""
        head = await self.log_head()
        if head is not None and seq > head:
            head = await self.log_head(max_age=0)
        return head

    async def lag(self, seq: int) -> int | None:
        """How many events the log holds beyond `seq`."""
        head = await self.log_head()
        return None if head is None else max(head - seq, 0)

    async def checkpoint(self, conn: asyncpg.Connection, name: str) -> int:
        """A projection's checkpoint (Unavailable before its first build)."""
        value = await conn.fetchval("SELECT checkpoint FROM projection_status WHERE name = $1", name)
        if value is None:
            raise Unavailable(f"the {name} projection has not been built yet", field="projection")
        return int(value)

    async def wait_for(self, min_seq: int | None, name: str) -> None:
        """Wait (bounded) until projection `name` has applied `min_seq`."""
        if min_seq is None:
            return
        head = await self._head_reaching(min_seq)
        if head is not None and min_seq > head:
            raise Invalid(f"sequence {min_seq} is beyond the end of the log ({head})", field="min_seq")
        deadline = time.monotonic() + MIN_SEQ_WAIT
        while True:
            async with self.pool.acquire() as conn:
                if await self.checkpoint(conn, name) >= min_seq:
                    return
            if time.monotonic() > deadline:
                raise Unavailable(f"the {name} projection did not reach {min_seq} within "
                                  f"{MIN_SEQ_WAIT:.0f}s", field="min_seq")
            await asyncio.sleep(0.05)

    async def resolve(self, at: datetime | None, at_seq: int | None) -> int | None:
        """The log sequence a historical question is about (None: a live question)."""
        if at is not None and at_seq is not None:
            raise Invalid("give either at or at_seq, not both", field="at")
        head = await (self.log_head() if at_seq is None else self._head_reaching(at_seq))
        if at_seq is not None:
            if at_seq < 0:
                raise Invalid("at_seq cannot be negative", field="at_seq")
            if head is None:
                raise Unavailable("the event log is unreachable", field="at_seq")
            if at_seq > head:
                raise Invalid(f"at_seq {at_seq} is beyond the end of the log ({head})", field="at_seq")
            return at_seq
        if at is not None:
            if at > utcnow():
                raise Invalid(f"{format_time(at)} is in the future", field="at")
            return await self.pit.seq_at(at)
        return None

    async def _historical(self, seq: int) -> FleetState:
        if await self.log_head() is None:
            raise Unavailable("the event log is unreachable; historical answers replay it", field="at")
        return await self.pit.state_at(seq)

    # --- summary -----------------------------------------------------------------------------------

    async def summary(self, at_seq: int | None, at_text: str | None, *, site: str | None,
                      snapshot: str | None) -> Summary:
        """Counts by snapshot x site, totals by state."""
        if at_seq is None:
            # One statement is one snapshot: the checkpoint and the counters agree, in one round trip.
            async with self.pool.acquire() as conn:
                checkpoint, counters = await reads.counter_cells(conn, FLEET)
            seq = _checkpoint_of(checkpoint, FLEET)
            cells = [(site, snap, dict(zip(COUNTER_FIELDS, values, strict=True)))
                     for (site, snap), values in counters]
            historical = False
        else:
            key = ("summary", at_seq)
            cached = self.pit.answers.get(key)
            if cached is None:
                state = await self._historical(at_seq)
                cached = [(k[0], k[1], dict(zip(COUNTER_FIELDS, v, strict=True)))
                          for k, v in model.count_all(state).items() if v[0] > 0]
                self.pit.remember(key, cached)
            cells = cached  # type: ignore[assignment]  # the point-in-time cache holds `object`s
            seq, historical = at_seq, True
        cells = [c for c in cells if (site is None or c[0] == site) and (snapshot is None or c[1] == snapshot)]
        cells.sort(key=lambda c: (c[0], c[1]))
        by_site: dict[str, list[dict[str, int]]] = {}
        by_snap: dict[str, list[dict[str, int]]] = {}
        for site_id, snap_id, counts in cells:
            by_site.setdefault(site_id, []).append(counts)
            by_snap.setdefault(snap_id, []).append(counts)
        return Summary(
            as_of_seq=seq, lag=await self.lag(seq), historical=historical, at=at_text,
            totals=_sum(c[2] for c in cells),
            by_site=[SiteCounts(site_id=k, **msgspec.structs.asdict(_sum(v))) for k, v in sorted(by_site.items())],
            by_snapshot=[SnapshotCounts(snapshot_id=k, **msgspec.structs.asdict(_sum(v)))
                         for k, v in sorted(by_snap.items())],
            cells=[SummaryCell(site_id=s, snapshot_id=n, **c) for s, n, c in cells],
        )

    # --- devices -----------------------------------------------------------------------------------

    async def devices(self, flt: DeviceFilter, cursor: str | None, limit: int, at_seq: int | None, *,
                      at_text: str | None) -> DevicePage:
        """A page of devices ordered by id."""
        key = query_key("devices", {**flt.params(), "at_seq": at_seq})
        after = read_cursor(cursor, key)
        if after is not None and not isinstance(after, str):
            raise Invalid("not a device cursor", field="cursor")
        if at_seq is None:
            async with self.pool.acquire() as conn:
                checkpoint, rows = await reads.device_page(conn, FLEET, flt, after, limit + 1)
            seq = _checkpoint_of(checkpoint, FLEET)
            historical = False
        else:
            state = await self._historical(at_seq)
            ids = self.pit.answers.get(("device_ids", at_seq))
            if ids is None:
                ids = sorted(state.devices)
                self.pit.remember(("device_ids", at_seq), ids)
            rows = []
            start = 0 if after is None else _bisect_right(ids, after)  # type: ignore[arg-type]  # ids from the `object` cache
            matches = flt.predicate()
            for device_id in ids[start:]:  # type: ignore[index]  # ids from the `object` cache
                row = state.devices[device_id]
                if matches(row):
                    rows.append(row)
                    if len(rows) > limit:
                        break
            seq, historical = at_seq, True
        more = len(rows) > limit
        rows = rows[:limit]
        return DevicePage(as_of_seq=seq, lag=await self.lag(seq), historical=historical, at=at_text,
                          items=rows, next_cursor=make_cursor(key, rows[-1].device_id) if more else None)

    async def device(self, device_id: str, at_seq: int | None, at_text: str | None) -> DeviceAnswer:
        """One device."""
        if at_seq is None:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                       readonly=True):
                seq = await self.checkpoint(conn, FLEET)
                found = await DEVICES.load(conn, [device_id], "rm_fleet")
            row = found.get(device_id)
            historical = False
        else:
            row = (await self._historical(at_seq)).devices.get(device_id)
            seq, historical = at_seq, True
        if row is None:
            raise NotFound(f"no device {device_id!r}" + (f" as of sequence {seq}" if historical else ""),
                           field="device_id")
        return DeviceAnswer(as_of_seq=seq, lag=await self.lag(seq), historical=historical, at=at_text,
                            device=row)

    # --- changes -----------------------------------------------------------------------------------

    async def changes(self, flt: ChangeFilter, cursor: str | None, limit: int, at_seq: int | None, *,
                      at_text: str | None, endpoint: str = "changes") -> ChangePage:
        """A page of changes, newest first unless order=asc."""
        key = query_key(endpoint, {**msgspec.structs.asdict(flt), "at_seq": at_seq})
        after = read_cursor(cursor, key)
        if after is not None and not isinstance(after, int):
            raise Invalid("not a changes cursor", field="cursor")
        if flt.start is not None and flt.end is not None and flt.start > flt.end:
            raise Invalid("from is after to", field="from")
        params: list[Any] = []

        def p(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        conds = []
        for column, value in (("device_id", flt.device), ("site_id", flt.site),
                              ("snapshot_id", flt.snapshot), ("rollout_id", flt.rollout),
                              ("actor", flt.actor), ("type", flt.type)):
            if value is not None:
                conds.append(f"{column} = {p(value)}")
        if flt.start is not None:
            conds.append(f"at >= {p(flt.start)}")
        if flt.end is not None:
            conds.append(f"at <= {p(flt.end)}")
        if at_seq is not None:
            conds.append(f"seq <= {p(at_seq)}")
        desc = flt.order == "desc"
        if after is not None:
            conds.append(f"seq {'<' if desc else '>'} {p(after)}")
        where = " AND ".join(conds) or "TRUE"
        sql = (f"SELECT {', '.join(CHANGE_COLUMNS)} FROM rm_changes.changes WHERE {where} "
               f"ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT {p(limit + 1)}")
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            live = await self.checkpoint(conn, CHANGES)
            records = await conn.fetch(sql, *params)
        if at_seq is not None and at_seq > live:
            raise Unavailable(f"the changes projection has not reached sequence {at_seq} yet "
                              f"(at {live}); retry with min_seq", field="at_seq")
        rows = [ChangeRow(**{**dict(r), "at": format_time(r["at"])}) for r in records]
        more = len(rows) > limit
        rows = rows[:limit]
        seq = live if at_seq is None else at_seq
        return ChangePage(as_of_seq=seq, lag=await self.lag(seq), historical=at_seq is not None,
                          at=at_text, items=rows,
                          next_cursor=make_cursor(key, rows[-1].seq) if more else None)

    # --- rollouts, snapshots, sites ----------------------------------------------------------------

    def _page_after(self, endpoint: str, cursor: str | None, at_seq: int | None) -> tuple[str, str | None]:
        key = query_key(endpoint, {"at_seq": at_seq})
        after = read_cursor(cursor, key)
        if after is not None and not isinstance(after, str):
            raise Invalid(f"not a {endpoint} cursor", field="cursor")
        return key, after

    async def _moment(self, at_seq: int, at_text: str | None) -> str:
        """When a historical question is set: the time asked, or the time of the event at `at_seq`."""
        if at_text is not None:
            return format_time(parse_time(at_text, "at"))
        async with self.pool.acquire() as conn:
            when = await conn.fetchval(
                "SELECT at FROM rm_changes.changes WHERE seq <= $1 ORDER BY seq DESC LIMIT 1", at_seq)
        return format_time(when) if when is not None else format_time(utcnow())

    async def _with_progress(self, rows: list[RolloutRow], at_seq: int | None, at_text: str | None,
                             conn: asyncpg.Connection | None = None) -> list[RolloutItem]:
        """Rollout rows with their progress per wave as of the moment asked about."""
        if not rows:
            return []
        ids = [r.rollout_id for r in rows]
        overdue: dict[str, dict[int, int]] = {}
        if at_seq is None:
            now = format_time(utcnow())
            assert conn is not None
            progress = await load_progress(conn, ids, "rm_fleet.")
            overdue = await reads.overdue(conn, ids, now)
        else:
            state = await self._historical(at_seq)
            progress = state.progress
            moment = await self._moment(at_seq, at_text)
            overdue = model.overdue_in(state, ids, moment)
        items = []
        for row in rows:
            waves = model.wave_progress(row, progress.get(row.rollout_id, {}), overdue.get(row.rollout_id, {}))
            items.append(_numbered_from_one(RolloutItem(**msgspec.structs.asdict(row), progress=waves,
                                                        totals=model.progress_totals(waves))))
        return items

    async def rollouts(self, cursor: str | None, limit: int, at_seq: int | None,
                       at_text: str | None) -> RolloutPage:
        """A page of rollouts by id, each with its progress."""
        key, after = self._page_after("rollouts", cursor, at_seq)
        if at_seq is None:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                       readonly=True):
                seq = await self.checkpoint(conn, FLEET)
                rows = await reads.rollout_page(conn, after, limit + 1)
                more, rows = len(rows) > limit, rows[:limit]
                items = await self._with_progress(rows, None, None, conn)
        else:
            state = await self._historical(at_seq)
            rows = _page_of(state.rollouts, after, limit)
            more, rows = len(rows) > limit, rows[:limit]
            items = await self._with_progress(rows, at_seq, at_text)
            seq = at_seq
        return RolloutPage(as_of_seq=seq, lag=await self.lag(seq), historical=at_seq is not None, at=at_text,
                           items=items, next_cursor=make_cursor(key, rows[-1].rollout_id) if more else None)

    async def rollout(self, rollout_id: str, at_seq: int | None, at_text: str | None) -> RolloutAnswer:
        """One rollout, with its progress per wave."""
        row: RolloutRow | None
        if at_seq is None:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                       readonly=True):
                seq = await self.checkpoint(conn, FLEET)
                row = (await ROLLOUTS.load(conn, [rollout_id], "rm_fleet")).get(rollout_id)
                items = await self._with_progress([row] if row else [], None, None, conn)
        else:
            row = (await self._historical(at_seq)).rollouts.get(rollout_id)
            items = await self._with_progress([row] if row else [], at_seq, at_text)
            seq = at_seq
        if not items:
            raise NotFound(f"no rollout {rollout_id!r}", field="rollout_id")
        return RolloutAnswer(as_of_seq=seq, lag=await self.lag(seq), historical=at_seq is not None,
                             at=at_text, rollout=items[0])

    async def snapshots(self, cursor: str | None, limit: int, at_seq: int | None,
                        at_text: str | None) -> SnapshotPage:
        """A page of snapshots by id, with how many devices report each."""
        key, after = self._page_after("snapshots", cursor, at_seq)
        if at_seq is None:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                       readonly=True):
                seq = await self.checkpoint(conn, FLEET)
                records = await reads.snapshot_page(conn, after, limit + 1)
            items = [msgspec.convert(r, SnapshotItem) for r in records]
        else:
            state = await self._historical(at_seq)
            running: dict[str, int] = {}
            for (_, snap), values in model.count_all(state).items():
                running[snap] = running.get(snap, 0) + values[0]
            snaps: list[SnapshotRow] = _page_of(state.snapshots, after, limit)
            items = [SnapshotItem(**msgspec.structs.asdict(s), devices=running.get(s.snapshot_id, 0))
                     for s in snaps]
            seq = at_seq
        more, items = len(items) > limit, items[:limit]
        return SnapshotPage(as_of_seq=seq, lag=await self.lag(seq), historical=at_seq is not None,
                            at=at_text, items=items,
                            next_cursor=make_cursor(key, items[-1].snapshot_id) if more else None)

    async def sites(self, cursor: str | None, limit: int, at_seq: int | None, at_text: str | None, *,
                    order: str = "id", problems: bool | None = None) -> SitePage:
        """A page of sites with their health (device counts) and the snapshots running there; by
        id, or worst first (`order="worst"`, see `site_badness`); `problems=True`: only sites with
        a device offline, failed, degraded, drifted or stuck (False: only sites without)."""
        key = query_key("sites", {"at_seq": at_seq, "order": order, "problems": problems})
        after = read_cursor(cursor, key)
        by_id = order == "id"
        if after is not None and not isinstance(after, str if by_id else int):
            raise Invalid("not a sites cursor", field="cursor")
        if at_seq is None:
            # Every site and its counter cells (sites x snapshots: small), in one snapshot.
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                       readonly=True):
                seq = await self.checkpoint(conn, FLEET)
                site_rows, cells = await reads.sites_and_cells(conn)
        else:
            state = await self._historical(at_seq)
            site_rows = [state.sites[k] for k in sorted(state.sites)]
            cells = [(k, v) for k, v in model.count_all(state).items() if v[0] > 0]
            seq = at_seq
        counts: dict[str, dict[str, int]] = {}
        running: dict[str, list[SiteSnapshot]] = {}
        for (site_id, snap), values in cells:
            cell = counts.setdefault(site_id, dict.fromkeys(COUNTER_FIELDS, 0))
            for f, v in zip(COUNTER_FIELDS, values, strict=True):
                cell[f] += v
            running.setdefault(site_id, []).append(SiteSnapshot(snapshot_id=snap, devices=values[0]))
        items = [SiteItem(**msgspec.structs.asdict(s),
                          counts=Counts(**counts.get(s.site_id, dict.fromkeys(COUNTER_FIELDS, 0))),
                          snapshots=sorted(running.get(s.site_id, []), key=lambda r: (-r.devices, r.snapshot_id)))
                 for s in site_rows]
        if problems is not None:
            items = [i for i in items if (site_badness(i.counts) != (0.0, 0.0)) == problems]
        if by_id:
            items = [i for i in items if after is None or i.site_id > after]  # type: ignore[operator]  # not narrowed in a comprehension
            start = 0
        else:
            items.sort(key=lambda i: (*(-b for b in site_badness(i.counts)), i.site_id))
            start = int(after or 0)
        page = items[start:start + limit + 1]
        more, page = len(page) > limit, page[:limit]
        next_cursor = None
        if more:
            next_cursor = make_cursor(key, page[-1].site_id if by_id else start + limit)
        return SitePage(as_of_seq=seq, lag=await self.lag(seq), historical=at_seq is not None, at=at_text,
                        items=page, next_cursor=next_cursor)

    # --- projections -------------------------------------------------------------------------------

    async def projections(self) -> ProjectionsAnswer:
        """Every projection's state as the runner recorded it, with the events it skipped."""
        head = await self.log_head()
        async with self.pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('public.projection_status') IS NOT NULL")
            records = await conn.fetch("SELECT * FROM projection_status ORDER BY name") if exists else []
            poisoned = await conn.fetch(
                "SELECT p.*, count(*) OVER (PARTITION BY p.name) AS total, "
                "row_number() OVER (PARTITION BY p.name ORDER BY p.seq) AS n "
                "FROM projection_poison p JOIN projection_status s "
                "ON s.name = p.name AND s.generation = p.generation"
            ) if exists and await conn.fetchval("SELECT to_regclass('public.projection_poison') IS NOT NULL") else []
        poison: dict[str, list[PoisonedEvent]] = {}
        totals: dict[str, int] = {}
        for p in poisoned:
            totals[p["name"]] = p["total"]
            if p["n"] <= POISON_LISTED:
                poison.setdefault(p["name"], []).append(PoisonedEvent(
                    seq=p["seq"], type=p["type"], aggregate=p["aggregate"], aggregate_id=p["aggregate_id"],
                    error=p["error"], at=format_time(p["at"])))
        items = [
            ProjectionState(
                name=r["name"], version=r["version"], generation=r["generation"],
                checkpoint=r["checkpoint"], lag=None if head is None else max(head - r["checkpoint"], 0),
                applied=r["applied"], skipped_unknown=r["skipped_unknown"],
                rate=r["rate"] if (utcnow() - r["updated_at"]).total_seconds() < 10 else 0.0,
                state=r["state"], error_seq=r["error_seq"], error=r["error"],
                rebuilt_at=format_time(r["rebuilt_at"]) if r["rebuilt_at"] else None,
                updated_at=format_time(r["updated_at"]) if r["updated_at"] else None,
                poisoned=totals.get(r["name"], 0),
                poison=sorted(poison.get(r["name"], []), key=lambda e: e.seq),
            )
            for r in records
        ]
        return ProjectionsAnswer(log_last_seq=head, items=items)


def site_badness(counts: Counts) -> tuple[float, float]:
    """How bad a site looks, for worst-first order: the share of its devices offline or failed,
    then the share stuck, degraded or drifted ((0, 0): nothing wrong there)."""
    total = max(counts.total, 1)
    return ((counts.offline + counts.failed) / total,
            (counts.stuck + counts.degraded + counts.drifted) / total)


def _bisect_right(ids: list[str], after: str) -> int:
    import bisect

    return bisect.bisect_right(ids, after)


def _page_of(rows: dict[str, Any], after: str | None, limit: int) -> list[Any]:
    keys = sorted(k for k in rows if after is None or k > after)
    return [rows[k] for k in keys[: limit + 1]]
