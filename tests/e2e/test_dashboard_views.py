"""What an operator reads is true (issue 14), on a whole `fleet up` with a simulated fleet:

- the rollout service (`fleet rollout status`) and the query API (`GET /v1/rollouts/{id}`, live and
  `at_seq=`) give the same per-wave progress for the same rollout, after it completes, after
  another one is rolled back, and after a third one has taken and changed the first two's devices;
- in a real browser (Debian's Chromium, Playwright), the numbers the dashboard shows for a rollout
  and for a site equal the API's, after a rollout completes and after a rollback.

Without /usr/bin/chromium the browser checks are skipped (the API-vs-service comparison still runs)."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared.commands import CommandClient
from shared.config import load_settings
from shared.connection import connect_nats
from shared.times import format_time

CHROMIUM = os.environ.get("FLEET_TEST_CHROMIUM", "/usr/bin/chromium")
STATUSES = ("pending", "in_flight", "converged", "failed", "timed_out", "restored")


def _api_waves(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """The API's progress in the shape of the rollout service's `wave_progress` (both count waves
    from 1)."""
    return [{"wave": w["wave"], "size": w["size"], "counts": {k: w[k] for k in STATUSES if w[k]}}
            for w in rollout["progress"]]


class Views:
    def __init__(self, client: CommandClient, http: httpx.AsyncClient) -> None:
        self.client = client
        self.http = http

    async def api(self, path: str, **params: Any) -> Any:
        response = await self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def service(self, rollout_id: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self.client.send("rollout", "get", {"rollout_id": rollout_id})).result
        return result

    async def wait_status(self, rollout_id: str, statuses: tuple[str, ...], timeout: float = 120) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.service(rollout_id))["status"] not in statuses:
            assert asyncio.get_running_loop().time() < deadline, await self.service(rollout_id)
            await asyncio.sleep(0.2)

    async def same_progress(self, rollout_id: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]]]:
        """Ask both until they agree (each follows the log at its own pace); return the API's
        sequence and the progress both gave."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            service = (await self.service(rollout_id))["wave_progress"]
            answer = await self.api(f"/v1/rollouts/{rollout_id}")
            if _api_waves(answer["rollout"]) == service:
                return answer["as_of_seq"], service
            assert asyncio.get_running_loop().time() < deadline, (service, answer["rollout"]["progress"])
            await asyncio.sleep(0.2)


async def _check_page(page: Any, views: Views, rollout_id: str) -> None:
    """The dashboard's numbers for a rollout and for every site equal the API's."""
    from playwright.async_api import expect

    rollout = (await views.api(f"/v1/rollouts/{rollout_id}"))["rollout"]
    shown = page.locator(f'[data-rollout-id="{rollout_id}"]')
    totals = shown.locator("[data-totals]")
    for field in ("assigned", "size", *STATUSES):
        if rollout["totals"][field] or field in ("assigned", "size"):
            await expect(totals.locator(f'[data-field="{field}"]')).to_have_text(str(rollout["totals"][field]),
                                                                              timeout=20_000)
        else:
            await expect(totals.locator(f'[data-field="{field}"]')).to_have_count(0)
    for wave in rollout["progress"]:
        line = shown.locator(f'[data-wave="{wave["wave"]}"]')
        for field in ("size", *STATUSES):
            if wave[field]:
                await expect(line.locator(f'[data-field="{field}"]')).to_have_text(str(wave[field]), timeout=20_000)
    sites = (await views.api("/v1/sites", order="worst"))["items"]
    assert sites
    for site in sites:
        row = page.locator(f'[data-site-id="{site["site_id"]}"]')
        for field in ("total", "online", "offline", "degraded", "failed", "drifted", "stuck"):
            await expect(row.locator(f'[data-field="{field}"]')).to_have_text(str(site["counts"][field]),
                                                                             timeout=20_000)
    order = await page.locator("#sites [data-site-id]").evaluate_all("rows => rows.map(r => r.dataset.siteId)")
    assert order == [s["site_id"] for s in sites]


async def _check_diff(page: Any, views: Views, start: datetime, end: datetime) -> None:
    """The dashboard's fleet diff between two picked moments shows the API's numbers and devices."""
    from playwright.async_api import expect

    answer = await views.api("/v1/diff", **{"from": format_time(start), "to": format_time(end)})
    assert answer["devices_changed"] == 60, answer  # every device got r-good's snapshot since
    await page.fill("#diff-from", start.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.fill("#diff-to", end.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.click("#diff-run")
    await expect(page.locator("#diff-summary")).to_have_text(
        f"log sequence {answer['from_seq']} → {answer['to_seq']}: {answer['changes']} changes, "
        f"{answer['devices_changed']} devices differ", timeout=15_000)
    await expect(page.locator("#diff [data-group]")).to_have_count(len(answer["groups"]))
    for group in answer["groups"]:
        link = page.locator(f'#diff [data-group="{group["key"]}"] [data-diff-group]')
        await expect(link).to_have_text(str(group["devices"]))
    first = answer["groups"][0]
    await page.locator(f'#diff [data-group="{first["key"]}"] [data-diff-group]').click()
    await expect(page.locator("#diff-devices")).to_contain_text(first["sample"][0], timeout=15_000)


@pytest.mark.timeout(420)
async def test_rollout_progress_and_site_health_agree_everywhere(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path / "fleet"), "heartbeat_interval": 0.5,
                              "offline_after": 4, "drift_grace": 2.0}, env={})
    supervisor = Supervisor(settings)
    status = await supervisor.start()
    settings = load_settings({"data_dir": str(tmp_path / "fleet")}, env={})  # now with the admin identity
    nc = await connect_nats(msgspec.structs.replace(settings, nats_url=status.nats_url), "test")
    sim = FleetSimulator(nc, SimOptions(devices=60, sites=3, interval=0.5, apply_delay=0.2, seed=1, prefix="web"))
    browser = None
    try:
        client = CommandClient(nc, actor="operator:test", timeout=30)
        await client.wait_ready("registry", "snapshot", "rollout", "drift", timeout=90)
        await sim.start()
        assert supervisor.token_file is not None
        token = supervisor.token_file.read_text().strip()  # `fleet up`'s admin token
        async with httpx.AsyncClient(base_url=status.api_url, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            views = Views(client, http)
            before_good = datetime.now(UTC).replace(microsecond=0)  # the dashboard's time fields hold seconds
            good = (await client.send("snapshot", "create", {"name": "web", "config": {"v": 1}})).result["snapshot_id"]
            await client.send("rollout", "start", {"rollout_id": "r-good", "snapshot_id": good,
                                                   "canary": {"sites": ["web-s000"]}, "waves": [100]})
            await views.wait_status("r-good", ("completed",))
            completed_seq, completed = await views.same_progress("r-good")
            assert sum(w["counts"].get("converged", 0) for w in completed) == 60, completed

            page = None
            if shutil.which(CHROMIUM):
                from playwright.async_api import async_playwright

                playwright = await async_playwright().start()
                browser = (playwright, await playwright.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]))
                page = await browser[1].new_page(viewport={"width": 1400, "height": 1400}, timezone_id="UTC")
                await page.goto(status.api_url + "/")
                await page.fill("#token", token)
                await page.click("#sign-in")
                await _check_page(page, views, "r-good")

            bad = (await client.send("snapshot", "create", {"name": "web", "config": {"v": 2}})).result["snapshot_id"]
            sim.options.fail_snapshots = {bad}
            await client.send("rollout", "start", {"rollout_id": "r-bad", "snapshot_id": bad, "canary": {"sites": ["web-s001"]},
                                                   "waves": [100], "on_failure": "rollback"})
            await views.wait_status("r-bad", ("rolled_back",))
            _, rolled_back = await views.same_progress("r-bad")
            assert sum(w["counts"].get("restored", 0) for w in rolled_back) == 20, rolled_back  # the canary site
            assert rolled_back[-1] == {"wave": 2, "size": 40, "counts": {"pending": 40}}
            # r-good still reads as it stood: its canary devices were taken by r-bad and given back
            _, again = await views.same_progress("r-good")
            assert again == completed
            # and as of the moment it completed, the API gives what the service said then
            past = (await views.api("/v1/rollouts/r-good", at_seq=completed_seq))["rollout"]
            assert _api_waves(past) == completed
            # A later rollout takes every device of both and changes them: both still read as they
            # stood, in the service (which re-judged them against what they now report, before) and
            # in the API, live and as of now
            sim.options.fail_snapshots = set()
            newer = (await client.send("snapshot", "create", {"name": "web", "config": {"v": 3}})).result["snapshot_id"]
            await client.send("rollout", "start", {"rollout_id": "r-new", "snapshot_id": newer, "waves": [100]})
            await views.wait_status("r-new", ("completed",))
            _, taken = await views.same_progress("r-new")
            assert sum(w["counts"].get("converged", 0) for w in taken) == 60, taken
            now_seq, good_after = await views.same_progress("r-good")
            assert good_after == completed
            _, bad_after = await views.same_progress("r-bad")
            assert bad_after == rolled_back
            for rollout_id, expected in (("r-good", completed), ("r-bad", rolled_back)):
                pinned = (await views.api(f"/v1/rollouts/{rollout_id}", at_seq=now_seq))["rollout"]
                assert _api_waves(pinned) == expected, rollout_id
            if page is not None:
                await _check_page(page, views, "r-bad")
                await _check_page(page, views, "r-good")
                await _check_diff(page, views, before_good, datetime.now(UTC).replace(microsecond=0))
                artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
                artifacts.mkdir(exist_ok=True)
                await page.screenshot(path=str(artifacts / "dashboard-views.png"), full_page=True)
    finally:
        if browser is not None:
            await browser[1].close()
            await browser[0].stop()
        await sim.stop()
        await nc.close()
        await supervisor.stop()
