"""The query API over real read models: every endpoint's contract, every 400, 404 and 503,
cursor pagination, read-your-writes, and point-in-time answers equal to the live answers recorded
at that moment."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from projections.api.app import create_app
from projections.api.queries import ReadModels
from projections.main import all_projections
from projections.pointintime import snapshot_hook
from projections.runner import Runner, create_pool
from shared.envelope import seal
from shared.eventlog import EventLog
from shared.events import observed
from shared.times import format_time
from tests import exposition
from tests.integration.test_projections import append_history, wait_caught_up

FRESHNESS = ("lag", "historical", "at")
BASE = "http://127.0.0.1:8080"  # a Host the app answers to by default


class Api:
    def __init__(self, client: httpx.AsyncClient, pool: asyncpg.Pool, log: EventLog) -> None:
        self.client = client
        self.pool = pool
        self.log = log

    async def get(self, path: str, status: int = 200, /, **params: Any) -> Any:
        response = await self.client.get(path, params=params)
        assert response.status_code == status, (path, params, response.status_code, response.text)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response.text


@pytest.fixture
async def api(eventlog: EventLog, database_url: str, issue_token: Callable[[str], Awaitable[str]]) -> AsyncIterator[Api]:
    import asyncio

    pool = await create_pool(database_url, min_size=1, max_size=8)
    start = datetime.now(UTC) - timedelta(hours=2)
    await append_history(eventlog, 60, rounds=2, start=start, span=timedelta(hours=1))
    runners = [Runner(pool, eventlog, p, batch_size=40, retry_wait=0.1,
                      after_batch=snapshot_hook(50) if p.name == "fleet" else None) for p in all_projections()]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_caught_up(pool, eventlog)
    app = create_app(ReadModels(pool, eventlog))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE,  # type: ignore[arg-type]  # Litestar's ASGI types differ from httpx's
                                     headers={"Authorization": f"Bearer {await issue_token('viewer')}"}) as client:
            yield Api(client, pool, eventlog)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()


def _strip(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without its freshness; a cursor only as "there is more" (it names its query)."""
    out = {k: v for k, v in answer.items() if k not in FRESHNESS}
    if "next_cursor" in out:
        out["next_cursor"] = out["next_cursor"] is not None
    return out


async def test_every_endpoint_answers_with_freshness(api: Api) -> None:
    head = await api.log.last_stream_seq()
    summary = await api.get("/v1/summary")
    assert summary["as_of_seq"] == head and summary["lag"] == 0 and summary["historical"] is False
    assert summary["totals"]["total"] == 60
    assert sum(c["total"] for c in summary["cells"]) == 60
    assert sum(s["total"] for s in summary["by_site"]) == 60 == sum(s["total"] for s in summary["by_snapshot"])
    site = summary["by_site"][0]["site_id"]
    only = await api.get("/v1/summary", site=site)
    assert {c["site_id"] for c in only["cells"]} == {site}

    page = await api.get("/v1/devices", limit=1000)
    assert len(page["items"]) == 60 and page["next_cursor"] is None
    device = page["items"][0]
    assert set(device) >= {"device_id", "site_id", "labels", "desired_snapshot_id", "reported_snapshot_id",
                           "health", "online", "last_seen", "drifted_since", "rollout_id"}
    one = await api.get(f"/v1/devices/{device['device_id']}")
    assert one["device"] == device
    history = await api.get(f"/v1/devices/{device['device_id']}/history")
    assert history["items"] and all(c["device_id"] == device["device_id"] for c in history["items"])
    assert [c["seq"] for c in history["items"]] == sorted((c["seq"] for c in history["items"]), reverse=True)
    changes = await api.get("/v1/changes", limit=5, order="asc")
    assert [c["seq"] for c in changes["items"]] == [1, 2, 3, 4, 5]
    assert all(c["summary"] and c["actor"] and c["type"] for c in changes["items"])
    sites = await api.get("/v1/sites")
    assert sum(s["counts"]["total"] for s in sites["items"]) == 60
    snapshots = await api.get("/v1/snapshots")
    assert sum(s["devices"] for s in snapshots["items"]) == sum(c["total"] for c in summary["cells"] if c["snapshot_id"])
    rollouts = await api.get("/v1/rollouts")
    assert rollouts["items"] == [] and rollouts["as_of_seq"] == head
    assert (await api.get("/healthz"))["ok"] is True
    assert (await api.get("/readyz"))["ok"] is True
    metrics = exposition.families(await api.get("/metrics"))
    assert exposition.value(metrics["fleet_projection_checkpoint"], projection="fleet") == head
    assert exposition.value(metrics["fleet_projection_lag_events"], projection="changes") == 0
    assert exposition.value(metrics["fleet_projection_poisoned_events"], projection="fleet") == 0
    # The fleet gauges are the summary's numbers, site by site and state by state.
    summary = await api.get("/v1/summary")
    assert summary["by_site"]
    for site in summary["by_site"]:
        for state in ("total", "online", "offline", "degraded", "failed", "drifted", "stuck"):
            assert exposition.value(metrics["fleet_devices"], site=site["site_id"], state=state) == site[state]
    for snap in summary["by_snapshot"]:
        assert exposition.value(metrics["fleet_devices_by_snapshot"], snapshot=snap["snapshot_id"]) == snap["total"]
    assert exposition.value(metrics["fleet_log_last_seq"]) == head
    assert metrics["fleet_log_bytes"].samples[0].value > 0
    # The routes answered above were timed, by route template (not by path: ids are no label).
    assert exposition.histogram_count(metrics["fleet_query_seconds"], route="/v1/summary", status="200") >= 1
    projections = await api.get("/v1/projections")
    assert {p["name"] for p in projections["items"]} == {"fleet", "changes"}
    spec = await api.get("/openapi.json")
    assert spec["openapi"].startswith("3.")
    assert {"/v1/summary", "/v1/devices", "/v1/devices/{device_id}", "/v1/devices/{device_id}/history",
            "/v1/changes", "/v1/rollouts", "/v1/rollouts/{rollout_id}", "/v1/snapshots", "/v1/sites",
            "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "Fleetplane" in await api.get("/")


async def test_device_filters_and_selector(api: Api) -> None:
    every = (await api.get("/v1/devices", limit=1000))["items"]
    cases: list[tuple[dict[str, Any], Callable[[Any], object]]] = [
        ({"online": "true"}, lambda d: d["online"]),
        ({"online": "false"}, lambda d: not d["online"]),
        ({"health": "failed"}, lambda d: d["health"] == "failed"),
        ({"drifted": "true"}, lambda d: d["drifted_since"] is not None),
        ({"site": "site-003"}, lambda d: d["site_id"] == "site-003"),
        ({"snapshot": "snap-1"}, lambda d: d["reported_snapshot_id"] == "snap-1"),
        ({"selector": "tier=edge"}, lambda d: d["labels"].get("tier") == "edge"),
        ({"selector": "tier!=edge,hw in (v1,v9)"}, lambda d: d["labels"].get("tier") != "edge" and d["labels"].get("hw") in ("v1", "v9")),
        ({"selector": "site in (site-001,site-002),!gpu"}, lambda d: d["site_id"] in ("site-001", "site-002")),
        ({"selector": "hw notin (v1)"}, lambda d: d["labels"].get("hw") != "v1"),
        ({"problems": "true"}, lambda d: not d["online"] or d["health"] != "ok" or d["drifted_since"] or d["stuck"]),
    ]
    for params, expected in cases:
        got = (await api.get("/v1/devices", limit=1000, **params))["items"]
        assert [d["device_id"] for d in got] == [d["device_id"] for d in every if expected(d)], params
        # The same filter answered from a replay of the log agrees.
        seq = (await api.get("/v1/summary"))["as_of_seq"]
        past = (await api.get("/v1/devices", limit=1000, at_seq=seq, **params))["items"]
        assert past == got, params


async def test_cursor_pagination_walks_every_device_once(api: Api) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, "selector": "tier=edge"} | ({"cursor": cursor} if cursor else {})
        page = await api.get("/v1/devices", **params)
        seen += [d["device_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    every = (await api.get("/v1/devices", limit=1000, selector="tier=edge"))["items"]
    assert seen == [d["device_id"] for d in every]
    first = await api.get("/v1/changes", limit=3)
    second = await api.get("/v1/changes", limit=3, cursor=first["next_cursor"])
    assert [c["seq"] for c in first["items"] + second["items"]] == [c["seq"] for c in (await api.get("/v1/changes", limit=6))["items"]]


BAD_INPUT = [
    ("/v1/devices", {"online": "maybe"}, "online"),
    ("/v1/devices", {"health": "sick"}, "health"),
    ("/v1/devices", {"limit": "0"}, "limit"),
    ("/v1/devices", {"limit": "5000"}, "limit"),
    ("/v1/devices", {"selector": "tier in (a"}, "selector"),
    ("/v1/devices", {"selector": "Tier=x"}, "selector"),
    ("/v1/devices", {"site": "bad site!"}, "site"),
    ("/v1/devices", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/devices", {"at": "yesterday"}, "at"),
    ("/v1/devices", {"at": "2026-01-01T00:00:00"}, "at"),
    ("/v1/summary", {"at": "2999-01-01T00:00:00Z"}, "at"),
    ("/v1/summary", {"at": "2026-01-01T00:00:00Z", "at_seq": "3"}, "at"),
    ("/v1/summary", {"at_seq": "999999"}, "at_seq"),
    ("/v1/summary", {"at_seq": "-1"}, "at_seq"),
    ("/v1/summary", {"min_seq": "999999"}, "min_seq"),
    ("/v1/sites", {"cursor": "eyJ4Ijox"}, "cursor"),
    ("/v1/changes", {"since": "forever"}, "since"),
    ("/v1/changes", {"since": "99999999999999h"}, "since"),    # once an OverflowError (500)
    ("/v1/devices", {"selector": "tier=\x00"}, "selector"),   # once a PostgreSQL error (500)
    ("/v1/changes", {"actor": "\x00"}, "actor"),
    ("/v1/changes", {"site": "a\x1bb"}, "site"),
    ("/v1/changes", {"from": "noon"}, "from"),
    ("/v1/changes", {"to": "2026-13-01T00:00:00Z"}, "to"),
    ("/v1/changes", {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ("/v1/changes", {"since": "1h", "from": "2026-01-01T00:00:00Z"}, "since"),
    ("/v1/changes", {"device": "a b"}, "device"),
    ("/v1/changes", {"order": "sideways"}, "order"),
    ("/v1/rollouts", {"at": "2999-01-01T00:00:00Z"}, "at"),
    ("/v1/snapshots", {"at_seq": "999999"}, "at_seq"),
    ("/v1/devices/dev-0000001/history", {"at_seq": "999999"}, "at_seq"),
]


async def test_bad_input_is_a_400_naming_the_parameter(api: Api) -> None:
    for path, params, field in BAD_INPUT:
        body = await api.get(path, 400, **params)
        assert body["error"]["code"] == "invalid", (path, params, body)
        assert body["error"]["field"] == field, (path, params, body)


async def test_cursor_from_another_query_is_refused(api: Api) -> None:
    page = await api.get("/v1/devices", limit=2, site="site-001")
    assert page["next_cursor"]
    body = await api.get("/v1/devices", 400, limit=2, site="site-002", cursor=page["next_cursor"])
    assert body["error"]["field"] == "cursor"
    body = await api.get("/v1/changes", 400, cursor=page["next_cursor"])
    assert body["error"]["field"] == "cursor"


async def test_unknown_things_are_404(api: Api) -> None:
    assert (await api.get("/v1/devices/nobody", 404))["error"]["code"] == "not_found"
    assert (await api.get("/v1/devices/nobody/history", 404))["error"]["code"] == "not_found"
    assert (await api.get("/v1/rollouts/r-none", 404))["error"]["code"] == "not_found"
    assert (await api.get("/v1/devices/dev-0000001", 404, at_seq=1))["error"]["code"] == "not_found"


async def test_min_seq_newer_than_the_head_the_api_knows_waits_instead_of_refusing(api: Api) -> None:
    """The API keeps the log's head for a moment; a sequence a command reply has just given is
    newer than that, and must be waited for, not refused as beyond the end of the log."""
    await api.get("/v1/summary")  # the API now knows the head
    event = observed.DeviceHealthChanged(device_id="dev-0000006", health="degraded", previous="ok")
    [done] = await api.log.append(event.subject, [seal(event, actor="service:drift", at=datetime.now(UTC))], None)
    assert (await api.get("/v1/summary", min_seq=done.seq))["as_of_seq"] >= done.seq
    assert (await api.get("/v1/summary", at_seq=done.seq))["as_of_seq"] == done.seq


async def test_min_seq_waits_for_the_write(api: Api) -> None:
    event = observed.DeviceHealthChanged(device_id="dev-0000005", health="failed", previous="ok")
    [done] = await api.log.append(event.subject, [seal(event, actor="service:drift", at=datetime.now(UTC))], None)
    answer = await api.get("/v1/devices/dev-0000005", min_seq=done.seq)
    assert answer["as_of_seq"] >= done.seq
    assert answer["device"]["health"] == "failed"
    history = await api.get("/v1/devices/dev-0000005/history", min_seq=done.seq)
    assert history["items"][0]["seq"] == done.seq
    assert history["items"][0]["summary"] == "device dev-0000005 health ok -> failed"


async def test_point_in_time_equals_the_live_answer_recorded_then(api: Api) -> None:
    live = {
        "summary": await api.get("/v1/summary"),
        "devices": await api.get("/v1/devices", limit=1000),
        "problems": await api.get("/v1/devices", limit=1000, problems="true"),
        "device": await api.get("/v1/devices/dev-0000007"),
        "sites": await api.get("/v1/sites"),
        "snapshots": await api.get("/v1/snapshots"),
        "rollouts": await api.get("/v1/rollouts"),
        "changes": await api.get("/v1/changes", limit=50),
        "history": await api.get("/v1/devices/dev-0000007/history"),
    }
    seq = live["summary"]["as_of_seq"]
    moment = format_time(datetime.now(UTC) - timedelta(minutes=30))  # after every event so far
    # The fleet moves on.
    await append_history(api.log, 60, rounds=3, seed=99, start=datetime.now(UTC), span=timedelta(seconds=5))
    await wait_caught_up(api.pool, api.log)
    assert _strip(await api.get("/v1/summary")) != _strip(live["summary"])
    paths = {"summary": "/v1/summary", "devices": "/v1/devices", "problems": "/v1/devices",
             "device": "/v1/devices/dev-0000007", "sites": "/v1/sites", "snapshots": "/v1/snapshots",
             "rollouts": "/v1/rollouts", "changes": "/v1/changes", "history": "/v1/devices/dev-0000007/history"}
    extra: dict[str, dict[str, Any]] = {"devices": {"limit": 1000}, "problems": {"limit": 1000, "problems": "true"}, "changes": {"limit": 50}}
    for name, path in paths.items():
        for when in ({"at_seq": seq}, {"at": moment}):
            past = await api.get(path, **extra.get(name, {}), **when)
            assert past["historical"] is True and past["as_of_seq"] == seq, (name, when)
            assert _strip(past) == _strip(live[name]), (name, when)
    # Asked again: answered from the cache, still the same.
    assert _strip(await api.get("/v1/summary", at_seq=seq)) == _strip(live["summary"])
    assert _strip(await api.get("/v1/summary", at_seq=0))["totals"]["total"] == 0


async def test_postgres_down_is_a_503(eventlog: EventLog, issue_token: Callable[[str], Awaitable[str]]) -> None:
    from shared.embedded import free_port

    pool = await create_pool(f"postgresql://nobody:x@127.0.0.1:{free_port()}/none", min_size=0, max_size=1)
    try:
        app = create_app(ReadModels(pool, eventlog))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE,  # type: ignore[arg-type]  # Litestar's ASGI types differ from httpx's
                                     headers={"Authorization": f"Bearer {await issue_token('viewer')}"}) as client:
            for path in ("/v1/summary", "/v1/devices", "/v1/changes", "/v1/sites", "/readyz"):
                response = await client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert response.json()["error"]["code"] == "unavailable"
            assert (await client.get("/healthz")).status_code == 200
            # /metrics still answers (the process's own metrics), and says the read models are down
            metrics = exposition.families((await client.get("/metrics")).text)
            assert exposition.value(metrics["fleet_read_models_up"]) == 0
            assert "fleet_devices" not in metrics
    finally:
        await pool.close()


async def test_rollouts_are_projected(api: Api) -> None:
    from shared.events import rollout

    events = [
        rollout.RolloutStarted(rollout_id="r-7", snapshot_id="snap-2", target="tier=edge", wave_sizes=[1, 3]),
        rollout.RolloutWaveStarted(rollout_id="r-7", wave=0),
        rollout.RolloutDevicesAssigned(rollout_id="r-7", wave=0, at=format_time(datetime.now(UTC)),
                                       devices=["dev-0000001"]),
        rollout.RolloutPaused(rollout_id="r-7", reason="operator"),
    ]
    now = datetime.now(UTC)
    done = await api.log.append("fleet.evt.rollout.r-7", [seal(e, actor="operator:alice", at=now) for e in events], 0)
    last = done[-1].seq
    page = await api.get("/v1/rollouts", min_seq=last)
    assert [r["rollout_id"] for r in page["items"]] == ["r-7"]
    one = (await api.get("/v1/rollouts/r-7"))["rollout"]
    assert (one["status"], one["snapshot_id"], one["counts"]["assigned"], one["counts"]["devices"]) == ("paused", "snap-2", 1, 4)
    before = (await api.get("/v1/rollouts/r-7", at_seq=last - 1))["rollout"]
    assert before["status"] == "running"
    changes = await api.get("/v1/changes", rollout="r-7", min_seq=last, order="asc")
    assert [c["summary"] for c in changes["items"]][-1] == "rollout r-7 paused: operator"
    assert {c["actor"] for c in changes["items"]} == {"operator:alice"}
