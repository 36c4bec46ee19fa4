"""`fleet token create|list|revoke`: bearer tokens for the HTTP API (DESIGN §11). They live,
hashed, in the `fleet_tokens` bucket, written with the CLI's (admin) NATS identity; a new token
is printed once and cannot be shown again."""

from __future__ import annotations

from typing import Any

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, run, settings
from shared.config import Settings
from shared.tokens import ROLES

app = typer.Typer(help="HTTP API tokens: create (printed once), list, revoke.", no_args_is_help=True)


def _info(record: Any) -> dict[str, Any]:
    info: dict[str, Any] = msgspec.to_builtins(record)
    info.pop("hash")
    return info


async def _with_nats(conf: Settings, work: Any) -> Any:
    from shared.connection import connect_nats

    nc = await connect_nats(conf, "cli", connect_for=5.0)
    try:
        return await work(nc)
    finally:
        await nc.close()


@app.command("create")
def create(ctx: typer.Context,
           role: str = typer.Option(..., "--role", help=f"One of: {', '.join(ROLES)}."),
           name: str = typer.Option(..., "--name", help="Who or what uses it (recorded as the actor)."),
           json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Issue a token and print it once (it is stored only as an argon2id hash)."""
    from fleet.supervisor import local_user
    from shared import tokens
    from shared.times import format_time, utcnow

    conf = settings(ctx)
    by = f"admin:{local_user()}"  # the CLI writes the bucket under the admin identity
    text, record = run(_with_nats(conf, lambda nc: tokens.create(nc, name, role, by, format_time(utcnow()))),
                       json_out=json_out)
    emit({**_info(record), "token": text}, json_out=json_out, render=lambda r: console.print(
        f"{escape(r['role'])} token {escape(r['name'])} (id {r['id']}); shown once, keep it secret:\n{r['token']}",
        highlight=False, soft_wrap=True))


@app.command("list")
def list_tokens(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """The live tokens: id, name, role, when and by whom issued (never the token)."""
    from shared import tokens

    records = run(_with_nats(settings(ctx), tokens.list_records), json_out=json_out)

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("id", "name", "role", "created", "by")
        for r in items:
            table.add_row(r["id"], escape(r["name"]), r["role"], r["created_at"], escape(r["created_by"]))
        console.print(table)

    emit([_info(r) for r in records], json_out=json_out, render=render)


@app.command("revoke")
def revoke(ctx: typer.Context, token: str = typer.Argument(..., metavar="ID_OR_NAME"),
           json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Revoke a token by id or name: the API refuses it within seconds."""
    from shared import tokens

    record = run(_with_nats(settings(ctx), lambda nc: tokens.revoke(nc, token)), json_out=json_out)
    emit({**_info(record), "revoked": True}, json_out=json_out,
         render=lambda r: console.print(f"revoked {escape(r['role'])} token {escape(r['name'])} (id {r['id']})"))
