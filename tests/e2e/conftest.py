"""A whole Fleetplane on one test NATS: registry, snapshot, drift and rollout services (each its
own `run(settings)`, as `fleet service NAME` runs them) and a simulated fleet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from services.drift.main import run as run_drift
from services.registry.main import run as run_registry
from services.rollout.main import run as run_rollout
from services.snapshot.main import run as run_snapshot
from shared.cluster import ensure_all
from shared.commands import CommandClient
from shared.config import Settings, load_settings
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog

FAST = {"heartbeat_interval": 0.5, "offline_after": 4, "drift_grace": 1.5, "reconcile_backoff": 0.3}


@dataclass
class Stack:
    """Running services and a client to command them."""

    settings: Settings
    client: CommandClient
    creds: Callable[[str, str], str]
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, name: str, run: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
        """Run a service under its own identity (DESIGN §11), as `fleet up` does."""
        own = msgspec.structs.replace(self.settings, nats_creds=self.creds(f"service:{name}", name))
        self.tasks[name] = asyncio.create_task(run(own), name=name)

    async def stop(self, name: str) -> None:
        task = self.tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def ready(self, service: str, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            task = self.tasks.get(service)
            if task is not None and task.done():
                task.result()  # raises what stopped the service
                raise AssertionError(f"{service} stopped")
            try:
                await self.client.nc.request(f"$SRV.PING.fleet-{service}", b"", timeout=0.5)
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def wait_rollout(self, rollout_id: str, statuses: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            reply = await self.client.send("rollout", "get", {"rollout_id": rollout_id})
            if reply.result["status"] in statuses:
                result: dict[str, Any] = reply.result
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"rollout {rollout_id} stuck: {reply.result}")
            await asyncio.sleep(0.2)


@pytest.fixture
async def stack(nats_server: EmbeddedNats, nc: NATS, eventlog: EventLog, tmp_path: Path,
                creds: Callable[[str, str], str]) -> AsyncIterator[Stack]:
    settings = load_settings({"nats_url": nats_server.url, "data_dir": str(tmp_path), **FAST}, env={})
    await ensure_all(nc, settings)  # admin creates what services only use
    stack = Stack(settings, CommandClient(nc, actor="operator:test", timeout=30), creds)
    for name, run in (("registry", run_registry), ("snapshot", run_snapshot), ("drift", run_drift),
                      ("rollout", run_rollout)):
        stack.start(name, run)
    for name in ("registry", "snapshot", "rollout", "drift"):
        await stack.ready(name)
    yield stack
    for name in list(stack.tasks):
        await stack.stop(name)
