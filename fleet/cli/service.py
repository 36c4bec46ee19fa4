"""`fleet service NAME`: run one Fleetplane part in the foreground (what `fleet up` supervises).

Each part exposes `async def run(settings: Settings) -> None` in its `main` module; it serves
until cancelled (SIGINT/SIGTERM)."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import cast

import typer

from fleet.cli.common import run, settings, until_signalled
from shared import metrics, telemetry
from shared.config import Settings
from shared.errors import Invalid
from shared.lease import instance_name
from shared.logs import setup_logging

# part name -> module with `run(settings)`
PARTS: dict[str, str] = {
    "audit": "services.audit.main",
    "authority": "services.authority.main",
    "registry": "services.registry.main",
    "snapshot": "services.snapshot.main",
    "rollout": "services.rollout.main",
    "drift": "services.drift.main",
    "projections": "projections.main",
    "api": "projections.api.main",
}


def service(
    ctx: typer.Context,
    name: str = typer.Argument(..., help=f"One of: {', '.join(PARTS)}."),
) -> None:
    """Run one service in the foreground until interrupted."""
    module_name = PARTS.get(name)
    if module_name is None:
        from fleet.cli.common import fail

        fail(Invalid(f"unknown service {name!r}; choose one of {', '.join(PARTS)}", field="name"))
    conf = settings(ctx, local=True)
    setup_logging(conf.log_level, name, instance_name(name, conf.instance))
    telemetry.setup(name)
    metrics.PART.labels(part=name).set(1)
    if conf.metrics_port:
        metrics.serve(name, conf.metrics_port, conf.metrics_host, certfile=conf.metrics_tls_cert,
                      keyfile=conf.metrics_tls_key)
    entry = cast(Callable[[Settings], Awaitable[None]], importlib.import_module(module_name).run)
    run(until_signalled(entry(conf)))
