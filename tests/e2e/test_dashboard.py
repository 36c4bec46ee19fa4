"""The dashboard in a real browser (Debian's Chromium driven by Playwright): it shows the fleet,
a rollout in progress with its waves, and its pause button sends the real command.

Needs /usr/bin/chromium (`apt-get install -y chromium`; `.ci/run` installs it). Without it the
test is skipped with that instruction."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import msgspec
import pytest

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared.commands import CommandClient
from shared.config import load_settings
from shared.connection import connect_nats

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
        await client.send("rollout", "start", {"rollout_id": "r-web", "snapshot_id": snap, "canary": "site:web-s000",
                                               "waves": "100", "bake": "1h"})
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"])
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(status.api_url + "/")
            await expect(page.locator('[data-counter="devices"] .n')).to_have_text("60", timeout=30_000)
            rollout = page.locator('[data-rollout-id="r-web"]')
            await expect(rollout.locator("[data-status]")).to_have_text(re.compile("running|baking"), timeout=30_000)
            await expect(page.locator("#matrix")).to_contain_text("web-s000", timeout=30_000)
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
    finally:
        await sim.stop()
        await nc.close()
        await supervisor.stop()
