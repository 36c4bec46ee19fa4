"""`fleet sites` and `fleet diff` against a served query API: the numbers they print are the API's,
`--json` gives the API's answer, bad input exits 2."""
# ruff: noqa: F811 - `served` is the fixture of test_projections_cli, taken as a parameter

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from tests.integration.test_projections_cli import fleet, served  # noqa: F401 - the fixture


async def test_sites_and_diff_commands(served: tuple[str, asyncpg.Pool], tmp_path: Path,
                                       issue_token: Callable[[str], Awaitable[str]]) -> None:
    url, _ = served
    token = await issue_token("viewer")
    env = {"FLEET_API_URL": url, "FLEET_DATA_DIR": str(tmp_path), "COLUMNS": "200", "FLEET_API_TOKEN": token}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        api_sites = (await client.get("/v1/sites", params={"order": "worst", "limit": 1000})).json()
        api_diff = (await client.get("/v1/diff", params={"from": "0"})).json()
    code, out = await fleet("sites", "--json", env=env)
    assert code == 0, out
    assert json.loads(out)["sites"] == api_sites["items"]
    code, out = await fleet("sites", env=env)
    assert code == 0, out
    worst = api_sites["items"][0]
    rows = [line for line in out.splitlines() if "site-" in line]
    assert worst["site_id"] in rows[0], out  # the worst site is the first row
    code, out = await fleet("sites", "--problems", "--json", env=env)
    assert code == 0
    troubled = json.loads(out)["sites"]
    assert troubled and all(s["counts"]["offline"] + s["counts"]["failed"] + s["counts"]["degraded"]
                            + s["counts"]["drifted"] + s["counts"]["stuck"] for s in troubled)

    code, out = await fleet("diff", "--from", "0", "--json", env=env)
    assert code == 0, out
    assert json.loads(out)["groups"] == api_diff["groups"]
    code, out = await fleet("diff", "--from", "0", "--devices", "--limit", "3", env=env)
    assert code == 0, out
    assert f"{api_diff['devices_changed']} devices differ" in out
    group = api_diff["groups"][0]
    assert f"{group['change']} {group['site_id']}: {group['before']} -> {group['after']}: " in out
    assert ", ".join(group["sample"][:3]) in out
    code, out = await fleet("diff", "--from", "yesterday", env=env)
    assert code == 2, out
