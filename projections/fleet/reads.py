"""The fleet read model's queries (live answers), next to the projection that owns its tables: a
page of devices by a `DeviceFilter`, the counter cells, rollouts, sites and snapshots, and the
in-flight devices past their deadline. Each runs on a connection the caller holds (in its
read-only repeatable-read transaction), so the rows and the checkpoint read with them agree.
The query API (`projections.api.queries`) shapes the answers."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from projections.fleet.filters import DeviceFilter, rank_sql
from projections.fleet.model import COUNTER_FIELDS, DeviceRow, RolloutRow, SiteRow
from projections.fleet.store import DEVICES, ROLLOUTS, SITES, SNAPSHOTS

CHECKPOINT = "SELECT checkpoint FROM projection_status WHERE name = $1"
_DEVICE_ROW = msgspec.json.Decoder(DeviceRow)
Cells = list[tuple[tuple[str, str], list[int]]]  # ((site, reported snapshot), COUNTER_FIELDS values)


async def device_page(conn: asyncpg.Connection, projection: str, flt: DeviceFilter,
                      after: str | tuple[int, str] | None, limit: int, *,
                      worst: bool = False) -> tuple[int | None, list[DeviceRow]]:
    """The projection's checkpoint and up to `limit` devices matching `flt` after `after`, by id
    (`worst`: by `filters.problem_rank`, then id; `after` is then a (rank, id) pair), in one
    statement (one snapshot)."""
    params: list[Any] = []
    conds = flt.sql(params)
    order = f"{rank_sql()}, device_id" if worst else "device_id"
    if isinstance(after, tuple):
        params += after
        conds.append(f"({order}) > (${len(params) - 1}, ${len(params)})")
    elif after is not None:
        params.append(after)
        conds.append(f"device_id > ${len(params)}")
    params.append(limit)
    where = " AND ".join(conds) or "TRUE"
    params.append(projection)
    # Rows come back as JSON text and are decoded by msgspec straight into DeviceRow: several
    # times cheaper than building each struct from a record's columns. The outer ORDER BY reads
    # the page's columns (the rank is inlined SQL over them).
    sql = (f"SELECT ({CHECKPOINT.replace('$1', f'${len(params)}')}) AS _checkpoint, "
           "CASE WHEN page.device_id IS NULL THEN NULL ELSE row_to_json(page)::text END AS row "
           f"FROM (SELECT 1) AS one LEFT JOIN (SELECT {', '.join(DEVICES.columns)} FROM rm_fleet.devices "
           f"WHERE {where} ORDER BY {order} LIMIT ${len(params) - 1}) AS page ON true "
           f"ORDER BY {order.replace('device_id', 'page.device_id')}")
    records = await conn.fetch(sql, *params)
    checkpoint = records[0]["_checkpoint"] if records else None
    return (None if checkpoint is None else int(checkpoint),
            [_DEVICE_ROW.decode(r["row"]) for r in records if r["row"] is not None])


async def counter_cells(conn: asyncpg.Connection, projection: str) -> tuple[int | None, Cells]:
    """The checkpoint and every non-empty counter cell, in one statement."""
    records = await conn.fetch(
        f"SELECT ({CHECKPOINT}) AS _checkpoint, c.* FROM (SELECT 1) AS one "
        "LEFT JOIN rm_fleet.device_counts c ON c.total > 0", projection)
    checkpoint = records[0]["_checkpoint"] if records else None
    cells = [((r["site_id"], r["snapshot_id"]), [int(r[f]) for f in COUNTER_FIELDS])
             for r in records if r["site_id"] is not None]
    return None if checkpoint is None else int(checkpoint), cells


async def overdue(conn: asyncpg.Connection, rollout_ids: list[str], now: str) -> dict[str, dict[int, int]]:
    """Per rollout and wave, the devices in flight whose deadline is at or before `now`."""
    out: dict[str, dict[int, int]] = {}
    for r in await conn.fetch(
            "SELECT rollout_id, rollout_wave, count(*) AS n FROM rm_fleet.devices "
            "WHERE rollout_id = ANY($1::text[]) AND rollout_status = 'in_flight' "
            "AND rollout_deadline <= $2 GROUP BY rollout_id, rollout_wave", rollout_ids, now):
        out.setdefault(r["rollout_id"], {})[r["rollout_wave"]] = int(r["n"])
    return out


async def rollout_page(conn: asyncpg.Connection, after: str | None, limit: int) -> list[RolloutRow]:
    """Up to `limit` rollouts after `after`, by id."""
    params: list[Any] = [limit] + ([after] if after is not None else [])
    records = await conn.fetch(
        f"SELECT {', '.join(ROLLOUTS.columns)} FROM rm_fleet.rollouts "
        f"WHERE {'rollout_id > $2' if after is not None else 'TRUE'} ORDER BY rollout_id LIMIT $1", *params)
    return [ROLLOUTS.from_record(r) for r in records]


async def sites_and_cells(conn: asyncpg.Connection) -> tuple[list[SiteRow], Cells]:
    """Every site by id and every non-empty counter cell (sites x snapshots: few)."""
    sites = [SITES.from_record(r) for r in await conn.fetch(
        f"SELECT {', '.join(SITES.columns)} FROM rm_fleet.sites ORDER BY site_id")]
    cells = [((r["site_id"], r["snapshot_id"]), [int(r[f]) for f in COUNTER_FIELDS]) for r in
             await conn.fetch("SELECT * FROM rm_fleet.device_counts WHERE total > 0")]
    return sites, cells


async def snapshot_page(conn: asyncpg.Connection, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` snapshots after `after`, by id, each with `devices`: how many report it."""
    params: list[Any] = [limit] + ([after] if after is not None else [])
    records = await conn.fetch(
        f"SELECT {', '.join(SNAPSHOTS.columns)}, (SELECT coalesce(sum(total), 0) FROM rm_fleet.device_counts c "
        "WHERE c.snapshot_id = snapshots.snapshot_id)::bigint AS devices FROM rm_fleet.snapshots "
        f"WHERE {'snapshot_id > $2' if after is not None else 'TRUE'} ORDER BY snapshot_id LIMIT $1", *params)
    return [dict(r) for r in records]


FINISHED = ("completed", "aborted", "rolled_back")  # rollouts that no longer move


async def rollout_gauges(conn: asyncpg.Connection) -> tuple[dict[str, int], list[asyncpg.Record]]:
    """Rollouts by status, and each unfinished rollout's id, snapshot, status, wave and last gate
    verdict (for /metrics: a pass over the rollouts, never over the devices)."""
    statuses = {r["status"]: int(r["n"]) for r in await conn.fetch(
        "SELECT status, count(*) AS n FROM rm_fleet.rollouts GROUP BY status")}
    active = await conn.fetch(
        "SELECT rollout_id, snapshot_id, status, wave, (last_gate->>'passed')::boolean AS passed "
        "FROM rm_fleet.rollouts WHERE status <> ALL($1::text[]) ORDER BY rollout_id", list(FINISHED))
    return statuses, active
