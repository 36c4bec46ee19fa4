"""`fleet projections status|rebuild`: how the read models stand, and rebuilding them from the log."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, run, settings
from fleet.cli.query import api_get
from shared.config import Settings
from shared.errors import Invalid

app = typer.Typer(help="Read models: status, rebuild from the log.", no_args_is_help=True)


@app.command("status")
def status(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Each projection: checkpoint, lag, rate, state, and the events it skipped as poison."""
    conf = settings(ctx)

    def render(answer: dict[str, Any]) -> None:
        table = Table("projection", "state", "checkpoint", "lag", "events/s", "applied", "unknown skipped",
                      "poisoned", "version", "rebuilt")
        for p in answer["items"]:
            poisoned = f"[red]{p['poisoned']}[/red]" if p["poisoned"] else "0"
            table.add_row(p["name"], p["state"], str(p["checkpoint"]), "?" if p["lag"] is None else str(p["lag"]),
                          f"{p['rate']:.0f}", str(p["applied"]), str(p["skipped_unknown"]), poisoned,
                          str(p["version"]), p["rebuilt_at"] or "-")
        console.print(table)
        for p in answer["items"]:
            for event in p["poison"]:
                console.print(f"[red]{p['name']} skipped event {event['seq']}[/red] ({event['type']} "
                              f"{event['aggregate']} {event['aggregate_id']}): {event['error']}")
            if p["poisoned"] > len(p["poison"]):
                console.print(f"[red]{p['name']}: {p['poisoned'] - len(p['poison'])} more skipped[/red]")
        console.print(f"log last sequence: {answer['log_last_seq']}")

    emit(run(api_get(conf, "/v1/projections"), json_out=json_out), json_out=json_out, render=render)


@app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One projection (default: all)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Replay the log from the start into fresh tables and swap them in atomically; queries keep
    answering from the old tables meanwhile. Talks to NATS and PostgreSQL directly."""
    conf = settings(ctx)
    result = run(_rebuild(conf, name, quiet=json_out), json_out=json_out)
    emit(result, json_out=json_out,
         render=lambda r: console.print("\n".join(f"{k}: rebuilt to sequence {v}" for k, v in r.items())))


async def _rebuild(conf: Settings, name: str | None, *, quiet: bool) -> dict[str, int]:
    from projections.main import all_projections, runner_for
    from projections.runner import create_pool
    from projections.runner import rebuild as rebuild_projection
    from shared.connection import connect_nats
    from shared.eventlog import EventLog

    projections = {p.name: p for p in all_projections()}
    if name is not None and name not in projections:
        raise Invalid(f"no projection {name!r}; choose one of {', '.join(projections)}", field="name")
    if not conf.database_url:
        raise Invalid("no database: set FLEET_DATABASE_URL or run `fleet up`", field="database_url")
    nc = await connect_nats(conf, "cli", connect_for=5.0)
    pool = await create_pool(conf.database_url, min_size=1, max_size=3, passfile=conf.database_passfile)
    out: dict[str, int] = {}
    try:
        log = EventLog(nc)
        for projection in ([projections[name]] if name else projections.values()):
            hook = runner_for(pool, log, projection).after_batch

            def progress(seq: int, target: int, label: str = projection.name) -> None:
                if not quiet and (seq == target or seq % 50_000 < 1000):
                    console.print(f"{label}: {seq}/{target}", highlight=False)

            out[projection.name] = await rebuild_projection(pool, log, projection, after_batch=hook,
                                                            progress=progress)
    finally:
        await pool.close()
        await nc.close()
    return out
