"""One device filter (issue 13 item 2): `GET /v1/devices` asked live (SQL over the read model) and
at the current sequence (the log folded in memory) gives the same devices in the same order, for
a table of filters and their combinations, over a generated fleet plus the cases where the two
paths used to disagree: devices only observed (never registered), retired ones, a device online
whose health is unknown, one stuck with its drift acknowledged, and ids whose order depends on
the collation."""
# ruff: noqa: F811 - `api` is the fixture of test_api, taken as a parameter

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from projections.fleet.filters import NO_PROBLEM, problem_names, problem_rank
from projections.fleet.model import DeviceRow
from shared.envelope import seal
from shared.events import desired, observed, registry
from tests.integration.test_api import Api, api  # noqa: F401 - the fixture
from tests.integration.test_projections import wait_caught_up

ODD_IDS = ["Zed-1", "alpha_2", "alpha-2", "Alpha-3", "b", "B_1"]

FILTERS: list[dict[str, str]] = [
    {},
    {"site": "site-003"},
    {"site": "site-nowhere"},
    {"snapshot": "snap-1"},
    {"desired_snapshot": "snap-3"},
    {"desired_snapshot": "snap-0"},
    {"health": "ok"},
    {"health": "degraded"},
    {"health": "failed"},
    {"health": "unknown"},
    {"online": "true"},
    {"online": "false"},
    {"drifted": "true"},
    {"drifted": "false"},
    {"problems": "true"},
    {"problems": "false"},
    {"rollout": "r-x"},
    {"rollout": "r-initial"},
    {"selector": "tier=edge"},
    {"selector": "tier!=edge,hw in (v1,v9)"},
    {"selector": "site in (site-001,site-002),!gpu"},
    {"selector": "hw notin (v1)"},
    {"selector": "kind=device"},
    {"include_retired": "true"},
    {"include_retired": "true", "problems": "true"},
    {"include_retired": "true", "online": "false", "selector": "tier=core"},
    {"site": "site-001", "health": "degraded"},
    {"site": "site-002", "problems": "false", "snapshot": "snap-0"},
    {"online": "true", "drifted": "true", "selector": "tier=edge"},
    {"problems": "true", "rollout": "r-x"},
    {"desired_snapshot": "snap-3", "problems": "false", "include_retired": "true"},
    {"health": "ok", "online": "true", "drifted": "false", "selector": "hw=v9"},
]


async def _disagreements(api: Api) -> None:
    """Events after the generated history that the two filters used to read differently."""
    now = datetime.now(UTC)

    async def put(*events: Any) -> None:
        for event in events:
            actor = {"registry": "operator:t", "desired": "service:rollout"}.get(event.subject.split(".")[2],
                                                                                  "service:drift")
            await api.log.append(event.subject, [seal(event, actor=actor, at=now)], None)

    # never registered, only heard from
    await put(observed.DeviceCameOnline(device_id="ghost-1", site_id="site-001", snapshot_id="snap-1",
                                        config_hash="h-snap-1", health="degraded"),
              observed.DeviceCameOnline(device_id="ghost-2", site_id="site-003", snapshot_id="snap-0",
                                        config_hash="h-snap-0"))
    # retired, with trouble
    for device in ("dev-0000003", "dev-0000010", "dev-0000017"):
        await put(registry.DeviceRetired(device_id=device))
    await put(observed.DeviceWentOffline(device_id="dev-0000010", last_seen="2026-01-01T00:00:00.000000Z"))
    # online with health unknown; stuck with the drift acknowledged and then ended
    await put(observed.DeviceCameOnline(device_id="dev-0000001", site_id="site-001", snapshot_id="snap-0",
                                        config_hash="h-snap-0", health="unknown"),
              observed.DeviceCameOnline(device_id="dev-0000002", site_id="site-002", snapshot_id="snap-0",
                                        config_hash="h-snap-0", health="ok"),
              observed.DriftBegan(device_id="dev-0000002", desired_snapshot_id="snap-1",
                                  desired_config_hash="h-snap-1", reported_snapshot_id="snap-0",
                                  reported_config_hash="h-snap-0", since="2026-01-01T00:00:00.000000Z"),
              observed.DeviceStuck(device_id="dev-0000002", attempts=3),
              observed.DriftAcknowledged(device_id="dev-0000002", reason="known"))
    # another rollout's desired state for a few devices
    for i in range(4, 60, 9):
        device = f"dev-{i:07d}"
        await put(desired.DesiredStateAssigned(device_id=device, site_id=f"site-{i % 20:03d}", snapshot_id="snap-3",
                                               config_hash="h-snap-3", revision=2, rollout_id="r-x"))
    # ids whose order is the collation's question
    for n, device in enumerate(ODD_IDS):
        await put(registry.DeviceAdded(device_id=device, site_id="site-001", labels={"tier": "edge", "hw": "v9"}),
                  observed.DeviceCameOnline(device_id=device, site_id="site-001", snapshot_id="snap-1",
                                            config_hash="h-snap-1", health=("ok", "degraded")[n % 2]))
    await wait_caught_up(api.pool, api.log)


async def _walk(api: Api, params: dict[str, str], limit: int, **when: Any) -> list[dict[str, Any]]:
    """Every page of a device query."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await api.get("/v1/devices", limit=limit, **params, **when, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_live_and_point_in_time_device_lists_agree_for_every_filter(api: Api) -> None:
    await _disagreements(api)
    live_all = (await api.get("/v1/devices", limit=1000, include_retired="true"))["items"]
    head = (await api.get("/v1/summary"))["as_of_seq"]
    assert head == await api.log.last_stream_seq()
    ids = [d["device_id"] for d in live_all]
    assert ids == sorted(ids), "devices are ordered by id, byte-wise, on both paths"
    assert {"ghost-1", "ghost-2"}.isdisjoint(ids), "only registered devices are listed"
    answers: dict[str, int] = {}
    for params in FILTERS:
        live = await api.get("/v1/devices", limit=1000, **params)
        past = await api.get("/v1/devices", limit=1000, at_seq=head, **params)
        assert live["as_of_seq"] == head and past["historical"] is True
        assert [d["device_id"] for d in past["items"]] == [d["device_id"] for d in live["items"]], params
        assert past["items"] == live["items"], params
        answers[str(params)] = len(live["items"])
    # the table asks real questions: most filters select some devices but not all
    assert sum(0 < n < len(live_all) for n in answers.values()) >= len(FILTERS) // 2, answers
    # pages walk the same devices in the same order on both paths
    for params in ({}, {"problems": "true"}, {"include_retired": "true", "selector": "tier=edge"}):
        assert await _walk(api, params, 7) == await _walk(api, params, 7, at_seq=head), params
    # the meanings kept where the two disagreed
    problems = {d["device_id"] for d in (await api.get("/v1/devices", limit=1000, problems="true"))["items"]}
    assert "dev-0000002" in problems  # stuck (drift acknowledged) is trouble, as the site counters say
    unknown = await api.get("/v1/devices/dev-0000001")
    if unknown["device"]["online"] and not unknown["device"]["drifted_since"] and not unknown["device"]["stuck"]:
        assert "dev-0000001" not in problems  # online, health not reported as degraded or failed
    retired = {d["device_id"] for d in live_all if d["retired"]}
    assert retired == {"dev-0000003", "dev-0000010", "dev-0000017"}
    assert retired.isdisjoint(d["device_id"] for d in (await api.get("/v1/devices", limit=1000))["items"])


async def test_worst_first_is_the_one_problem_rank_on_both_paths(api: Api) -> None:
    """`order=worst`: the SQL order (live) and the in-memory order (point in time) both equal
    `filters.problem_rank`, then id, over the same rows — an acknowledged stuck device included."""
    await _disagreements(api)
    head = (await api.get("/v1/summary"))["as_of_seq"]
    for params in ({}, {"problems": "true"}, {"site": "site-002"}, {"include_retired": "true"}):
        live = (await api.get("/v1/devices", limit=1000, order="worst", **params))["items"]
        rows = [msgspec.convert(d, DeviceRow) for d in live]
        assert [r.device_id for r in rows] == [r.device_id for r in sorted(rows, key=lambda r: (problem_rank(r),
                                                                                              r.device_id))]
        past = (await api.get("/v1/devices", limit=1000, order="worst", at_seq=head, **params))["items"]
        assert past == live, params
        walked = await _walk(api, {**params, "order": "worst"}, 7)
        assert walked == live == await _walk(api, {**params, "order": "worst"}, 7, at_seq=head), params
    ranks = [problem_rank(msgspec.convert(d, DeviceRow))
             for d in (await api.get("/v1/devices", limit=1000, order="worst", problems="true"))["items"]]
    assert ranks[0] < ranks[-1] and NO_PROBLEM not in ranks, ranks  # several ranks, all problems
    stuck = msgspec.convert((await api.get("/v1/devices/dev-0000002"))["device"], DeviceRow)
    assert stuck.stuck and stuck.acknowledged and problem_names(stuck)[0] == "acknowledged"
