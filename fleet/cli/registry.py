"""`fleet site ...` and `fleet device ...`: the registry's commands over NATS request/reply.

Human tables by default, `--json` for scripts (the reply as the service sent it). `fleet device
import FILE` reads CSV (with a header) or JSON lines, checks each line locally as far as it can,
sends the rest in chunks of 1,000 devices and prints a per-line report.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, command_settings, console, emit, reply_json, run, send, settings
from shared.commands import CommandClient, Reply
from shared.config import Settings
from shared.connection import connect_nats
from shared.contract.registry import (
    AddDevice,
    AddSite,
    GetDevice,
    GetSite,
    ImportDevices,
    ListDevices,
    ListSites,
    MoveDevice,
    RelabelDevice,
    RetireDevice,
    RetireSite,
    UpdateDevice,
    UpdateSite,
)
from shared.errors import Invalid
from shared.ids import parse_label

site_app = typer.Typer(help="Sites: add, list, show, update, retire.", no_args_is_help=True)
device_app = typer.Typer(help="Devices: add, import, update, label, move, retire, show, list.", no_args_is_help=True)

IMPORT_CHUNK = 2500  # lines per command, the service's limit (it appends atomic batches of 1,000)
IMPORT_CHUNK_BYTES = 0.75  # ... and at most this share of the server's max payload
IMPORT_IN_FLIGHT = 3  # commands sent ahead: the service takes them in order, one after another
PROGRESS_FROM = 2000  # lines; smaller files finish before a bar would be seen

_ANY_JSON = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()

LabelOption = typer.Option(None, "--label", "-l", help="A label key=value (repeatable).")
WindowOption = typer.Option(None, "--window", "-w", help=(
    "A maintenance window, e.g. 'Mon-Fri 22:00-04:00 Europe/Berlin' or 'Sat 00:00-24:00 UTC' (repeatable; "
    "rollouts assign the site's devices only inside one)."))


def labels_of(pairs: list[str] | None) -> dict[str, str]:
    """`k=v` flags as a dict (Invalid names the bad one)."""
    return dict(parse_label(pair, "labels") for pair in pairs or [])


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _changed(reply: Reply, what: str, verb: str) -> None:
    if reply.events:
        console.print(f"{verb} {what} [dim](log seq {reply.last_seq})[/dim]")
    else:
        console.print(f"{what} unchanged (already so)")


def _record_table(record: dict[str, Any], title: str | None = None) -> Table:
    table = Table(show_header=False, title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.items():
        if isinstance(value, dict):
            shown = _labels_text(value) if key == "labels" else json.dumps(value, sort_keys=True)
        elif isinstance(value, list):
            shown = "; ".join(map(str, value)) or ("always open" if key == "windows" else "")
        else:
            shown = "" if value is None else str(value)
        table.add_row(key, escape(shown))
    return table


def add_row(table: Table, *cells: str | None) -> None:
    """A table row of plain text (never read as rich markup: ids and messages hold brackets)."""
    table.add_row(*(escape(cell or "") for cell in cells))


# --- sites ---------------------------------------------------------------------------------------


def _show_site(reply: Reply, verb: str | None = None) -> None:
    site = reply.result
    if verb:
        _changed(reply, f"site {site['site_id']}", verb)
    console.print(_record_table(site))


@site_app.command("add")
def site_add(
    ctx: typer.Context,
    site_id: str = typer.Argument(..., help="Site id."),
    name: str = typer.Option(None, "--name", help="Human name."),
    label: list[str] = LabelOption,
    window: list[str] = WindowOption,
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Register a site (the same site again with the same data is a no-op)."""
    async def go() -> None:
        command = AddSite(site_id=site_id, labels=labels_of(label), windows=window or [], name=name)
        reply = await send(settings(ctx), "registry", "add_site", command)
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_site(reply, "added"))
    run(go(), json_out=json_out)


@site_app.command("update")
def site_update(
    ctx: typer.Context,
    site_id: str = typer.Argument(..., help="Site id."),
    name: str = typer.Option(None, "--name", help="New human name."),
    label: list[str] = typer.Option(None, "--label", "-l", help="Replace labels with these (repeatable)."),
    window: list[str] = WindowOption,
    no_windows: bool = typer.Option(False, "--no-windows", help="Remove every maintenance window (always open)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Change a site's name, labels or maintenance windows (--window replaces them all)."""
    async def go() -> None:
        command = UpdateSite(site_id=site_id, name=name, labels=labels_of(label) if label else None,
                             windows=([] if no_windows else window) if window or no_windows else None)
        reply = await send(settings(ctx), "registry", "update_site", command)
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_site(reply, "updated"))
    run(go(), json_out=json_out)


@site_app.command("retire")
def site_retire(
    ctx: typer.Context,
    site_id: str = typer.Argument(..., help="Site id."),
    reason: str = typer.Option("", "--reason", help="Why."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Retire a site that holds no active device."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "retire_site", RetireSite(site_id=site_id, reason=reason))
        emit(reply_json(reply), json_out=json_out,
             render=lambda _: _changed(reply, f"site {site_id}", "retired"))
    run(go(), json_out=json_out)


@site_app.command("show")
def site_show(
    ctx: typer.Context,
    site_id: str = typer.Argument(..., help="Site id."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """One site and how many active devices it holds."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "get_site", GetSite(site_id=site_id))
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_site(reply))
    run(go(), json_out=json_out)


@site_app.command("list")
def site_list(
    ctx: typer.Context,
    all_sites: bool = typer.Option(False, "--all", help="Include retired sites."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """All sites."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "list_sites", ListSites(include_retired=all_sites))

        def render(_: Any) -> None:
            table = Table("site", "name", "status", "devices", "labels", "windows")
            table.columns[0].no_wrap = True
            for site in reply.result["sites"]:
                add_row(table, site["site_id"], site["name"], site["status"], str(site["active_devices"]),
                              _labels_text(site["labels"]), "; ".join(site.get("windows", [])) or "always")
            console.print(table)
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


# --- devices -------------------------------------------------------------------------------------


def _show_device(reply: Reply, verb: str | None = None) -> None:
    device = reply.result
    if verb:
        _changed(reply, f"device {device['device_id']}", verb)
    console.print(_record_table(device))


@device_app.command("add")
def device_add(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    site: str = typer.Option(..., "--site", help="The site it is at."),
    kind: str = typer.Option("device", "--kind", help="Its kind (e.g. plc, gateway, camera)."),
    parent: str = typer.Option(None, "--parent", help="Its parent controller (a device id)."),
    label: list[str] = LabelOption,
    metadata: str = typer.Option(None, "--metadata", help="Free-form metadata as a JSON object."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Register a device (the same device again with the same data is a no-op)."""
    async def go() -> None:
        command = AddDevice(device_id=device_id, site_id=site, kind=kind, parent_id=parent, labels=labels_of(label),
                            metadata=_json_object(metadata, "metadata") if metadata is not None else None)
        reply = await send(settings(ctx), "registry", "add_device", command)
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_device(reply, "added"))
    run(go(), json_out=json_out)


@device_app.command("update")
def device_update(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    kind: str = typer.Option(None, "--kind", help="New kind."),
    parent: str = typer.Option(None, "--parent", help="New parent controller ('' clears it)."),
    metadata: str = typer.Option(None, "--metadata", help="New metadata (a JSON object; replaces it)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Change a device's kind, parent controller or metadata."""
    async def go() -> None:
        command = UpdateDevice(device_id=device_id, kind=kind, parent_id=parent,
                               metadata=_json_object(metadata, "metadata") if metadata is not None else None)
        reply = await send(settings(ctx), "registry", "update_device", command)
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_device(reply, "updated"))
    run(go(), json_out=json_out)


@device_app.command("label")
def device_label(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    labels: list[str] = typer.Argument(None, help="key=value labels; they replace the current ones."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Replace a device's labels (`fleet device label ID` with none clears them)."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "relabel_device",
                           RelabelDevice(device_id=device_id, labels=labels_of(labels)))
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_device(reply, "relabeled"))
    run(go(), json_out=json_out)


@device_app.command("move")
def device_move(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    site: str = typer.Option(..., "--site", help="The new site."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Move a device to another site."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "move_device", MoveDevice(device_id=device_id, site_id=site))
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_device(reply, "moved"))
    run(go(), json_out=json_out)


@device_app.command("retire")
def device_retire(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    reason: str = typer.Option("", "--reason", help="Why."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Retire a device: it keeps its history and can no longer be targeted."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "retire_device", RetireDevice(device_id=device_id, reason=reason))
        emit(reply_json(reply), json_out=json_out,
             render=lambda _: _changed(reply, f"device {device_id}", "retired"))
    run(go(), json_out=json_out)


@device_app.command("show")
def device_show(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="Device id."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """One device."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "get_device", GetDevice(device_id=device_id))
        emit(reply_json(reply), json_out=json_out, render=lambda _: _show_device(reply))
    run(go(), json_out=json_out)


@device_app.command("list")
def device_list(
    ctx: typer.Context,
    site: str = typer.Option(None, "--site", help="Only devices at this site."),
    selector: str = typer.Option("", "--selector", "-s", help="Label selector, e.g. 'tier=edge,kind in (plc)'."),
    all_devices: bool = typer.Option(False, "--all", help="Include retired devices."),
    limit: int = typer.Option(1000, "--limit", help="At most this many (max 5000)."),
    after: str = typer.Option(None, "--after", help="Continue after this device id (paging)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Devices, by site and label selector."""
    async def go() -> None:
        reply = await send(settings(ctx), "registry", "list_devices",
                           ListDevices(site_id=site, selector=selector, include_retired=all_devices,
                                       limit=limit, after=after))

        def render(_: Any) -> None:
            result = reply.result
            table = Table("device", "site", "kind", "parent", "status", "labels")
            table.columns[0].no_wrap = True  # ids are copied from here: never cut them
            for d in result["devices"]:
                add_row(table, d["device_id"], d["site_id"], d["kind"], d["parent_id"] or "", d["status"],
                              _labels_text(d["labels"]))
            console.print(table)
            more = f"; next page: --after {result['next']}" if result["next"] else ""
            console.print(f"{len(result['devices'])} of {result['total']} device(s){more}")
        emit(reply_json(reply), json_out=json_out, render=render)
    run(go(), json_out=json_out)


# --- import --------------------------------------------------------------------------------------


class Line(msgspec.Struct):
    """One line of an import file: where it came from, and what it holds or why it is unreadable."""

    line: int
    device: msgspec.Raw | None = None
    device_id: str | None = None
    error: str | None = None
    field: str | None = None


def _json_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise Invalid("must be a JSON object", field=field)
    return value


def read_import(path: Path) -> list[Line]:
    """Lines of a CSV (header row: device_id,site_id[,kind,parent_id,labels,metadata]; labels as
    `k=v;k=v`, metadata as JSON) or JSON-lines file. Blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}", field="file") from None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        return []  # an empty file imports nothing
    return _read_json_lines(text) if first.startswith("{") else _read_csv(text)


def _read_json_lines(text: str) -> list[Line]:
    """Each line is checked to be a JSON object here, then sent as the very bytes it was read as."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        encoded = stripped.encode()
        try:
            value = _ANY_JSON.decode(encoded)
        except msgspec.DecodeError as exc:
            lines.append(Line(number, error=f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            lines.append(Line(number, error="a line must be a JSON object"))
            continue
        lines.append(Line(number, device=msgspec.Raw(encoded)))
    return lines


def _read_csv(text: str) -> list[Line]:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    if not {"device_id", "site_id"} <= columns:
        raise Invalid("a CSV import needs a header row with at least device_id and site_id "
                      f"(found {sorted(columns)}); JSON lines start with '{{'", field="file")
    lines = []
    for row in reader:
        number = reader.line_num
        if not any((v or "").strip() for v in row.values()):
            continue
        if (row.get("device_id") or "").startswith("#"):
            continue
        if None in row:
            lines.append(Line(number, error="more values than header columns", device_id=row.get("device_id")))
            continue
        device: dict[str, Any] = {}
        try:
            for key, cell in row.items():
                value = (cell or "").strip()
                if not value:
                    continue
                if key == "labels":
                    device["labels"] = dict(parse_label(pair.strip(), "labels")
                                            for pair in value.split(";") if pair.strip())
                elif key == "metadata":
                    device["metadata"] = _json_object(value, "metadata")
                else:
                    device[key] = value
        except Invalid as exc:
            lines.append(Line(number, error=exc.message, field=exc.field, device_id=row.get("device_id") or None))
            continue
        lines.append(Line(number, device=msgspec.Raw(_ENCODER.encode(device))))
    return lines


@device_app.command("import")
def device_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV with a header row, or JSON lines."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Add many devices; good lines land, bad ones are reported; importing again changes nothing.

    Exit code 0 when every line was added or already there, 2 when any line was refused."""
    refused = run(_import(settings(ctx), file, json_out), json_out=json_out)
    if refused:
        raise typer.Exit(2)


async def _import(conf: Settings, file: Path, json_out: bool) -> int:
    lines = read_import(file)
    sendable = [ln for ln in lines if ln.device is not None]
    report: dict[str, Any] = {"added": 0, "unchanged": 0, "refused": [
        {"line": ln.line, "device_id": ln.device_id, "code": "invalid", "field": ln.field, "message": ln.error}
        for ln in lines if ln.device is None]}
    if sendable:
        await _send_lines(conf, sendable, report, json_out)
    for r in report["refused"]:
        r.pop("index", None)
    report["refused"].sort(key=lambda r: r["line"])
    report["ok"] = not report["refused"]
    emit(report, json_out=json_out, render=_render_import)
    return len(report["refused"])


async def _send_lines(conf: Settings, sendable: list[Line], report: dict[str, Any], json_out: bool) -> None:
    """Send the readable lines in commands, adding each reply to the report."""
    nc = await connect_nats(command_settings(conf), "cli", connect_for=5.0)
    try:
        client = CommandClient(nc)
        progress = Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, disable=json_out or len(sendable) < PROGRESS_FROM)
        with progress:
            task = progress.add_task("import", total=len(sendable))
            window = asyncio.Semaphore(IMPORT_IN_FLIGHT)

            async def send_chunk(chunk: list[Line]) -> Reply:
                # Several chunks are in flight so the service never waits for the next one; it
                # serves one subscription in order, so a parent in an earlier chunk lands first.
                async with window:
                    command = ImportDevices(devices=[ln.device for ln in chunk if ln.device is not None])
                    reply = await client.send("registry", "import_devices", command, timeout=120.0)
                progress.advance(task, len(chunk))
                return reply

            chunks = _chunks(sendable, int(nc.max_payload * IMPORT_CHUNK_BYTES))
            replies = await asyncio.gather(*(send_chunk(chunk) for chunk in chunks))
            for chunk, reply in zip(chunks, replies, strict=True):
                result = reply.result
                report["added"] += result["added"]
                report["unchanged"] += result["unchanged"]
                for r in result["refused"]:
                    report["refused"].append({**r, "line": chunk[r["index"]].line})
    finally:
        await nc.close()


def _chunks(lines: list[Line], max_bytes: int) -> list[list[Line]]:
    """Consecutive runs of at most IMPORT_CHUNK lines and about `max_bytes` of JSON each."""
    chunks: list[list[Line]] = [[]]
    size = 0
    for line in lines:
        length = len(line.device or b"") + 1
        if chunks[-1] and (len(chunks[-1]) >= IMPORT_CHUNK or size + length > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += length
    return [chunk for chunk in chunks if chunk]


def _render_import(report: dict[str, Any]) -> None:
    console.print(f"added {report['added']}, unchanged {report['unchanged']}, "
                  f"refused {len(report['refused'])}")
    if report["refused"]:
        table = Table("line", "device", "code", "field", "why")
        for r in report["refused"]:
            add_row(table, str(r["line"]), r["device_id"], r["code"], r["field"], r["message"])
        console.print(table)


__all__ = ["device_app", "site_app"]
