"""`fleet snapshot ...`: create immutable snapshots, show, list, diff, retire, mark known-good."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, reply_json, run, send, settings
from fleet.cli.registry import add_row
from shared.contract.snapshot import (
    CreateSnapshot,
    DiffSnapshots,
    GetSnapshot,
    ListSnapshots,
    MarkGood,
    RetireSnapshot,
)
from shared.errors import Invalid
from shared.selectors import parse

snapshot_app = typer.Typer(help="Snapshots: immutable, versioned configuration.", no_args_is_help=True)


def _read_object(path: str, field: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}", field=field) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{path} is not JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise Invalid(f"{path} must hold a JSON object, not {type(value).__name__}", field=field)
    return value


def _pairs(items: list[str] | None, field: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise Invalid(f"{item!r} is not NAME=VALUE", field=field)
        pairs.append((key, value))
    return pairs


@snapshot_app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Snapshot name (versions count per name)."),
    config: str = typer.Option(..., "--config", help="Base config: a file holding a JSON object."),
    artifact: list[str] = typer.Option(None, "--artifact", help="An artifact version NAME=VERSION (repeatable)."),
    override: list[str] = typer.Option(None, "--override", help="A site override SITE=FILE (repeatable)."),
    parent: str = typer.Option(None, "--parent", help="The snapshot this one derives from (id or NAME@VERSION)."),
    description: str = typer.Option("", "--description", help="What changed and why."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Create a snapshot; the same content again returns the existing one."""
    async def go() -> None:
        command = CreateSnapshot(
            name=name, config=_read_object(config, "config"), artifacts=dict(_pairs(artifact, "artifacts")),
            overrides={site: _read_object(path, f"overrides.{site}") for site, path in _pairs(override, "overrides")},
            parent_id=parent, description=description)
        reply = await send(settings(ctx), "snapshot", "create", command)

        def render(_: Any) -> None:
            r = reply.result
            if r["created"]:
                console.print(f"created {r['name']} v{r['version']}: [bold]{r['snapshot_id']}[/bold]")
            else:
                console.print(f"unchanged: the same content is already {r['name']} v{r['version']}: "
                              f"[bold]{r['snapshot_id']}[/bold]")
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


def _known_good(items: list[dict[str, Any]]) -> str:
    return "; ".join((kg["target"] or "everywhere") + (f" ({kg['rollout_id']})" if kg.get("rollout_id") else "")
                     for kg in items)


@snapshot_app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Snapshot id, NAME@VERSION, or NAME (newest)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """One snapshot: its standing, artifacts, base config and overrides."""
    async def go() -> None:
        reply = await send(settings(ctx), "snapshot", "get", GetSnapshot(snapshot_id=ref))

        def render(_: Any) -> None:
            s = reply.result
            table = Table(show_header=False, box=None, pad_edge=False)
            table.add_column(style="bold")
            table.add_column()
            rows = [("id", s["snapshot_id"]), ("name", f"{s['name']} v{s['version']}"),
                    ("status", s["status"] + (f" ({s['retired_reason']})" if s["retired_reason"] else "")),
                    ("parent", s["parent_id"] or ""), ("author", s["author"]),
                    ("description", s["description"]),
                    ("artifacts", ", ".join(f"{k}={v}" for k, v in sorted(s["artifacts"].items()))),
                    ("known-good", _known_good(s["known_good"]))]
            for key, value in rows:
                table.add_row(key, escape(value))
            console.print(table)
            console.print("[bold]config[/bold]")
            console.print_json(data=s["config"], sort_keys=True)
            for site, override in sorted(s["overrides"].items()):
                console.print(f"[bold]override for site {escape(site)}[/bold]")
                console.print_json(data=override, sort_keys=True)
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


@snapshot_app.command("list")
def list_(
    ctx: typer.Context,
    name: str = typer.Option(None, "--name", help="Only snapshots of this name."),
    active: bool = typer.Option(False, "--active", help="Leave out retired snapshots."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Snapshots, newest version first per name."""
    async def go() -> None:
        reply = await send(settings(ctx), "snapshot", "list", ListSnapshots(name=name, include_retired=not active))

        def render(_: Any) -> None:
            table = Table("id", "name", "version", "status", "artifacts", "overrides", "known-good")
            table.columns[0].no_wrap = True  # ids are copied from here: never cut them
            for s in reply.result["snapshots"]:
                add_row(table, s["snapshot_id"], s["name"], str(s["version"]), s["status"],
                        ", ".join(f"{k}={v}" for k, v in sorted(s["artifacts"].items())),
                        ", ".join(s["override_sites"]), _known_good(s["known_good"]))
            console.print(table)
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


def _value(value: Any) -> str:
    return escape(json.dumps(value, sort_keys=True))


@snapshot_app.command("diff")
def diff(
    ctx: typer.Context,
    a: str = typer.Argument(..., help="From: snapshot id, NAME@VERSION or NAME."),
    b: str = typer.Argument(..., help="To: snapshot id, NAME@VERSION or NAME."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """What changes from A to B: base config, artifacts and overrides, path by path."""
    async def go() -> None:
        reply = await send(settings(ctx), "snapshot", "diff", DiffSnapshots(a=a, b=b))

        def render(_: Any) -> None:
            r = reply.result
            console.print(f"--- {r['a']}\n+++ {r['b']}", highlight=False)
            if not r["changes"]:
                console.print("no differences in config, artifacts or overrides")
            for c in r["changes"]:
                path = escape(c["path"])
                if c["op"] == "added":
                    console.print(f"[green]+ {path}: {_value(c['new'])}[/green]", highlight=False)
                elif c["op"] == "removed":
                    console.print(f"[red]- {path}: {_value(c['old'])}[/red]", highlight=False)
                else:
                    console.print(f"[yellow]~ {path}: {_value(c['old'])} -> {_value(c['new'])}[/yellow]",
                                  highlight=False)
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


@snapshot_app.command("retire")
def retire(
    ctx: typer.Context,
    snapshot_id: str = typer.Argument(..., help="Snapshot id or NAME@VERSION."),
    reason: str = typer.Option("", "--reason", help="Why."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Retire a snapshot: it may no longer be rolled out."""
    async def go() -> None:
        reply = await send(settings(ctx), "snapshot", "retire", RetireSnapshot(snapshot_id=snapshot_id, reason=reason))
        sid = reply.result["snapshot_id"]
        emit(reply_json(reply), json_out=json_out,
             render=lambda _: console.print(f"retired {sid}" if reply.events else f"{sid} was already retired"))
    run(go(), json_out=json_out)


@snapshot_app.command("mark-good")
def mark_good(
    ctx: typer.Context,
    snapshot_id: str = typer.Argument(..., help="Snapshot id or NAME@VERSION."),
    target: str = typer.Option("", "--target", help="Label selector it is known-good for (default: everywhere)."),
    rollout: str = typer.Option(None, "--rollout", help="The rollout that proved it."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Mark a snapshot known-good for a target (rollbacks pick the newest known-good)."""
    async def go() -> None:
        parse(target, "target")  # refuse a bad selector before sending, pointing at the character
        reply = await send(settings(ctx), "snapshot", "mark_good",
                           MarkGood(snapshot_id=snapshot_id, target=target, rollout_id=rollout))
        where = escape(target or "everywhere")
        sid = reply.result["snapshot_id"]
        emit(reply_json(reply), json_out=json_out,
             render=lambda _: console.print(f"{sid} is known-good for {where}" if reply.events
                                            else f"{sid} was already known-good for {where}"))
    run(go(), json_out=json_out)


__all__ = ["snapshot_app"]
