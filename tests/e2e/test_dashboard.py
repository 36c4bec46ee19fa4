"""The dashboard in a real browser (Debian's Chromium driven by Playwright): it shows the fleet,
a rollout in progress with its waves, and its pause button sends the real command.

Needs /usr/bin/chromium (`apt-get install -y chromium`; `.ci/run` installs it). Without it the
test is skipped with that instruction."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx
import msgspec
import pytest

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared import tokens
from shared.commands import CommandClient
from shared.config import load_settings
from shared.connection import connect_nats
from shared.times import format_time, utcnow

CHROMIUM = os.environ.get("FLEET_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM}: run `apt-get install -y chromium` (as .ci/run does) to enable the "
           "browser test, or point FLEET_TEST_CHROMIUM at a Chromium binary")


async def test_dashboard_shows_a_rollout_and_pauses_it(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    settings = load_settings({"data_dir": str(tmp_path / "fleet"), "heartbeat_interval": 0.5,
                              "offline_after": 4, "drift_grace": 2.0}, env={})
    supervisor = Supervisor(settings)
    status = await supervisor.start()
    settings = load_settings({"data_dir": str(tmp_path / "fleet")}, env={})  # now with the admin identity
    nc = await connect_nats(msgspec.structs.replace(settings, nats_url=status.nats_url), "test")
    sim = FleetSimulator(nc, SimOptions(devices=60, sites=3, interval=0.5, apply_delay=0.2, seed=1, prefix="web"))
    try:
        client = CommandClient(nc, actor="operator:test", timeout=30)
        await client.wait_ready("registry", "snapshot", "rollout", "drift", timeout=90)
        await sim.start()
        snap = (await client.send("snapshot", "create", {"name": "web", "config": {"v": 1}})).result["snapshot_id"]
        # a long bake keeps the rollout running while the browser looks at it
        await client.send("rollout", "start", {"rollout_id": "r-web", "snapshot_id": snap, "canary": {"sites": ["web-s000"]},
                                               "waves": [100], "bake_seconds": 3600})
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"])
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(status.api_url + "/")
            # The page asks for a token; a wrong one is refused, a viewer's shows the fleet but may
            # not pause, an operator's lets the buttons work.
            await expect(page.locator("#login")).to_be_visible(timeout=15_000)
            await page.fill("#token", "fpt_0011223344556677_not-a-real-secret-at-all")
            await page.click("#sign-in")
            await expect(page.locator("#login-error")).to_contain_text("refused", timeout=15_000)
            viewer, _ = await tokens.create(nc, "dashboard-viewer", "viewer", "test", format_time(utcnow()))
            await page.fill("#token", viewer)
            await page.click("#sign-in")
            await expect(page.locator("#login")).to_be_hidden()
            await expect(page.locator('[data-counter="devices"] .n')).to_have_text("60", timeout=30_000)
            rollout = page.locator('[data-rollout-id="r-web"]')
            await expect(rollout.locator("[data-status]")).to_have_text(re.compile("running|baking"), timeout=30_000)
            await expect(page.locator("#matrix")).to_contain_text("web-s000", timeout=30_000)
            await rollout.locator('button[data-action="pause"]').click()
            await expect(page.locator("#action-result")).to_contain_text("not allowed", timeout=15_000)
            await page.evaluate("sessionStorage.clear()")
            await page.reload()
            await expect(page.locator("#login")).to_be_visible(timeout=15_000)
            operator, _ = await tokens.create(nc, "dashboard-test", "operator", "test", format_time(utcnow()))
            await page.fill("#token", operator)
            await page.click("#sign-in")
            await expect(page.locator("#login")).to_be_hidden()
            await expect(rollout.locator("[data-status]")).to_have_text(re.compile("running|baking"), timeout=30_000)
            await rollout.locator('button[data-action="pause"]').click()
            await expect(page.locator("#action-result")).to_contain_text("pause r-web: paused", timeout=15_000)
            await expect(rollout.locator("[data-status]")).to_have_text("paused", timeout=15_000)
            await page.fill("#search", "site=web-s001")
            await page.click("#find")
            await expect(page.locator("#devices")).to_contain_text("web-d000001", timeout=15_000)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await browser.close()
        reply = await client.send("rollout", "get", {"rollout_id": "r-web"})
        assert reply.result["status"] == "paused"
        # The pause is recorded as the token's principal, and `fleet up`'s admin token reads the API.
        assert supervisor.token_file is not None and supervisor.token_file.stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {supervisor.token_file.read_text().strip()}"}
        async with httpx.AsyncClient(base_url=status.api_url, headers=admin, timeout=10) as http:
            actors: set[str] = set()
            for _ in range(100):  # until the changes projection has applied the pause
                page = (await http.get("/v1/changes", params={"rollout": "r-web", "type": "RolloutPaused"})).json()
                actors = {c["actor"] for c in page["items"]}
                if actors:
                    break
                await asyncio.sleep(0.2)
        assert actors == {"operator:dashboard-test"}
    finally:
        await sim.stop()
        await nc.close()
        await supervisor.stop()
