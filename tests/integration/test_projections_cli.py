"""The query CLI against a served API and the audit export against the log: `fleet where`,
`fleet changes`, `fleet degraded`, `fleet history`, `fleet projections status|rebuild`,
`fleet audit export`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from fleet.cli import app
from projections.api.app import create_app
from projections.api.auth import AuthPolicy, default_allowed_hosts
from projections.api.queries import ReadModels
from projections.fleet.filters import NO_PROBLEM, problem_rank
from projections.fleet.model import DeviceRow
from projections.runner import create_pool
from shared.embedded import EmbeddedNats, free_port
from shared.envelope import decode_envelope, seal
from shared.eventlog import EventLog
from shared.events import observed
from shared.tokens import TokenVerifier
from tests.integration.test_projections import append_history, running, wait_caught_up


@pytest.fixture
async def served(eventlog: EventLog, database_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """The API on a free port; the CLI finds its token in FLEET_API_TOKEN (see `token_env`)."""
    pool: asyncpg.Pool = await create_pool(database_url, min_size=1, max_size=8)
    await append_history(eventlog, 20, rounds=1)
    stuck = observed.DeviceStuck(device_id="dev-0000002", attempts=5)
    await eventlog.append(stuck.subject, [seal(stuck, actor="service:drift", at=datetime.now(UTC))], None)
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    port = free_port()
    auth = AuthPolicy(TokenVerifier(eventlog.nc), default_allowed_hosts(f"http://127.0.0.1:{port}"))
    server = uvicorn.Server(uvicorn.Config(create_app(ReadModels(pool, eventlog), auth), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", pool
    finally:
        server.should_exit = True
        await task
        await pool.close()


async def fleet(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in a thread (it runs its own event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    return result.exit_code, result.stdout


async def test_query_commands(served: tuple[str, asyncpg.Pool], tmp_path: Path, nats_server: EmbeddedNats,
                              database_url: str, issue_token: Callable[[str], Awaitable[str]]) -> None:
    url, _ = served
    env = {"FLEET_API_URL": url, "FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url,
           "FLEET_DATABASE_URL": database_url}
    code, out = await fleet("where", "--json", env=env)
    assert code == 6 and json.loads(out)["error"]["code"] == "unauthenticated"
    assert "FLEET_API_TOKEN" in json.loads(out)["error"]["message"]
    env["FLEET_API_TOKEN"] = await issue_token("viewer")
    code, out = await fleet("where", "--json", env=env)
    assert code == 0, out
    assert json.loads(out)["summary"]["totals"]["total"] == 20
    code, out = await fleet("where", "--site", "site-001", "--devices", "--json", env=env)
    where = json.loads(out)
    assert {d["site_id"] for d in where["devices"]} == {"site-001"}
    code, out = await fleet("where", "--at", "3", "--json", env=env)
    assert json.loads(out)["summary"]["historical"] is True
    code, out = await fleet("where", env=env)
    assert code == 0 and "What runs where" in out
    code, out = await fleet("where", "-o", "yaml", env=env)  # the same answer as YAML (-o json = --json)
    assert code == 0 and yaml.safe_load(out)["summary"]["totals"]["total"] == 20

    code, out = await fleet("degraded", "--json", env=env)
    assert code == 0, out
    degraded = json.loads(out)["devices"]
    assert "dev-0000002" in [d["device_id"] for d in degraded]
    ranks = [problem_rank(msgspec.convert(d, DeviceRow)) for d in degraded]
    assert ranks == sorted(ranks) and NO_PROBLEM not in ranks  # worst first, by the one rule

    code, out = await fleet("changes", "--from", "2000-01-01T00:00:00Z", "--device", "dev-0000002", "--json", env=env)
    assert code == 0, out
    changes = json.loads(out)["changes"]
    assert changes[-1]["summary"] == "device dev-0000002 stuck after 5 reconcile attempts"
    assert [c["seq"] for c in changes] == sorted(c["seq"] for c in changes)
    code, out = await fleet("history", "dev-0000002", "--json", env=env)
    assert json.loads(out)["changes"] == changes
    code, out = await fleet("history", "nobody", env=env)
    assert code == 3
    code, out = await fleet("changes", "--since", "forever", "--json", env=env)
    assert code == 2
    assert json.loads(out)["error"]["field"] == "since"

    code, out = await fleet("projections", "status", "--json", env=env)
    assert code == 0, out
    assert {p["name"]: p["lag"] for p in json.loads(out)["items"]} == {"fleet": 0, "changes": 0}
    code, out = await fleet("projections", "rebuild", "fleet", "--json", env=env)
    assert code == 0, out
    code, out = await fleet("projections", "status", "--json", env=env)
    assert {p["name"]: p["generation"] for p in json.loads(out)["items"]}["fleet"] == 2

    code, out = await fleet("where", "--json", env={**env, "FLEET_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert code == 5


async def test_audit_export_writes_the_log_as_json_lines(eventlog: EventLog, tmp_path: Path,
                                                         nats_server: EmbeddedNats) -> None:
    head = await append_history(eventlog, 5, rounds=0)
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url}
    out = tmp_path / "audit.jsonl"
    code, text = await fleet("audit", "export", "--out", str(out), "--json", env=env)
    assert code == 0, text
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == head
    stored = [m async for m in eventlog.replay_raw(1, head)]
    assert [(line["seq"], line["subject"], line["body"].encode()) for line in lines] == stored  # exact bytes
    expected = [r.envelope async for r in eventlog.replay(1, head)]

    def ids(text: str) -> list[str]:
        return [decode_envelope(json.loads(line)["body"].encode()).id for line in text.splitlines()]

    code, text = await fleet("audit", "export", "--from", "3", "--to", "5", env=env)
    assert ids(text) == [e.id for e in expected[2:5]]
    middle = expected[4].at
    code, text = await fleet("audit", "export", "--from", middle, "--to", middle, env=env)
    assert ids(text) == [expected[4].id]
    code, text = await fleet("audit", "export", "--from", "yesterday", env=env)
    assert code == 2


async def test_a_message_that_is_no_event_is_skipped_shown_and_survives_a_rebuild(
    served: tuple[str, asyncpg.Pool], eventlog: EventLog, tmp_path: Path, nats_server: EmbeddedNats,
    database_url: str, issue_token: Callable[[str], Awaitable[str]],
) -> None:
    """23 bytes of non-JSON on `fleet.evt.*` once stopped both projections for good (and every
    rebuild): now each records it, skips it, goes on, and says so."""
    url, pool = served
    env = {"FLEET_API_URL": url, "FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url,
           "FLEET_DATABASE_URL": database_url, "FLEET_API_TOKEN": await issue_token("viewer")}
    ack = await eventlog.nc.jetstream().publish("fleet.evt.device.junk", b"this is not json at all")
    came = observed.DeviceWentOffline(device_id="dev-0000005", last_seen="2026-11-28T00:00:00.000000Z")
    await eventlog.append(came.subject, [seal(came, actor="service:drift", at=datetime.now(UTC))], None)
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    async with pool.acquire() as conn:
        online = await conn.fetchval("SELECT online FROM rm_fleet.devices WHERE device_id = 'dev-0000005'")
    assert online is False  # the event after the junk was applied

    code, out = await fleet("projections", "status", "--json", env=env)
    assert code == 0, out
    items = {p["name"]: p for p in json.loads(out)["items"]}
    for name in ("fleet", "changes"):
        assert (items[name]["state"], items[name]["lag"], items[name]["poisoned"]) == ("running", 0, 1)
        assert items[name]["poison"][0]["seq"] == ack.seq and "not an event envelope" in items[name]["poison"][0]["error"]
    code, out = await fleet("projections", "status", env=env)
    assert f"fleet skipped event {ack.seq}" in out
    async with httpx.AsyncClient(base_url=url) as http:
        public = await http.get("/readyz")
        ready = await http.get("/readyz", headers={"Authorization": f"Bearer {env['FLEET_API_TOKEN']}"})
    assert (public.status_code, public.json()) == (200, {"ok": True, "detail": {}})  # details behind the read role
    assert ready.status_code == 200
    assert ready.json()["detail"]["warnings"]["changes"]["poisoned"] == 1

    code, out = await fleet("projections", "rebuild", "--json", env=env)
    assert code == 0, out
    code, out = await fleet("projections", "status", "--json", env=env)
    assert {p["name"]: (p["poisoned"], p["generation"]) for p in json.loads(out)["items"]} == {
        "fleet": (1, 2), "changes": (1, 2)}
