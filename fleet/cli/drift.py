"""`fleet drift ...`: what operators do about a drifted device."""

from __future__ import annotations

from typing import Any

import typer

from fleet.cli.common import console, reason_command
from shared.contract.drift import Acknowledge, Reconcile

app = typer.Typer(help="Act on drifted devices: force reconciliation, or accept the drift.", no_args_is_help=True)


def _render(result: dict[str, Any]) -> None:
    state = "acknowledged" if result.get("acknowledged") else "stuck" if result.get("stuck") else "reconciling"
    console.print(f"{result['device_id']}: {state}")


reason_command(app, "drift", "reconcile", Reconcile,
               "Re-put the device's desired state now (a stuck device's tries start over).",
               "device_id", _render)
reason_command(app, "drift", "acknowledge", Acknowledge,
               "Accept the device's drift as it is: no reconciliation until the drift ends.", "device_id", _render)
