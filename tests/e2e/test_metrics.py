"""Every part scrapeable, as Prometheus would scrape it (issue 24), on a whole `fleet up` with a
simulated fleet and a small rollout: each part's /metrics (listed in endpoints.json and `fleet
status`) parses with Prometheus's text parser, every family has HELP and TYPE, the latency
histograms have buckets, and the fleet gauges equal the API's summary; every part logs JSON
lines with service, instance, trace_id and span_id, uvicorn's lines included."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from tests import exposition

DEVICES, SITES = 40, 2
STATES = ("total", "online", "offline", "ok", "degraded", "failed", "unknown", "drifted", "stuck")


async def _scrape(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(url)
    assert response.status_code == 200, (url, response.text)
    assert response.headers["content-type"] in ("text/plain; version=0.0.4; charset=utf-8",
                                                "text/plain; version=1.0.0; charset=utf-8"), url
    return exposition.families(response.text)


async def _scrape_all(http: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    return dict(zip(urls, await asyncio.gather(*(_scrape(http, u) for u in urls.values())), strict=True))


async def _summary_equals_gauges(http: httpx.AsyncClient, api_metrics: str, timeout: float = 60) -> dict[str, Any]:
    """Scrape between two summaries that name the same log sequence (nothing moved in between)
    and check the gauges equal that summary; the summary."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        before = (await http.get("/v1/summary")).json()
        metrics = await _scrape(http, api_metrics)
        after = (await http.get("/v1/summary")).json()
        if before["as_of_seq"] == after["as_of_seq"] == exposition.value(
                metrics["fleet_projection_checkpoint"], projection="fleet"):
            break
        assert asyncio.get_running_loop().time() < deadline, "the fleet never held still"
        await asyncio.sleep(0.5)
    devices = metrics["fleet_devices"]
    assert {s.labels["site"] for s in devices.samples} == {s["site_id"] for s in after["by_site"]}
    for site in after["by_site"]:
        for state in STATES:
            assert exposition.value(devices, site=site["site_id"], state=state) == site[state], (site, state)
    for snap in after["by_snapshot"]:
        assert exposition.value(metrics["fleet_devices_by_snapshot"], snapshot=snap["snapshot_id"]) == snap["total"]
    rollouts = (await http.get("/v1/rollouts")).json()["items"]
    by_status: dict[str, int] = {}
    for rollout in rollouts:
        by_status[rollout["status"]] = by_status.get(rollout["status"], 0) + 1
    assert {s.labels["status"]: s.value for s in metrics["fleet_rollouts"].samples} == by_status
    result: dict[str, Any] = after
    return result


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    decoded = []
    for line in lines:
        try:
            decoded.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}: not a JSON line: {line[:200]}") from None
    return decoded


@pytest.mark.timeout(420)
async def test_every_part_is_scrapeable_during_a_rollout_and_logs_json(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path / "fleet"), "heartbeat_interval": 0.5,
                              "offline_after": 4, "drift_grace": 2.0}, env={})
    supervisor = Supervisor(settings)
    status = await supervisor.start()
    settings = load_settings({"data_dir": str(tmp_path / "fleet")}, env={})  # now with the admin identity
    nc = await connect_nats(msgspec.structs.replace(settings, nats_url=status.nats_url), "test")
    sim = FleetSimulator(nc, SimOptions(devices=DEVICES, sites=SITES, interval=0.5, apply_delay=0.3, seed=2,
                                        prefix="obs"))
    try:
        client = CommandClient(nc, actor="operator:test", timeout=30)
        await client.wait_ready("registry", "snapshot", "rollout", "drift", timeout=90)
        await sim.start()
        # endpoints.json and `fleet status` name every part's metrics URL; the API's is its /metrics
        endpoints = json.loads((tmp_path / "fleet" / "endpoints.json").read_text())
        urls: dict[str, str] = endpoints["metrics"]
        assert set(urls) == set(supervisor.parts)
        assert urls["api"] == f"{status.api_url}/metrics"
        assert len(set(urls.values())) == len(urls)
        supervisor.write_status()
        listed = json.loads((tmp_path / "fleet" / "status.json").read_text())
        assert {p["name"]: p["metrics_url"] for p in listed["parts"]} == urls

        assert supervisor.token_file is not None
        token = supervisor.token_file.read_text().strip()
        async with httpx.AsyncClient(base_url=status.api_url, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            while True:  # the API is up once it answers
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            snapshot = (await client.send("snapshot", "create", {"name": "obs", "config": {"v": 1}})).result
            await client.send("rollout", "start", {"rollout_id": "r-obs", "snapshot_id": snapshot["snapshot_id"],
                                                   "canary": {"sites": ["obs-s000"]}, "waves": [50, 100],
                                                   "bake_seconds": 3})
            # While it runs, the API's scrape shows it with its wave (each wave bakes 3 s)
            running: list[Any] = []
            while not running:
                api = await _scrape(http, urls["api"])
                running = [s for s in api["fleet_rollout_wave"].samples if s.labels["rollout"] == "r-obs"]
                status_now = (await client.send("rollout", "get", {"rollout_id": "r-obs"})).result["status"]
                assert running or status_now != "completed", "the rollout ended before a scrape saw it"
                await asyncio.sleep(0.2)
            assert running[0].labels["snapshot"] == snapshot["snapshot_id"]
            assert running[0].labels["status"] in ("running", "baking")
            during = await _scrape_all(http, urls)
            for name, families in during.items():
                assert exposition.value(families["fleet_part_info"], part=name) == 1, name
            while (await client.send("rollout", "get", {"rollout_id": "r-obs"})).result["status"] != "completed":
                await asyncio.sleep(0.3)
            after = await _scrape_all(http, urls)

            # Appends and commands are timed in the services that did them, in real buckets.
            for name in ("registry", "snapshot", "rollout"):
                assert exposition.histogram_count(after[name]["fleet_append_seconds"]) > 0, name
            assert exposition.histogram_count(after["snapshot"]["fleet_command_seconds"], command="create") >= 1
            assert exposition.histogram_count(after["rollout"]["fleet_command_seconds"], command="start") >= 1
            assert exposition.value(after["rollout"]["fleet_commands"], service="rollout", command="start",
                                    result="ok") == 1
            assert after["rollout"]["fleet_rollout_assignments"].samples[0].value >= DEVICES
            assert after["drift"]["fleet_heartbeats_accepted"].samples[0].value > 0
            assert exposition.value(after["drift"]["fleet_drift_reconciles"], result="put") is not None
            # One projection runner holds each projection's lease, and says so.
            assert exposition.value(after["projections"]["fleet_lease_held"], lease="projection-fleet") == 1
            # The fleet gauges are the summary's numbers.
            summary = await _summary_equals_gauges(http, urls["api"])
            assert summary["totals"]["total"] == DEVICES
            api = await _scrape(http, urls["api"])
            assert exposition.histogram_count(api["fleet_query_seconds"], route="/v1/summary", status="200") >= 2
            assert exposition.value(api["fleet_rollouts"], status="completed") == 1
            assert exposition.value(api["fleet_projection_poisoned_events"], projection="fleet") == 0
            assert api["fleet_log_bytes"].samples[0].value > 0

        # One log format: every line of every part is a JSON object with the same keys.
        for name in supervisor.parts:
            lines = _log_lines(supervisor.log_dir / f"{name}.log")
            assert lines, name
            for line in lines:
                assert {"at", "level", "logger", "msg", "service", "instance", "trace_id", "span_id"} <= set(line)
                assert line["service"] == name and line["instance"].startswith(f"{name}@"), line
        api_lines = _log_lines(supervisor.log_dir / "api.log")
        assert any(line["logger"].startswith("uvicorn") for line in api_lines), "uvicorn's own lines"
    finally:
        await sim.stop()
        await nc.close()
        await supervisor.stop()
