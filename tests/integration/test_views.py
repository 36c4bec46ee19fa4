"""The operator's views over real read models (issues 14 and 12): site health worst first and
filtered to sites with problems, rollout progress per wave live and as of a past sequence, and the
fleet diff between two moments, checked against the fleet read model folded at both moments."""
# ruff: noqa: F811 - `api` is the fixture of test_api, taken as a parameter

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from projections.api.diff import DeviceEnd, moves
from projections.fleet import model
from projections.fleet.store import FleetProjection
from projections.runner import rebuild
from shared.envelope import seal
from shared.events import desired, observed, rollout
from shared.times import format_time
from tests.integration.test_api import Api, api  # noqa: F401 - the fixture


def _badness(counts: dict[str, int]) -> tuple[float, float]:
    total = max(counts["total"], 1)
    return ((counts["offline"] + counts["failed"]) / total,
            (counts["stuck"] + counts["degraded"] + counts["drifted"]) / total)


async def test_sites_worst_first_and_only_those_with_problems(api: Api) -> None:
    summary = await api.get("/v1/summary")
    by_site = {s["site_id"]: s for s in summary["by_site"]}
    worst = await api.get("/v1/sites", order="worst", limit=1000)
    items = worst["items"]
    assert len(items) == len(by_site)
    ranks = [_badness(s["counts"]) for s in items]
    assert ranks == sorted(ranks, reverse=True)
    assert ranks[0] > (0.0, 0.0), "the generated history leaves some site with trouble"
    for site in items:
        expected = {k: v for k, v in by_site[site["site_id"]].items() if k != "site_id"}
        assert site["counts"] == expected
        cells = {c["snapshot_id"]: c["total"] for c in summary["cells"] if c["site_id"] == site["site_id"]}
        assert {s["snapshot_id"]: s["devices"] for s in site["snapshots"]} == cells
    troubled = await api.get("/v1/sites", order="worst", problems="true", limit=1000)
    assert [s["site_id"] for s in troubled["items"]] == [s["site_id"] for s in items if _badness(s["counts"]) > (0, 0)]
    fine = await api.get("/v1/sites", problems="false", limit=1000)
    assert {s["site_id"] for s in fine["items"]} == {s["site_id"] for s in items if _badness(s["counts"]) == (0, 0)}
    # worst-first pages follow on from each other
    first = await api.get("/v1/sites", order="worst", limit=3)
    second = await api.get("/v1/sites", order="worst", limit=3, cursor=first["next_cursor"])
    assert [s["site_id"] for s in first["items"] + second["items"]] == [s["site_id"] for s in items[:6]]
    past = await api.get("/v1/sites", order="worst", limit=1000, at_seq=summary["as_of_seq"])
    assert [s["site_id"] for s in past["items"]] == [s["site_id"] for s in items]
    await api.get("/v1/sites", 400, order="best")


async def test_rollout_progress_live_and_in_the_past(api: Api) -> None:
    devices = [f"dev-{i:07d}" for i in range(4)]
    now = datetime.now(UTC)
    at = format_time(now)
    start = [rollout.RolloutStarted(rollout_id="r-p", snapshot_id="snap-9", target="", wave_sizes=[1, 3],
                                    apply_timeout_seconds=600)]
    last = (await api.log.append("fleet.evt.rollout.r-p", [seal(e, actor="service:rollout", at=now) for e in start],
                                 0))[-1].seq
    rollout_seq = last

    async def assign(wave: int, ids: list[str]) -> int:
        nonlocal rollout_seq
        writes = [(f"fleet.evt.desired.{d}", seal(desired.DesiredStateAssigned(
            device_id=d, site_id="", snapshot_id="snap-9", config_hash=f"h9-{d}", revision=9, rollout_id="r-p"),
            actor="service:rollout", at=now)) for d in ids]
        for subject, env in writes:
            await api.log.append(subject, [env], None)
        done = await api.log.append("fleet.evt.rollout.r-p", [seal(rollout.RolloutDevicesAssigned(
            rollout_id="r-p", wave=wave, at=at, devices=ids), actor="service:rollout", at=now)], rollout_seq)
        rollout_seq = done[-1].seq
        return rollout_seq

    async def report(device: str, config_hash: str, health: str = "ok") -> int:
        done = await api.log.append(f"fleet.evt.observed.{device}", [seal(observed.DeviceCameOnline(
            device_id=device, site_id="", snapshot_id="snap-9", config_hash=config_hash, health=health),
            actor="service:drift", at=now)], None)
        return done[-1].seq

    await assign(0, devices[:1])
    canary_done = await report(devices[0], f"h9-{devices[0]}")
    await assign(1, devices[1:])
    await report(devices[1], f"h9-{devices[1]}", "failed")
    last = await report(devices[2], f"h9-{devices[2]}")
    answer = (await api.get("/v1/rollouts/r-p", min_seq=last))["rollout"]
    waves = [{k: w[k] for k in ("wave", "size", "assigned", "pending", "in_flight", "converged", "failed",
                                "timed_out", "restored")} for w in answer["progress"]]
    assert waves == [
        {"wave": 1, "size": 1, "assigned": 1, "pending": 0, "in_flight": 0, "converged": 1, "failed": 0,
         "timed_out": 0, "restored": 0},
        {"wave": 2, "size": 3, "assigned": 3, "pending": 0, "in_flight": 1, "converged": 1, "failed": 1,
         "timed_out": 0, "restored": 0},
    ]
    assert answer["totals"]["converged"] == 2 and answer["totals"]["assigned"] == 4
    listed = {r["rollout_id"]: r for r in (await api.get("/v1/rollouts"))["items"]}
    assert listed["r-p"]["progress"] == answer["progress"]
    then = (await api.get("/v1/rollouts/r-p", at_seq=canary_done))["rollout"]
    assert [(w["assigned"], w["converged"], w["pending"]) for w in then["progress"]] == [(1, 1, 0), (0, 0, 3)]
    # a rebuild from the log (folded in memory, written in bulk) gives the live runner's counters
    async with api.pool.acquire() as conn:
        live = [dict(r) for r in await conn.fetch("SELECT * FROM rm_fleet.rollout_progress ORDER BY rollout_id, wave")]
    await rebuild(api.pool, api.log, FleetProjection())
    async with api.pool.acquire() as conn:
        rebuilt = [dict(r) for r in await conn.fetch("SELECT * FROM rm_fleet.rollout_progress ORDER BY rollout_id, wave")]
    assert rebuilt == live and any(r["rollout_id"] == "r-p" for r in live)
    assert (await api.get("/v1/rollouts/r-p"))["rollout"]["progress"] == answer["progress"]


def _end(row: model.DeviceRow | None) -> DeviceEnd:
    if row is None or not row.registered:
        return DeviceEnd(site_id=None, snapshot_id=None, online=False, health="unknown", drifted=False,
                         registered=False)
    return DeviceEnd(site_id=row.site_id, snapshot_id=row.reported_snapshot_id, online=row.online,
                     health=row.health, drifted=row.drifted_since is not None, registered=not row.retired)


async def _fleet_at(api: Api, seq: int) -> model.FleetState:
    state = model.FleetState()
    async for record in api.log.replay(1, seq):
        event = record.event
        if event is not None:
            model.apply(state, record.seq, record.envelope, event)
    return state


async def test_diff_equals_the_fleet_read_model_at_both_moments(api: Api) -> None:
    head = await api.log.last_stream_seq()
    for from_seq, to_seq in ((head // 3, 2 * head // 3), (0, head), (head // 2, head)):
        before, after = await _fleet_at(api, from_seq), await _fleet_at(api, to_seq)
        expected: Counter[tuple[str, str, str, str, str]] = Counter()
        changed = set()
        for device_id in set(before.devices) | set(after.devices):
            b, a = _end(before.devices.get(device_id)), _end(after.devices.get(device_id))
            for change, old, new in moves(b, a):
                expected[(change, a.site_id or b.site_id or "", a.snapshot_id or "", old, new)] += 1
                changed.add(device_id)
        answer = await api.get("/v1/diff", **{"from": str(from_seq), "to": str(to_seq)})
        got = Counter({(g["change"], g["site_id"], g["snapshot_id"], g["before"], g["after"]): g["devices"]
                       for g in answer["groups"]})
        assert got == expected, (from_seq, to_seq)
        assert answer["devices_changed"] == len(changed)
        assert (answer["from_seq"], answer["to_seq"]) == (from_seq, to_seq)
    # the devices behind one number, page by page
    group = max(answer["groups"], key=lambda g: g["devices"])
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"from": str(from_seq), "to": str(to_seq), "group": group["key"], "limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = await api.get("/v1/diff/devices", **params)
        ids += [d["device_id"] for d in page["items"]]
        for d in page["items"]:
            assert (d["before"] != d["after"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(ids) == group["devices"] == len(set(ids))
    assert ids[: len(group["sample"])] == group["sample"]


async def test_diff_by_time_filters_and_refusals(api: Api) -> None:
    head = await api.log.last_stream_seq()
    first, last = (await api.get("/v1/changes", order="asc", limit=1))["items"][0], (
        await api.get("/v1/changes", order="desc", limit=1))["items"][0]
    by_time = await api.get("/v1/diff", **{"from": first["at"], "to": last["at"]})
    by_seq = await api.get("/v1/diff", **{"from": str(by_time["from_seq"]), "to": str(by_time["to_seq"])})
    assert by_time["groups"] == by_seq["groups"] and by_time["to_seq"] == head
    site = by_seq["groups"][0]["site_id"]
    only = await api.get("/v1/diff", **{"from": "0", "to": str(head), "site": site})
    assert only["groups"] and {g["site_id"] for g in only["groups"]} == {site}
    edge = await api.get("/v1/diff", **{"from": "0", "to": str(head), "selector": "tier=edge"})
    whole = await api.get("/v1/diff", **{"from": "0", "to": str(head)})
    assert 0 < edge["devices_changed"] < whole["devices_changed"]
    assert (await api.get("/v1/diff", 400, **{"from": str(head), "to": "1"}))["error"]["field"] == "from"
    assert (await api.get("/v1/diff", 400, to="1"))["error"]["field"] == "from"
    assert (await api.get("/v1/diff", 400, **{"from": "2999-01-01T00:00:00Z"}))["error"]["field"] == "from"
    assert (await api.get("/v1/diff", 400, **{"from": "1", "to": str(head + 100)}))["error"]["field"] == "to"
    await api.get("/v1/diff/devices", 404, **{"from": "0", "group": "no|such|group"})
    fresh = await api.get("/v1/diff", **{"from": str(head)})
    assert fresh["groups"] == [] and fresh["devices_changed"] == 0
    _ = timedelta
