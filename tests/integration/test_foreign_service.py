"""A foreign internal service (Node, the npm `nats` and `ajv` packages, tests/integration/
foreign_service.js) drives the running services from the published contract alone: it builds every
command against its JSON Schema, validates every reply and every event it reads from the log
against theirs, and finds that a body the schemas refuse is refused by the service naming the
same field."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from shared.auth.authority import inbox_of_creds
from shared.contract.catalog import COMMANDS
from shared.embedded import EmbeddedNats
from tests.conftest import Creds
from tests.integration.test_hostile_input import services
from tests.node import NODE, node_modules

__all__ = ["services"]  # the fixture: the four services, running

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"
PACKAGES = ("nats@2", "ajv@8", "ajv-formats@3", "@asyncapi/specs@6")


async def test_a_service_in_node_speaks_the_published_contract(
        services: dict[str, dict[str, Any]], nc: NATS, nats_server: EmbeddedNats, creds: Creds) -> None:
    modules = node_modules(*PACKAGES)
    operator, auditor = creds("operator", "node-ops"), creds("auditor", "node-audit")
    proc = await asyncio.create_subprocess_exec(  # each identity with its own inbox prefix (docs/contract.md)
        str(NODE), str(Path(__file__).with_name("foreign_service.js")), nats_server.url,
        operator, inbox_of_creds(operator) or "_INBOX", auditor, inbox_of_creds(auditor) or "_INBOX", str(CONTRACT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, (out.decode()[-3000:], err.decode()[-2000:])
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["problems"] == []
    counts = report["counts"]
    assert counts["replies"] == counts["commands"]
    # every command of the four services running here (the authority's: tests/integration/test_authority.py)
    assert report["sent"] == sorted(spec.key for spec in COMMANDS if spec.service in services)
    assert counts["refusals"] == 10
    assert counts["events"] > counts["log"] > 10  # the replies' events, then the whole log, validated
    assert {"SiteAdded", "DeviceAdded", "SnapshotCreated", "RolloutStarted",
            "RolloutPaused", "RolloutAborted", "SnapshotRetired"} <= set(report["event_types"])


ASYNCAPI_CHECK = """
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const schema = require("@asyncapi/specs/schemas/3.0.0-without-$id.json");
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
const ok = ajv.validate(schema, require(process.argv[1]));
console.log(JSON.stringify({ ok, errors: (ajv.errors || []).slice(0, 5) }));
"""


async def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    """Checked against the AsyncAPI initiative's own JSON Schema of version 3.0.0 (npm @asyncapi/specs)."""
    modules = node_modules(*PACKAGES)
    proc = await asyncio.create_subprocess_exec(
        str(NODE), "-e", ASYNCAPI_CHECK, str(CONTRACT / "asyncapi.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"ok": True, "errors": []}
