"""The query API's security (DESIGN §11): every route x every role gives the status the role table
says (the route list comes from the app, so a new route cannot be left out of this table);
CSRF-shaped and foreign-Host requests are refused; a revoked token stops working; forwarded
commands carry the caller's principal; the API's PostgreSQL role cannot write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from typer.testing import CliRunner

from fleet.cli import app as cli
from projections.api.app import create_app
from projections.api.auth import AuthPolicy, default_allowed_hosts
from projections.api.queries import ReadModels
from projections.main import all_projections
from projections.runner import create_pool, ensure_control, rebuild
from shared import pgroles, tokens
from shared.contract.catalog import COMMANDS
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.errors import Unavailable
from shared.eventlog import EventLog
from tests.integration.test_projections import append_history, running, wait_caught_up

BASE = "http://127.0.0.1:8080"
# The role table of DESIGN §11, written out here rather than imported from the code under test.
MAY = {"viewer": {"read"}, "operator": {"read", "command"}, "auditor": {"read", "audit"},
       "admin": {"read", "command", "audit", "admin"}}
# Every route of the app and the access it needs ("public": no token at all).
ACCESS = {
    ("GET", "/"): "public",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/metrics"): "read",
    ("GET", "/v1/summary"): "read",
    ("GET", "/v1/devices"): "read",
    ("GET", "/v1/devices/{device_id}"): "read",
    ("GET", "/v1/devices/{device_id}/history"): "read",
    ("GET", "/v1/changes"): "read",
    ("GET", "/v1/rollouts"): "read",
    ("GET", "/v1/rollouts/{rollout_id}"): "read",
    ("GET", "/v1/snapshots"): "read",
    ("GET", "/v1/sites"): "read",
    ("GET", "/v1/diff"): "read",
    ("GET", "/v1/diff/devices"): "read",
    ("GET", "/v1/projections"): "read",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/rollouts"): "command",
    ("POST", "/v1/rollouts/{rollout_id}/{action}"): "command",
    # every command of the contract, at its own path
    **{("POST", spec.http_path): "command" for spec in COMMANDS},
}
# What an allowed caller gets where it is not 200 (no rollout r-1 has been projected).
# (The diff routes need `from`: 400 shows the guard let the caller through.)
ALLOWED_STATUS = {("GET", "/v1/rollouts/{rollout_id}"): 404, ("GET", "/v1/diff"): 400,
                  ("GET", "/v1/diff/devices"): 400}
BODIES = {("POST", "/v1/rollouts"): {"snapshot_id": "s-1"}, ("POST", "/v1/rollouts/{rollout_id}/{action}"): {}}
CALLERS = ("anonymous", "garbage", "revoked", "viewer", "operator", "auditor", "admin")


def _normalise(path: str) -> str:
    return path.replace(":str}", "}").replace("{path:path}", "{path}")


class FakeRollout:
    """A real NATS responder on every command subject that records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    async def handle(self, msg: Msg) -> None:
        self.seen.append((msg.subject, dict(msg.headers or {}), json.loads(msg.data)))
        await msg.respond(b'{"ok": true, "events": [], "result": {"status": "paused"}}')


@pytest.fixture
async def served(eventlog: EventLog, database_url: str, nc: NATS) -> AsyncIterator[tuple[Any, FakeRollout, list[float]]]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    await append_history(eventlog, 10, rounds=1)
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    fake = FakeRollout()
    sub = await nc.subscribe("fleet.cmd.>", cb=fake.handle)
    now = [0.0]
    policy = AuthPolicy(tokens.TokenVerifier(nc, recheck=2.0, clock=lambda: now[0]), default_allowed_hosts(BASE))
    app = create_app(ReadModels(pool, eventlog), policy)
    try:
        yield app, fake, now
    finally:
        await sub.unsubscribe()
        await pool.close()


def _client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


async def _callers(issue_token: Callable[[str], Awaitable[str]], nc: NATS) -> dict[str, dict[str, str]]:
    out = {"anonymous": {}, "garbage": {"Authorization": "Bearer fpt_0011223344556677_not-the-right-secret"}}
    for role in MAY:
        out[role] = {"Authorization": f"Bearer {await issue_token(role)}"}
    revoked = await issue_token("admin")
    await tokens.revoke(nc, revoked.split("_")[1])
    out["revoked"] = {"Authorization": f"Bearer {revoked}"}
    return out


async def _name_of(nc: NATS, authorization: str) -> str:
    """The name on the token record behind an `Authorization: Bearer fpt_<id>_<secret>` value."""
    record = await tokens.get_record(nc, authorization.split("_")[1])
    assert record is not None
    return record.name


def _expected(access: str, caller: str, method: str, path: str) -> int:
    if access == "public":
        return 200
    if caller not in MAY:
        return 401
    if access not in MAY[caller]:
        return 403
    return ALLOWED_STATUS.get((method, path), 200)


async def test_every_route_for_every_role(served: tuple[Any, FakeRollout, list[float]], nc: NATS,
                                          issue_token: Callable[[str], Awaitable[str]]) -> None:
    app, fake, _ = served
    routes = {(method, _normalise(route.path)) for route in app.routes for method in getattr(route, "methods", ())
              if method not in ("HEAD", "OPTIONS") and not route.path.startswith("/schema")}
    assert routes == set(ACCESS), "a route was added or removed: put it in ACCESS with the access it needs"
    async with _client(app) as client:
        document = (await client.get("/openapi.json")).json()
        assert document["components"]["securitySchemes"]["bearer"] == {
            "type": "http", "scheme": "bearer", "bearerFormat": "fpt_<id>_<secret>",
            "description": document["components"]["securitySchemes"]["bearer"]["description"]}
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                access = ACCESS[(method.upper(), path)]
                assert (operation.get("security") == [{"bearer": []}]) == (access != "public"), (method, path)
                if access != "public":
                    assert {"401", "403"} <= set(operation["responses"]), (method, path)
        device = (await client.get("/v1/devices", headers=(await _callers(issue_token, nc))["viewer"])).json()
    device_id = device["items"][0]["device_id"]
    callers = await _callers(issue_token, nc)
    values = {"device_id": device_id, "rollout_id": "r-1", "action": "pause"}
    got, want = {}, {}
    async with _client(app) as client:
        for (method, path), access in sorted(ACCESS.items()):
            url = path.format(**values)
            for caller in CALLERS:
                if method == "GET":
                    response = await client.get(url, headers=callers[caller])
                else:
                    response = await client.post(url, json=BODIES.get((method, path), {}), headers=callers[caller])
                got[(method, path, caller)] = response.status_code
                want[(method, path, caller)] = _expected(access, caller, method, path)
                if response.status_code in (401, 403):
                    error = response.json()["error"]
                    assert error["code"] == ("unauthenticated" if response.status_code == 401 else "forbidden")
                    assert error["message"]
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    # Every command that got through was forwarded on behalf of the token's principal.
    assert not any("actor" in body for _, _, body in fake.seen)  # the body names no actor
    assert {h["Fleet-On-Behalf-Of"] for _, h, _ in fake.seen} == {
        f"{role}:{name}" for role, name in
        [(r, await _name_of(nc, callers[r]["Authorization"])) for r in ("operator", "admin")]}


async def test_metrics_can_be_made_public(eventlog: EventLog, database_url: str, nc: NATS) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        for public, status in ((True, 200), (False, 401)):
            policy = AuthPolicy(tokens.TokenVerifier(nc), default_allowed_hosts(BASE), metrics_public=public)
            async with _client(create_app(ReadModels(pool, eventlog), policy)) as client:
                assert (await client.get("/metrics")).status_code == status
                assert (await client.get("/v1/summary")).status_code == 401
    finally:
        await pool.close()


async def test_csrf_shaped_and_foreign_host_requests_are_refused(
        served: tuple[Any, FakeRollout, list[float]], issue_token: Callable[[str], Awaitable[str]]) -> None:
    app, fake, _ = served
    auth = {"Authorization": f"Bearer {await issue_token('operator')}"}
    url = "/v1/rollouts/r-1/pause"
    async with _client(app, **auth) as client:
        for headers, content in (({"Content-Type": "text/plain"}, b'{"reason": "x"}'),
                                 ({"Content-Type": "application/x-www-form-urlencoded"}, b"reason=x"),
                                 ({"Content-Type": "multipart/form-data; boundary=x"}, b""),
                                 ({}, b"")):
            response = await client.post(url, content=content, headers=headers)
            assert response.status_code == 415, (headers, response.text)
            assert response.json()["error"]["code"] == "invalid"
        response = await client.post(url, json={}, headers={"Origin": "http://evil.example"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
        response = await client.post(url, json={}, headers={"Origin": "http://127.0.0.1:8081"})
        assert response.status_code == 403
        assert (await client.post(url, json={}, headers={"Origin": BASE})).status_code == 200
        assert (await client.post(url, json={"reason": "checked"})).status_code == 200
        # A body cannot choose the actor: the principal is the token's.
        response = await client.post(url, json={"actor": "operator:mallory"})
        assert response.status_code == 400 and "actor" in response.json()["error"]["message"]
        for path in ("/v1/summary", "/metrics", url):
            response = await client.request("GET" if path != url else "POST", path, json={} if path == url else None,
                                            headers={"Host": "evil.example"})
            assert response.status_code == 400, path
            assert response.json()["error"] == {"code": "invalid", "field": "host",
                                                "message": response.json()["error"]["message"]}
        assert (await client.get("/v1/summary", headers={"Host": "localhost:8080"})).status_code == 200
        assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status_code == 200  # a probe
    assert len(fake.seen) == 2  # only the two accepted commands reached the service


async def test_a_revoked_token_stops_working(served: tuple[Any, FakeRollout, list[float]], nc: NATS,
                                             issue_token: Callable[[str], Awaitable[str]]) -> None:
    app, _, now = served
    token = await issue_token("viewer")
    async with _client(app, Authorization=f"Bearer {token}") as client:
        assert (await client.get("/v1/summary")).status_code == 200
        await tokens.revoke(nc, token.split("_")[1])
        assert (await client.get("/v1/summary")).status_code == 200  # within the recheck interval
        now[0] += 2.5
        response = await client.get("/v1/summary")
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
        secret_guess = token.rsplit("_", 1)[0] + "_" + "x" * 43
        assert (await client.get("/v1/summary", headers={"Authorization": f"Bearer {secret_guess}"})).status_code == 401


async def fleet(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in a thread (it runs its own event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    return result.exit_code, result.stdout


async def test_token_cli_creates_lists_and_revokes(nats_server: EmbeddedNats, nc: NATS, tmp_path: Path) -> None:
    env = {"FLEET_NATS_URL": nats_server.url, "FLEET_DATA_DIR": str(tmp_path)}
    code, out = await fleet("token", "create", "--role", "auditor", "--name", "carol", "--json", env=env)
    assert code == 0, out
    created = json.loads(out)
    assert created["role"] == "auditor" and created["created_by"].startswith("admin:") and "hash" not in created
    record = await tokens.get_record(nc, created["id"])
    assert record is not None and record.hash.startswith("$argon2id$") and created["token"] not in record.hash
    assert tokens.secret_matches(record, created["token"].split("_", 2)[2])
    code, out = await fleet("token", "create", "--role", "auditor", "--name", "carol", "--json", env=env)
    assert code == 4 and json.loads(out)["error"]["field"] == "name"
    code, out = await fleet("token", "create", "--role", "root", "--name", "dave", "--json", env=env)
    assert code == 2 and json.loads(out)["error"]["field"] == "role"
    code, out = await fleet("token", "list", "--json", env=env)
    assert "carol" in [t["name"] for t in json.loads(out)] and "token" not in out and "argon2" not in out
    code, out = await fleet("token", "revoke", "carol", "--json", env=env)
    assert code == 0 and json.loads(out)["revoked"] is True
    assert await tokens.get_record(nc, created["id"]) is None
    code, out = await fleet("token", "revoke", "carol", "--json", env=env)
    assert code == 3


async def test_the_api_role_reads_but_cannot_write(postgres: EmbeddedPostgres, eventlog: EventLog,
                                                   tmp_path: Path) -> None:
    await postgres.create_database("roles_test")
    passfile = tmp_path / "pgpass"
    owner_url, reader_url = await pgroles.ensure_roles(postgres.dsn(), "roles_test", passfile)
    assert passfile.stat().st_mode & 0o777 == 0o600
    assert "@" in owner_url and ":" not in owner_url.split("//", 1)[1].split("@", 1)[0]  # no password in URLs
    owner = await create_pool(owner_url, min_size=1, max_size=3, passfile=str(passfile))
    await append_history(eventlog, 5, rounds=1)
    try:
        async with running(owner, eventlog):  # the runner creates the schemas as the owner
            await wait_caught_up(owner, eventlog)
        reader = await asyncpg.connect(reader_url, passfile=str(passfile))
        try:
            assert await reader.fetchval("SELECT count(*) FROM rm_fleet.devices") == 5
            assert await reader.fetchval("SELECT count(*) FROM projection_status") == 2
            for statement in ("INSERT INTO projection_status (name, version) VALUES ('x', 1)",
                              "UPDATE rm_fleet.devices SET site_id = 'x'",
                              "DELETE FROM rm_changes.changes",
                              "DROP TABLE rm_fleet.devices",
                              "CREATE TABLE public.mine (x int)",
                              "CREATE SCHEMA mine",
                              # the runner's start-up lock (held, it hung a restarted runner)
                              "SELECT pg_advisory_lock(724201)", "SELECT pg_try_advisory_lock(724201)",
                              "SELECT pg_advisory_xact_lock(1)", "SELECT pg_try_advisory_lock_shared(1, 2)"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await reader.execute(statement)
            await reader.execute("SELECT pg_advisory_unlock_all()")  # what asyncpg's pool runs on release
            super_ = await reader.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert super_ is False
            # A rebuild swaps in new schemas: still readable, still read-only.
            fleet_projection = next(p for p in all_projections() if p.name == "fleet")
            await rebuild(owner, eventlog, fleet_projection)
            assert await reader.fetchval("SELECT count(*) FROM rm_fleet.devices") == 5
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute("UPDATE rm_fleet.devices SET site_id = 'x'")
        finally:
            await reader.close()
        owns = await owner.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert owns is False
    finally:
        await owner.close()


async def test_a_held_start_up_lock_is_waited_for_with_a_bound_and_a_log_line(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Whoever holds the runner's start-up lock, a starting runner says so and gives up after its
    bound (Unavailable: retried with backoff) instead of hanging."""
    holder, starter = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(724201)")
        with pytest.raises(Unavailable, match="start-up lock"):
            await ensure_control(starter, lock_timeout=0.5)
        assert any("start-up lock, held by pid" in r.getMessage() for r in caplog.records)
        await holder.execute("SELECT pg_advisory_unlock(724201)")
        await ensure_control(starter, lock_timeout=0.5)  # free again: it goes ahead
    finally:
        await holder.close()
        await starter.close()


async def test_public_readiness_says_ok_or_not_and_deep_json_is_a_400(
        served: tuple[Any, FakeRollout, list[float]], eventlog: EventLog,
        issue_token: Callable[[str], Awaitable[str]]) -> None:
    """A public /readyz (any Host, no token) gets ok / not ok and nothing else, even when the
    database is down; a reader gets the details. A body nested 100,000 deep is a 400."""
    from shared.embedded import free_port

    app, _, _ = served
    operator = {"Authorization": f"Bearer {await issue_token('operator')}"}
    deep = "[" * 100_000 + "]" * 100_000
    async with _client(app, **operator) as client:
        refused = await client.post("/v1/rollouts", content=f'{{"snapshot_id": "s", "target": {deep}}}',
                                    headers={"Content-Type": "application/json"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid"
    pool = await create_pool(f"postgresql://nobody:x@127.0.0.1:{free_port()}/none", min_size=0, max_size=1)
    try:
        down = create_app(ReadModels(pool, eventlog), app.state.auth)
        async with _client(down, Host="10.1.2.3:8080") as client:
            public = await client.get("/readyz")
        assert (public.status_code, public.json()) == (503, {"ok": False, "detail": {}})
        async with _client(down, Authorization=f"Bearer {await issue_token('viewer')}") as client:
            detailed = await client.get("/readyz")
        assert detailed.status_code == 503 and detailed.json()["error"]["code"] == "unavailable"
    finally:
        await pool.close()
