"""`fleet drift ...`: what operators do about a drifted device."""

from __future__ import annotations

from typing import Any

import typer

from fleet.cli.common import JsonOption, console, emit, run, send, settings

app = typer.Typer(help="Act on drifted devices: force reconciliation, or accept the drift.", no_args_is_help=True)


def _render(result: dict[str, Any]) -> None:
    state = "acknowledged" if result.get("acknowledged") else "stuck" if result.get("stuck") else "reconciling"
    console.print(f"{result['device_id']}: {state}")


def _command(name: str, doc: str) -> None:
    def command(ctx: typer.Context, device_id: str = typer.Argument(...),
                reason: str = typer.Option("", "--reason", help="Why, for the record."),
                json_out: bool = JsonOption) -> None:
        result = run(send(settings(ctx), "drift", name, {"device_id": device_id, "reason": reason}),
                     json_out=json_out).result
        emit(result, json_out=json_out, render=_render)

    command.__doc__ = doc
    app.command(name)(command)


_command("reconcile", "Re-put the device's desired state now (a stuck device's tries start over).")
_command("acknowledge", "Accept the device's drift as it is: no reconciliation until the drift ends.")
