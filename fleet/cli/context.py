"""`fleet context add|use|list|show|rm`: named deployments for the CLI (shared/contexts.py), like
`nats context` and kubectl contexts. `--context NAME` (or FLEET_CONTEXT) picks one for a single
command; `fleet context use NAME` for every later one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, fail
from shared import contexts
from shared.errors import FleetError, Invalid

app = typer.Typer(help="Named deployments: NATS URL, credentials, CA, API URL and token.", no_args_is_help=True)


def _shown(name: str, context: contexts.Context, selected: str | None) -> dict[str, Any]:
    """A context as printed: the token never, only whether there is one."""
    data = msgspec.structs.asdict(context)
    data["api_token"] = "(set)" if context.api_token else None
    return {"name": name, "current": name == selected, **{k: v for k, v in data.items() if v not in (None, "")}}


def _existing_file(path: str | None, field: str) -> str | None:
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise Invalid(f"{path}: no such file", field=field)
    return str(resolved)


@app.command("add")
def add(
    name: str = typer.Argument(..., help="The context's name."),
    nats_url: str | None = typer.Option(None, "--nats-url", help="NATS server(s), comma-separated."),
    nats_creds: str | None = typer.Option(None, "--nats-creds", help="Credentials file of your identity."),
    nats_tls_ca: str | None = typer.Option(None, "--nats-tls-ca", help="CA of the NATS servers' certificates."),
    api_url: str | None = typer.Option(None, "--api-url", help="The query API."),
    api_token_file: str | None = typer.Option(None, "--api-token-file",
                                              help="A file holding an API token (its content is kept, 0600)."),
    description: str = typer.Option("", "--description", help="What this deployment is."),
    use: bool = typer.Option(False, "--use", help="Select it now."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Save (or replace) a named deployment."""
    directory = contexts.config_dir()
    try:
        token = Path(api_token_file).read_text().strip() if api_token_file else None
        context = contexts.Context(
            description=description, nats_url=nats_url, api_url=api_url, api_token=token,
            nats_creds=_existing_file(nats_creds, "nats_creds"), nats_tls_ca=_existing_file(nats_tls_ca, "nats_tls_ca"))
        contexts.save(directory, name, context)
        if use:
            contexts.use(directory, name)
    except FleetError as exc:
        fail(exc, json_out=json_out)
    except OSError as exc:
        fail(Invalid(f"{api_token_file}: {exc.strerror}", field="api_token_file"), json_out=json_out)
    emit(_shown(name, context, contexts.current(directory)), json_out=json_out,
         render=lambda shown: console.print(f"context {name} saved" + (" and selected" if use else "")))


@app.command("use")
def use(name: str = typer.Argument(...), json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Select a context for every later command."""
    try:
        contexts.use(contexts.config_dir(), name)
    except FleetError as exc:
        fail(exc, json_out=json_out)
    emit({"current": name}, json_out=json_out, render=lambda _: console.print(f"using context {name}"))


@app.command("list")
def list_(json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Every context; the selected one is marked."""
    directory = contexts.config_dir()
    selected = contexts.current(directory)
    try:
        rows = [_shown(n, contexts.load(directory, n), selected) for n in contexts.names(directory)]
    except FleetError as exc:
        fail(exc, json_out=json_out)

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("", "name", "NATS", "API", "description")
        for row in items:
            table.add_row("*" if row["current"] else "", row["name"], row.get("nats_url", ""),
                          row.get("api_url", ""), row.get("description", ""))
        console.print(table)

    emit(rows, json_out=json_out, render=render)


@app.command("show")
def show(name: str | None = typer.Argument(None, help="Default: the selected one."),
         json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """One context's settings (never its token)."""
    directory = contexts.config_dir()
    selected = contexts.current(directory)
    try:
        chosen = name or selected
        if chosen is None:
            raise Invalid("no context is selected: name one or `fleet context use NAME`", field="name")
        shown = _shown(chosen, contexts.load(directory, chosen), selected)
    except FleetError as exc:
        fail(exc, json_out=json_out)
    emit(shown, json_out=json_out,
         render=lambda data: console.print("\n".join(f"{k}: {v}" for k, v in data.items())))


@app.command("rm")
def rm(name: str = typer.Argument(...), json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Delete a context."""
    try:
        contexts.remove(contexts.config_dir(), name)
    except FleetError as exc:
        fail(exc, json_out=json_out)
    emit({"removed": name}, json_out=json_out, render=lambda _: console.print(f"context {name} removed"))
