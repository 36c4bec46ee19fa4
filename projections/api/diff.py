"""The fleet diff between two moments (`GET /v1/diff`, `fleet diff`): per site and snapshot, how
many devices moved from what to what (snapshot, online, health, drift, registered), and the devices
behind each number.

Its cost follows the window, not the fleet: every change about a device carries the device as it
stood after it (`rm_changes.changes.dev_*`), so the devices that changed between T1 and T2 are
those named by a change in (T1, T2]; a device's state at T2 is its last change in the window and
its state at T1 its last change at or before T1 (one step down the (device_id, seq) index each).
A device whose state at T2 equals its state at T1 (it changed and changed back) has not changed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from projections.selector import to_sql
from shared.errors import Invalid, Unavailable
from shared.selectors import EVERYTHING, Selector

CHANGES = ("snapshot", "online", "health", "drift", "registered")
SAMPLE = 10  # device ids given with each group; the rest come page by page


class DeviceEnd(msgspec.Struct, frozen=True, kw_only=True):
    """A device at one end of the window (what the diff compares)."""

    site_id: str | None
    snapshot_id: str | None
    online: bool
    health: str
    drifted: bool
    registered: bool


ABSENT = DeviceEnd(site_id=None, snapshot_id=None, online=False, health="unknown", drifted=False, registered=False)


class DiffGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Devices of one site (and snapshot, as run at T2) that made one move between T1 and T2."""

    key: str  # names the group in GET /v1/diff/devices
    site_id: str
    snapshot_id: str  # what the devices run at T2 ("" = nothing reported)
    change: str  # snapshot | online | health | drift | registered
    before: str
    after: str
    devices: int
    sample: list[str]


class DiffAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What changed between two moments, fleet-wide."""

    from_seq: int
    to_seq: int
    as_of_seq: int
    lag: int | None
    changes: int  # changes about devices in the window
    devices_changed: int  # devices whose state at T2 differs from T1
    totals: dict[str, int]  # devices per kind of change
    groups: list[DiffGroup]


class DiffDevice(msgspec.Struct, frozen=True, kw_only=True):
    """One device of a diff group, at both ends."""

    device_id: str
    before: DeviceEnd
    after: DeviceEnd


class DiffDevicePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the devices behind one group of a diff, by id."""

    from_seq: int
    to_seq: int
    as_of_seq: int
    group: DiffGroup
    items: list[DiffDevice]
    next_cursor: str | None


class Computed(msgspec.Struct, frozen=True, kw_only=True):
    """A diff with every group's devices (sorted), kept for paging."""

    changes: int
    devices: dict[str, tuple[DeviceEnd, DeviceEnd]]
    members: dict[str, list[str]]
    groups: list[DiffGroup]
    totals: dict[str, int]


_COLUMNS = ("site_id", "dev_snapshot", "dev_online", "dev_health", "dev_drifted", "dev_present")


def diff_sql(from_seq: int, to_seq: int, site: str | None, selector: Selector) -> tuple[str, list[Any]]:
    """The query: every device changed in (from_seq, to_seq] with its state at both ends."""
    params: list[Any] = [from_seq, to_seq]
    cols = ", ".join(_COLUMNS)
    outer = []
    if site is not None:
        params.append(site)
        outer.append(f"(w.site_id = ${len(params)} OR b.site_id = ${len(params)})")
    conds = to_sql(selector, params)
    if conds:
        outer.append(f"w.device_id IN (SELECT device_id FROM rm_fleet.devices WHERE {' AND '.join(conds)})")
    sql = (
        "WITH w AS (SELECT DISTINCT ON (device_id) device_id, " + cols + ", count(*) OVER () AS n "
        "FROM rm_changes.changes WHERE seq > $1 AND seq <= $2 AND device_id IS NOT NULL "
        "AND dev_present IS NOT NULL ORDER BY device_id, seq DESC) "
        "SELECT w.device_id, w.n, " + ", ".join(f"w.{c} AS a_{c}, b.{c} AS b_{c}" for c in _COLUMNS) + " "
        "FROM w LEFT JOIN LATERAL (SELECT " + cols + " FROM rm_changes.changes c "
        "WHERE c.device_id = w.device_id AND c.seq <= $1 AND c.dev_present IS NOT NULL "
        "ORDER BY c.seq DESC LIMIT 1) b ON true"
        + (" WHERE " + " AND ".join(outer) if outer else "")
    )
    return sql, params


def _end(record: Any, prefix: str) -> DeviceEnd:
    if record[f"{prefix}dev_present"] is None:
        return ABSENT
    return DeviceEnd(site_id=record[f"{prefix}site_id"], snapshot_id=record[f"{prefix}dev_snapshot"],
                     online=record[f"{prefix}dev_online"], health=record[f"{prefix}dev_health"],
                     drifted=record[f"{prefix}dev_drifted"], registered=record[f"{prefix}dev_present"])


def moves(before: DeviceEnd, after: DeviceEnd) -> list[tuple[str, str, str]]:
    """(change, from, to) for each way a device differs between the two ends."""
    out = []
    if before.registered != after.registered:
        out.append(("registered", _yes(before.registered, "registered", "not registered"),
                    _yes(after.registered, "registered", "not registered")))
    if before.snapshot_id != after.snapshot_id:
        out.append(("snapshot", before.snapshot_id or "none", after.snapshot_id or "none"))
    if before.online != after.online:
        out.append(("online", _yes(before.online, "online", "offline"), _yes(after.online, "online", "offline")))
    if before.health != after.health:
        out.append(("health", before.health, after.health))
    if before.drifted != after.drifted:
        out.append(("drift", _yes(before.drifted, "drifted", "in sync"), _yes(after.drifted, "drifted", "in sync")))
    return out


def _yes(flag: bool, yes: str, no: str) -> str:
    return yes if flag else no


def group_key(site: str, snapshot: str, change: str, before: str, after: str) -> str:
    """The name of a group (stable, so a client can page through its devices)."""
    return "|".join((change, site, snapshot, before, after))


def compute(records: list[Any]) -> Computed:
    """Group the devices of a diff query's rows."""
    devices: dict[str, tuple[DeviceEnd, DeviceEnd]] = {}
    members: dict[tuple[str, str, str, str, str], list[str]] = {}
    changes = int(records[0]["n"]) if records else 0
    for record in records:
        before, after = _end(record, "b_"), _end(record, "a_")
        found = moves(before, after)
        if not found:
            continue
        device_id = record["device_id"]
        devices[device_id] = (before, after)
        site = after.site_id or before.site_id or ""
        for change, old, new in found:
            members.setdefault((change, site, after.snapshot_id or "", old, new), []).append(device_id)
    groups = []
    named: dict[str, list[str]] = {}
    totals = dict.fromkeys(CHANGES, 0)
    order = {c: i for i, c in enumerate(CHANGES)}
    for (change, site, snap, old, new), ids in sorted(members.items(),
                                                       key=lambda kv: (order[kv[0][0]], kv[0][1:])):
        ids.sort()
        key = group_key(site, snap, change, old, new)
        named[key] = ids
        totals[change] += len(ids)
        groups.append(DiffGroup(key=key, site_id=site, snapshot_id=snap, change=change, before=old, after=new,
                                devices=len(ids), sample=ids[:SAMPLE]))
    return Computed(changes=changes, devices=devices, members=named, groups=groups, totals=totals)


class DiffCache:
    """The last few computed diffs, so paging through a group does not compute it again."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[object, ...], Computed] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> Computed | None:
        """A diff computed before."""
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[object, ...], value: Computed) -> None:
        """Keep a computed diff."""
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)


async def fleet_diff(pool: Any, cache: DiffCache, from_seq: int, to_seq: int, *, site: str | None = None,
                     selector: Selector = EVERYTHING, selector_text: str | None = None) -> Computed:
    """The diff between two log sequences (the changes projection must have reached `to_seq`)."""
    if from_seq > to_seq:
        raise Invalid(f"from (sequence {from_seq}) is after to (sequence {to_seq})", field="from")
    key = (from_seq, to_seq, site, selector_text)
    found = cache.get(key)
    if found is not None:
        return found
    sql, params = diff_sql(from_seq, to_seq, site, selector)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        reached = await conn.fetchval("SELECT checkpoint FROM projection_status WHERE name = 'changes'")
        if reached is None or reached < to_seq:
            raise Unavailable(f"the changes projection has not reached sequence {to_seq} yet (at {reached}); "
                              "retry with min_seq", field="to")
        records = await conn.fetch(sql, *params)
    computed = compute(records)
    cache.put(key, computed)
    return computed
