"""`fleet demo`: the operator story of `make demo` (see fleet/demo.py)."""

from __future__ import annotations

import shutil

import msgspec
import typer

from fleet.cli.common import console, run, settings
from fleet.demo import Demo, default_data_dir


def demo(
    ctx: typer.Context,
    devices: int = typer.Option(2000, "--devices", help="Simulated devices."),
    sites: int = typer.Option(20, "--sites", help="Simulated plants (sites)."),
    exit_: bool = typer.Option(False, "--exit", help="Stop everything at the end instead of keeping the dashboard up."),
    fresh: bool = typer.Option(True, "--fresh/--reuse", help="Start from an empty data dir (default)."),
) -> None:
    """Run Fleetplane here and tell the story of a day with it, with real answers."""
    conf = settings(ctx, local=True)
    root_obj = ctx.find_root().obj or {}
    if not root_obj.get("data_dir"):
        conf = msgspec.structs.replace(conf, data_dir=str(default_data_dir()))
    if fresh and conf.data_path.exists():
        shutil.rmtree(conf.data_path)
    conf = msgspec.structs.replace(conf, nats_url=None, database_url=None, api_url=None)
    code = run(Demo(conf, devices, sites, console).run(keep_running=not exit_))
    raise typer.Exit(code)


__all__ = ["demo"]
