"""`fleet sites` (site health, worst first) and `fleet diff` (what changed between two moments):
operator views over the query API."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, run, settings
from fleet.cli.query import _at_params, _fresh, api_get, api_pages


def sites(
    ctx: typer.Context,
    problems: bool = typer.Option(False, "--problems", help="Only sites with a device in trouble."),
    by_id: bool = typer.Option(False, "--by-id", help="Order by site id instead of worst first."),
    at: str | None = typer.Option(None, "--at", help="RFC 3339 time (or log sequence): as it stood then."),
    limit: int = typer.Option(1000, "--limit", help="At most this many sites."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Site health, worst first: devices online, offline, degraded, failed, drifted, stuck, and the
    snapshots running at each site."""
    conf = settings(ctx)
    params = {"order": "id" if by_id else "worst", "problems": True if problems else None, **_at_params(at)}

    async def ask() -> dict[str, Any]:
        first, items = await api_pages(conf, "/v1/sites", params, limit)
        return {"as_of_seq": first.get("as_of_seq"), "lag": first.get("lag"), "historical": first.get("historical"),
                "at": first.get("at"), "sites": items}

    def render(out: dict[str, Any]) -> None:
        if not out["sites"]:
            console.print("No site has a device offline, failed, degraded, drifted or stuck." if problems
                          else "No sites.")
        else:
            table = Table("site", "devices", "online", "offline", "degraded", "failed", "drifted", "stuck",
                          "running", title="Sites" + (" with problems" if problems else "")
                          + (", worst first" if not by_id else ""))
            for s in out["sites"]:
                c = s["counts"]

                def bad(n: int, style: str = "red") -> str:
                    return f"[{style}]{n}[/{style}]" if n else "0"

                running = ", ".join(f"{r['snapshot_id'] or '(none)'} {r['devices']}" for r in s["snapshots"])
                table.add_row(s["site_id"], str(c["total"]), str(c["online"]), bad(c["offline"]),
                              bad(c["degraded"], "yellow"), bad(c["failed"]), bad(c["drifted"], "yellow"),
                              bad(c["stuck"]), running or "-")
            console.print(table)
        console.print(_fresh(out))

    emit(run(ask(), json_out=json_out), json_out=json_out, render=render)


def diff(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="RFC 3339 time or log sequence."),
    end: str | None = typer.Option(None, "--to", help="RFC 3339 time or log sequence (default: now)."),
    site: str | None = typer.Option(None, "--site", help="Only devices of this site."),
    selector: str | None = typer.Option(None, "--selector", help="Only devices matching (labels as now)."),
    devices: bool = typer.Option(False, "--devices", help="Also list the devices behind each number."),
    limit: int = typer.Option(100, "--limit", help="With --devices: at most this many per number."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """What changed between two moments: per site and snapshot, how many devices moved from what to
    what (snapshot, online, health, drift, registered)."""
    conf = settings(ctx)
    params = {"from": start, "to": end, "site": site, "selector": selector}

    async def ask() -> dict[str, Any]:
        answer: dict[str, Any] = await api_get(conf, "/v1/diff", params)
        if devices:
            # the same window by sequence, so every page is about the same two moments
            fixed = {**params, "from": str(answer["from_seq"]), "to": str(answer["to_seq"])}
            for group in answer["groups"]:
                _, items = await api_pages(conf, "/v1/diff/devices", {**fixed, "group": group["key"]}, limit)
                group["device_ids"] = [d["device_id"] for d in items]
        return answer

    def render(out: dict[str, Any]) -> None:
        console.print(f"From log sequence {out['from_seq']} to {out['to_seq']}: {out['changes']} changes about "
                      f"devices, {out['devices_changed']} devices differ")
        if out["groups"]:
            table = Table("change", "site", "runs at --to", "from", "to", "devices")
            for g in out["groups"]:
                table.add_row(g["change"], g["site_id"] or "-", g["snapshot_id"] or "(none)", g["before"], g["after"],
                              str(g["devices"]))
            console.print(table)
            for g in out["groups"]:
                if "device_ids" in g:
                    more = g["devices"] - len(g["device_ids"])
                    console.print(f"{g['change']} {g['site_id']}: {g['before']} -> {g['after']}: "
                                  + ", ".join(g["device_ids"]) + (f" … and {more} more" if more > 0 else ""))
            totals = ", ".join(f"{k} {v}" for k, v in out["totals"].items() if v)
            console.print(f"devices per kind of change: {totals}")
        console.print(f"[dim](log sequence {out['as_of_seq']}, lag {out['lag'] if out['lag'] is not None else '?'})"
                      "[/dim]")

    emit(run(ask(), json_out=json_out), json_out=json_out, render=render)
