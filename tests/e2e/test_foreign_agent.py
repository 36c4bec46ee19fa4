"""A device agent that is not Python and not this repository's code (tests/e2e/foreign_agent.js:
Node, the npm `nats` client and the stock RFC 8785 package `canonicalize`) passes the committed
config-hash vectors, converges after a rollout of a config holding floats and non-ASCII text,
and is never reported drifted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from shared.configs import config_hash, legacy_config_hash
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.subjects import event_subject
from tests.e2e.conftest import FAST, Stack
from tests.node import NODE, node_modules

ROOT = Path(__file__).resolve().parents[2]
FLOATY: dict[str, Any] = {"gain": 1.0, "ratio": 0.1, "limit": 1e21, "site name": "Zürich ✓", "offset": -0.0,
                          "bands": [2.0, 0.5, {"label": "Straße 😀", "weight": 3.0e-7}], "count": 3}


async def lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        into.append(json.loads(line))


async def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not reached: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_a_node_agent_converges_on_floats_and_unicode_and_is_never_drifted(
        stack: Stack, nc: NATS, eventlog: EventLog, nats_server: EmbeddedNats,
        creds: Callable[[str, str], str], tmp_path: Path) -> None:
    assert config_hash(FLOATY) != legacy_config_hash(FLOATY)  # the config is one where the forms differ
    modules = node_modules("nats@2", "canonicalize@2")
    await stack.client.send("registry", "add_site", {"site_id": "s1"})
    await stack.client.send("registry", "add_device", {"device_id": "node-dev", "site_id": "s1"})
    proc = await asyncio.create_subprocess_exec(
        str(NODE), str(Path(__file__).with_name("foreign_agent.js")), nats_server.url, creds("device", "node-dev"),
        "node-dev", "s1", str(tmp_path), str(ROOT / "docs" / "contract" / "config-hash-vectors.json"),
        str(int(FAST["heartbeat_interval"] * 1000)),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "NODE_PATH": str(modules)})
    assert proc.stdout is not None
    said: list[dict[str, Any]] = []
    reader = asyncio.create_task(lines(proc.stdout, said))
    try:
        await until(lambda: any("started" in s or "fatal" in s for s in said), "the Node agent started")
        assert [s["vectors"] for s in said if "vectors" in s] == [[]], said  # every vector passes with `canonicalize`

        reply = await stack.client.send("snapshot", "create", {"name": "floaty", "config": FLOATY})
        snapshot = str(reply.result["snapshot_id"])
        await stack.client.send("rollout", "start", {"rollout_id": "r-floaty", "snapshot_id": snapshot, "target": ""})
        done = await stack.wait_rollout("r-floaty", ("completed", "failed", "paused", "rolled_back"))
        assert done["status"] == "completed", done
        applied = [s for s in said if "applied" in s]
        assert applied and applied[-1]["applied"] == snapshot
        assert applied[-1]["hash"] == applied[-1]["desired_hash"] == config_hash(FLOATY)

        # heartbeats go on for twice the drift grace: no drift is ever recorded for the device
        heartbeats = await nc.subscribe("fleet.hb.s1.node-dev")
        for _ in range(int(2 * FAST["drift_grace"] / FAST["heartbeat_interval"]) + 2):
            await heartbeats.next_msg(10)
        recorded, _ = await eventlog.load(event_subject("observed", "node-dev"))
        kinds = [r.envelope.type for r in recorded]
        assert "DeviceCameOnline" in kinds and "DriftBegan" not in kinds, kinds
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        reader.cancel()
