"""The running services against the published contract: `$SRV.INFO` lists every command of the
catalog as its own endpoint naming its schemas, each service routes exactly the catalog's types,
and every command works over HTTP with the same body and the same refusals (`error.field`) as over
NATS, while the OpenAPI document describes it with the published definitions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from projections.api.app import create_app
from projections.api.auth import AuthPolicy, default_allowed_hosts
from projections.api.queries import ReadModels
from projections.runner import create_pool
from shared import tokens
from shared.commands import CommandClient
from shared.contract import schema
from shared.contract.catalog import COMMANDS
from shared.eventlog import EventLog
from tests.integration.test_hostile_input import services

__all__ = ["services"]  # the fixture: the four services, running

BASE = "http://127.0.0.1:8080"


async def test_srv_info_lists_every_command_with_its_schemas(services: dict[str, dict[str, Any]], nc: NATS) -> None:
    for service, routed in services.items():  # the four services running here (the authority: test_authority)
        info = json.loads((await nc.request(f"$SRV.INFO.fleet-{service}", b"", timeout=5)).data)
        endpoints = {e["name"]: e for e in info["endpoints"]}
        published = {spec.name: spec for spec in COMMANDS if spec.service == service}
        assert sorted(endpoints) == sorted(published), service
        for name, spec in published.items():
            assert endpoints[name]["subject"] == spec.subject
            assert endpoints[name]["metadata"]["request_schema"] == f"commands/{spec.key}.json"
            assert endpoints[name]["metadata"]["reply_schema"] == f"replies/{spec.key}.json"
        # one definition: the service decodes each command into the catalog's type
        assert routed == {name: spec.command for name, spec in published.items()}


@pytest.fixture
async def api(services: dict[str, dict[str, Any]], eventlog: EventLog, database_url: str, nc: NATS,
              issue_token: Callable[[str], Awaitable[str]]) -> AsyncIterator[httpx.AsyncClient]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    policy = AuthPolicy(tokens.TokenVerifier(nc), default_allowed_hosts(BASE))
    app: Any = create_app(ReadModels(pool, eventlog), policy)
    token = await issue_token("operator")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            yield client
    finally:
        await pool.close()


async def test_every_command_over_http_answers_as_over_nats(api: httpx.AsyncClient, nc: NATS,
                                                             eventlog: EventLog) -> None:
    async def post(service: str, command: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        response = await api.post(f"/v1/commands/{service}/{command}", json=body)
        assert response.status_code == status, response.text
        answer: dict[str, Any] = response.json()
        return answer

    added = await post("registry", "add_site", {"site_id": "s1", "labels": {"tier": "edge"}})
    assert added["ok"] and added["result"]["status"] == "active" and added["events"]
    imported = await post("registry", "import_devices", {"devices": [
        {"device_id": "d1", "site_id": "s1"}, {"device_id": "d2", "site_id": "s1"},
        {"device_id": "bad id", "site_id": "s1"}]})
    assert (imported["result"]["added"], [r["field"] for r in imported["result"]["refused"]]) == (2, ["device_id"])
    created = await post("snapshot", "create", {"name": "base", "config": {"gain": 1.5}})
    snapshot_id = created["result"]["snapshot_id"]
    dry = await post("rollout", "start", {"snapshot_id": snapshot_id, "waves": [50, 100], "dry_run": True})
    assert dry["result"]["dry_run"] and dry["result"]["wave"] == 1
    refused = await post("drift", "acknowledge", {"device_id": "d1"}, 409)  # d1 has not drifted
    assert refused["error"]["code"] == "conflict" and refused["error"]["field"] == "device_id"
    assert (await post("registry", "list_devices", {"site_id": "s1"}))["result"]["total"] == 2
    # The same refusal, naming the same field, over HTTP and over NATS; nothing written.
    before = await eventlog.last_stream_seq()
    client = CommandClient(nc)
    for service, command, body, field in (
        ("registry", "add_site", {"site_id": "bad id"}, "site_id"),
        ("registry", "add_site", {"site_id": "s2", "colour": "red"}, "colour"),
        ("rollout", "start", {"snapshot_id": snapshot_id, "waves": "10,100"}, "waves"),
        ("rollout", "start", {"snapshot_id": snapshot_id, "metrics": [{"metric": "e", "value": "x"}]},
         "metrics[0].value"),
        ("snapshot", "create", {"name": "x"}, "config"),
    ):
        over_http = await post(service, command, body, 400)
        over_nats = await client.request(service, command, body)
        assert over_http["error"]["field"] == field == (over_nats.error.field if over_nats.error else None)
        assert over_http["error"]["code"] == "invalid"
    assert await eventlog.last_stream_seq() == before


async def test_openapi_describes_each_command_with_the_published_definitions(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    published = schema.export()
    for spec in COMMANDS:
        operation = document["paths"][spec.http_path]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.removeprefix("#/components/schemas/contract.")
        command_file = published[f"commands/{spec.key}.json"]
        assert command_file["$ref"] == f"#/$defs/{name}"
        as_published = json.loads(json.dumps(command_file["$defs"][name]).replace(
            "#/$defs/", "#/components/schemas/contract."))
        assert components[f"contract.{name}"] == as_published
        assert {"200", "400", "404", "409"} <= set(operation["responses"])
