"""What every `fleet` command shares: settings from flags/env/endpoints.json, `--json` output,
exit codes scripts can use, and running async code with errors turned into clean messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, NoReturn, TypeVar

import msgspec
import msgspec.yaml
import typer
from rich.console import Console
from rich.markup import escape

from shared.commands import ErrorBody, Reply
from shared.config import Settings, load_settings
from shared.errors import FleetError, exit_code_of
from shared.wire import Command

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

# Output: `-o json|yaml|wide` (kubectl's spelling) on every command that had `--json`, which stays
# as the alias of `-o json`. The chosen format is this invocation's (`reset_output` at the root);
# `json_out` is true for json and yaml (refusals are then machine-readable too).
OUTPUT_FORMATS = ("json", "yaml", "wide")
_FORMAT: ContextVar[str | None] = ContextVar("fleet_output", default=None)


def reset_output() -> None:
    """Forget the format of a previous invocation in this process (the root command calls it)."""
    _FORMAT.set(None)


def _json_flag(value: bool) -> bool:
    if value and _FORMAT.get() is None:
        _FORMAT.set("json")
    return value or _FORMAT.get() in ("json", "yaml")


def _output_option(ctx: typer.Context, value: str | None) -> str | None:
    if value is None:
        return None
    if value not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"one of {', '.join(OUTPUT_FORMATS)}")
    _FORMAT.set(value)
    if value in ("json", "yaml") and "json_out" in ctx.params:  # --json was processed first
        ctx.params["json_out"] = True
    return value


JsonOption = typer.Option(False, "--json", callback=_json_flag, help="Print machine-readable JSON (= -o json).")
OutputOption = typer.Option(None, "-o", "--output", callback=_output_option, metavar="json|yaml|wide",
                            help="json or yaml: machine-readable; wide: tables at full width, nothing cut.")


def output_format(json_out: bool) -> str:
    """The format this invocation prints in: json, yaml, wide or table."""
    chosen = _FORMAT.get()
    if chosen == "yaml":
        return "yaml"
    return "json" if json_out else chosen or "table"


def _write(data: Any, fmt: str) -> None:
    if fmt == "yaml":
        sys.stdout.write(msgspec.yaml.encode(data).decode())
    else:
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")


def settings(ctx: typer.Context, *, local: bool = False) -> Settings:
    """The settings of this invocation (global flags, FLEET_* env, the selected context or
    endpoints.json). `local`: a command that runs Fleetplane here (`up`, `service`, `demo`) takes
    no context, which names a deployment to talk to, not one to be."""
    from shared.contexts import selected_settings

    obj = dict(ctx.find_root().obj or {})
    name = obj.pop("context", None)
    return load_settings(obj, context=None if local else selected_settings(name))


def run(coro: Coroutine[Any, Any, T], *, json_out: bool = False) -> T:
    """Run a coroutine; a FleetError becomes a one-line message and its exit code."""
    try:
        return asyncio.run(coro)
    except FleetError as exc:
        fail(exc, json_out=json_out)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def fail(exc: FleetError, *, json_out: bool = False) -> NoReturn:
    """Report a refused operation and exit with its code."""
    fmt = output_format(json_out)
    if fmt in ("json", "yaml"):
        _write(Reply(ok=False, error=ErrorBody(exc.code, exc.message, exc.field)), fmt)  # as on the wire
    else:
        where = f" ({exc.field})" if exc.field else ""
        err_console.print(f"[red]error: {exc.code}{escape(where)}:[/red] {escape(exc.message)}",
                          highlight=False)
    raise typer.Exit(exit_code_of(exc.code))  # the error's class says which (shared/errors.py)


def emit(data: Any, *, json_out: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON (`--json`, `-o json`), YAML (`-o yaml`) or through `render` for people
    (`-o wide`: on a console wide enough that no column is cut)."""
    fmt = output_format(json_out)
    if fmt in ("json", "yaml"):
        _write(data, fmt)
    elif fmt == "wide":
        width = console.width
        console.width = WIDE
        try:
            render(data)
        finally:
            console.width = width
    else:
        render(data)


WIDE = 400  # columns of `-o wide`


def reply_json(reply: Reply) -> dict[str, Any]:
    """A command's reply as plain data for `--json`: the reply as the service sent it."""
    data: dict[str, Any] = msgspec.to_builtins(reply)
    data.setdefault("events", [])
    return data


def emit_reply(reply: Reply, *, json_out: bool, render: Callable[[Any], None]) -> None:
    """Print a command's reply: with `--json` the reply itself (one shape for every command, the
    same as `nats req` and the HTTP API give); for people, `render` of its result."""
    emit(reply_json(reply), json_out=json_out, render=lambda _: render(reply.result))


def command_settings(conf: Settings) -> Settings:
    """The settings to send commands with: under the operator identity, whose name the services
    record as the actor (DESIGN §11)."""
    return msgspec.structs.replace(conf, nats_creds=conf.command_creds or conf.nats_creds)


async def send(conf: Settings, service: str, command: str, body: Command,
               timeout: float = 30.0) -> Reply:
    """Connect, send one command under the operator identity, disconnect; a refusal raises its typed
    FleetError (which `run` turns into a message and an exit code)."""
    from shared.commands import CommandClient
    from shared.connection import connect_nats

    nc = await connect_nats(command_settings(conf), "cli", connect_for=5.0)
    try:
        return await CommandClient(nc, timeout=timeout).send(service, command, body)
    finally:
        await nc.close()


def reason_command(app: typer.Typer, service: str, name: str, command_type: type[Command], doc: str,
                   id_field: str, render: Callable[[Any], None]) -> None:
    """Add `name ID [--reason R] [--json]` to `app`: one command (`command_type`) to `service`
    naming one aggregate by `id_field`, with an operator's reason for the record."""

    def command(ctx: typer.Context, target: str = typer.Argument(..., metavar=id_field.upper()),
                reason: str = typer.Option("", "--reason", help="Why, for the record."),
                json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
        reply = run(send(settings(ctx), service, name, command_type(**{id_field: target, "reason": reason})),
                    json_out=json_out)
        emit_reply(reply, json_out=json_out, render=render)

    command.__doc__ = doc
    app.command(name)(command)


STOP_GRACE = 15.0  # seconds a process has to wind down after SIGINT/SIGTERM


async def until_signalled(work: Awaitable[None]) -> None:
    """Run `work` until SIGINT/SIGTERM cancels it. If winding down hangs (its NATS or PostgreSQL
    gone, as when `fleet up` died with its servers), the process exits anyway after STOP_GRACE:
    nobody may be left to kill it."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        task.cancel()
        loop.call_later(STOP_GRACE, _exit_stuck)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _exit_stuck() -> None:
    logging.getLogger("fleet").error("still stopping %.0f s after the signal (NATS or PostgreSQL unreachable?); "
                                     "exiting now", STOP_GRACE)
    os._exit(1)
