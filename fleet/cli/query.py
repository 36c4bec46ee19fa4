"""`fleet where`, `fleet changes`, `fleet degraded`, `fleet history`: questions to the query API
(FLEET_API_URL / --api-url / the api_url of endpoints.json)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, run, settings
from shared.config import Settings
from shared.errors import Unavailable, error_from_code
from shared.tokens import read_token

DEFAULT_API_URL = "http://127.0.0.1:8080"


def api_url(conf: Settings) -> str:
    """Where the query API answers."""
    return (conf.api_url or DEFAULT_API_URL).rstrip("/")


async def api_get(conf: Settings, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET a query-API path; an error answer raises its typed FleetError."""
    import httpx

    clean = {k: ("true" if v is True else "false" if v is False else v)
             for k, v in (params or {}).items() if v is not None}
    url = api_url(conf)
    token = conf.api_token or read_token(conf.data_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=headers) as client:
            response = await client.get(path, params=clean)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the query API at {url} ({exc!r}); is `fleet up` running, "
                          "or is FLEET_API_URL right?") from None
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message", response.text)
        if response.status_code == 401:
            message += ("; set FLEET_API_TOKEN (from `fleet token create`)" if not token else
                        "; the token in FLEET_API_TOKEN or <data-dir>/secrets/api-token was refused")
        raise error_from_code(error.get("code", "internal"), message, error.get("field"))
    return body


async def api_pages(conf: Settings, path: str, params: dict[str, Any], limit: int) -> tuple[dict[str, Any], list[Any]]:
    """Follow cursors until `limit` items; returns the first answer and all items."""
    first: dict[str, Any] | None = None
    items: list[Any] = []
    cursor = None
    while len(items) < limit:
        page = await api_get(conf, path, {**params, "cursor": cursor, "limit": min(1000, limit - len(items))})
        first = first or page
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return first or {}, items


def _fresh(answer: dict[str, Any]) -> str:
    when = f"historical, as of {answer['at']} " if answer.get("historical") and answer.get("at") else (
        "historical, " if answer.get("historical") else "")
    lag = answer.get("lag")
    return f"[dim]({when}log sequence {answer['as_of_seq']}, lag {'?' if lag is None else lag})[/dim]"


def where(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site", help="Only this site."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Only devices reporting this snapshot."),
    at: str | None = typer.Option(None, "--at", help="RFC 3339 time (or log sequence): as it stood then."),
    devices: bool = typer.Option(False, "--devices", help="Also list the devices."),
    limit: int = typer.Option(200, "--limit", help="At most this many devices with --devices."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """What runs where: device counts by snapshot x site (then the devices, with --devices)."""
    conf = settings(ctx)
    when = _at_params(at)

    async def ask() -> dict[str, Any]:
        summary = await api_get(conf, "/v1/summary", {"site": site, "snapshot": snapshot, **when})
        out: dict[str, Any] = {"summary": summary}
        if devices:
            _, items = await api_pages(conf, "/v1/devices", {"site": site, "snapshot": snapshot, **when}, limit)
            out["devices"] = items
        return out

    def render(out: dict[str, Any]) -> None:
        summary = out["summary"]
        table = Table("snapshot", "site", "devices", "online", "offline", "degraded", "failed", "drifted",
                      title="What runs where")
        for c in sorted(summary["cells"], key=lambda c: (c["snapshot_id"], c["site_id"])):
            table.add_row(c["snapshot_id"] or "(none)", c["site_id"], str(c["total"]), str(c["online"]),
                          str(c["offline"]), str(c["degraded"]), str(c["failed"]), str(c["drifted"]))
        t = summary["totals"]
        table.add_row("[bold]all[/bold]", "", str(t["total"]), str(t["online"]), str(t["offline"]),
                      str(t["degraded"]), str(t["failed"]), str(t["drifted"]))
        console.print(table)
        console.print(_fresh(summary))
        if "devices" in out:
            _device_table(out["devices"])

    emit(run(ask(), json_out=json_out), json_out=json_out, render=render)


def _at_params(at: str | None) -> dict[str, Any]:
    if at is None:
        return {}
    return {"at_seq": int(at)} if at.isdigit() else {"at": at}


def _problems(device: dict[str, Any]) -> list[str]:
    found = []
    if not device["online"]:
        found.append("offline" if device.get("last_seen") else "offline (never seen)")
    if device["health"] in ("failed", "degraded"):
        found.append(device["health"])
    if device.get("stuck") and not device.get("acknowledged"):
        found.append("stuck")
    if device.get("drifted_since"):
        found.append(f"drifted since {device['drifted_since']}"
                     + (" (acknowledged)" if device.get("acknowledged") else ""))
    return found


def _device_table(devices: list[dict[str, Any]], problems: bool = False) -> None:
    columns = ["device", "site", "runs", "should run", "health", "online", "last seen"]
    table = Table(*(columns + (["problems"] if problems else [])))
    for d in devices:
        row = [d["device_id"], d["site_id"], d["reported_snapshot_id"] or "-", d["desired_snapshot_id"] or "-",
               d["health"], "yes" if d["online"] else "no", d.get("last_seen") or "never"]
        if problems:
            row.append(", ".join(_problems(d)))
        table.add_row(*row)
    console.print(table)


def degraded(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site", help="Only this site."),
    limit: int = typer.Option(1000, "--limit", help="At most this many devices."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Devices that are offline, failed, stuck, degraded or drifted, worst first."""
    conf = settings(ctx)

    async def ask() -> dict[str, Any]:
        first, items = await api_pages(conf, "/v1/devices", {"problems": True, "site": site, "order": "worst"},
                                       limit)
        return {"as_of_seq": first.get("as_of_seq"), "lag": first.get("lag"), "devices": items}

    def render(out: dict[str, Any]) -> None:
        if not out["devices"]:
            console.print("No device is offline, failed, stuck, degraded or drifted.")
        else:
            _device_table(out["devices"], problems=True)
        console.print(_fresh({**out, "historical": False}))

    emit(run(ask(), json_out=json_out), json_out=json_out, render=render)


def changes(
    ctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help="How far back, e.g. 1h, 1h30m or 30d (default 1h)."),
    start: str | None = typer.Option(None, "--from", help="RFC 3339 start."),
    end: str | None = typer.Option(None, "--to", help="RFC 3339 end."),
    device: str | None = typer.Option(None, "--device"),
    site: str | None = typer.Option(None, "--site"),
    snapshot: str | None = typer.Option(None, "--snapshot"),
    rollout: str | None = typer.Option(None, "--rollout"),
    actor: str | None = typer.Option(None, "--actor"),
    limit: int = typer.Option(200, "--limit", help="At most this many changes (the newest)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """What changed: who did what, when, to which device, site, snapshot or rollout."""
    conf = settings(ctx)
    if since is None and start is None and end is None:
        since = "1h"
    params = {"since": since, "from": start, "to": end, "device": device, "site": site, "snapshot": snapshot,
              "rollout": rollout, "actor": actor, "order": "desc"}

    async def ask() -> dict[str, Any]:
        first, items = await api_pages(conf, "/v1/changes", params, limit)
        items.reverse()  # oldest first on screen
        return {"as_of_seq": first.get("as_of_seq"), "lag": first.get("lag"), "changes": items}

    emit(run(ask(), json_out=json_out), json_out=json_out, render=_render_changes)


def _render_changes(out: dict[str, Any]) -> None:
    table = Table("seq", "at", "actor", "what")
    for c in out["changes"]:
        table.add_row(str(c["seq"]), c["at"], c["actor"], c["summary"])
    console.print(table if out["changes"] else "No changes.")
    console.print(_fresh({**out, "historical": False}))


def history(
    ctx: typer.Context,
    device: str = typer.Argument(..., help="Device id."),
    limit: int = typer.Option(200, "--limit", help="At most this many changes (the newest)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Everything that happened to one device."""
    conf = settings(ctx)

    async def ask() -> dict[str, Any]:
        first, items = await api_pages(conf, f"/v1/devices/{quote(device, safe='')}/history",
                                       {"order": "desc"}, limit)
        items.reverse()
        return {"as_of_seq": first.get("as_of_seq"), "lag": first.get("lag"), "changes": items}

    emit(run(ask(), json_out=json_out), json_out=json_out, render=_render_changes)
