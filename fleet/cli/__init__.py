"""`fleet`: the operator's command line. Each area lives in its own module and is added here."""

from __future__ import annotations

import typer

from fleet.cli import agent as agent_cli
from fleet.cli import audit as audit_cli
from fleet.cli import context as context_cli
from fleet.cli import contract as contract_cli
from fleet.cli import demo, service
from fleet.cli import drift as drift_cli
from fleet.cli import identity as identity_cli
from fleet.cli import projections as projections_cli
from fleet.cli import query as query_cli
from fleet.cli import registry as registry_cli
from fleet.cli import rollout as rollout_cli
from fleet.cli import snapshot as snapshot_cli
from fleet.cli import token as token_cli
from fleet.cli import up as up_cli
from fleet.cli import views as views_cli
from fleet.cli.common import reset_output
from shared import aio
from shared.version import VERSION

app = typer.Typer(
    name="fleet",
    help="Fleetplane: the control plane for fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fleet {VERSION}")
        raise typer.Exit


@app.callback()
def _global(
    ctx: typer.Context,
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print the version and exit."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", envvar="FLEET_DATA_DIR", help="Data dir of `fleet up` (default ./.fleet)."),
    nats_url: str | None = typer.Option(
        None, "--nats-url", envvar="FLEET_NATS_URL",
        help="NATS server to use instead of the embedded one."),
    database_url: str | None = typer.Option(
        None, "--database-url", envvar="FLEET_DATABASE_URL",
        help="PostgreSQL to use instead of the embedded one."),
    api_url: str | None = typer.Option(
        None, "--api-url", envvar="FLEET_API_URL", help="Query API of a remote deployment."),
    context: str | None = typer.Option(
        None, "--context", envvar="FLEET_CONTEXT", help="A named deployment (fleet context list)."),
) -> None:
    reset_output()
    if ctx.invoked_subcommand != "service":  # a service sets up telemetry under its own name
        from shared import telemetry

        telemetry.setup("cli")  # cheap; spans leave the process only if an exporter is configured
    ctx.obj = {"data_dir": data_dir, "nats_url": nats_url, "database_url": database_url,
               "api_url": api_url, "context": context}


app.command("demo", help="Show Fleetplane working end to end on this machine.")(demo.demo)
app.command("service", help="Run one Fleetplane service in the foreground.")(service.service)
app.add_typer(registry_cli.site_app, name="site")
registry_cli.device_app.command("history", help="Everything that happened to one device.")(query_cli.history)
registry_cli.device_app.command("enroll", help="Write a NATS credentials file for one device.")(identity_cli.enroll)
app.add_typer(registry_cli.device_app, name="device")
app.add_typer(identity_cli.creds_app, name="creds")
app.add_typer(snapshot_cli.snapshot_app, name="snapshot")
app.add_typer(rollout_cli.app, name="rollout")
app.add_typer(drift_cli.app, name="drift")
app.command("where", help="What runs where: counts by snapshot x site.")(query_cli.where)
app.command("changes", help="What changed, who, when.")(query_cli.changes)
app.command("degraded", help="Offline, failed, stuck, degraded, drifted devices, worst first.")(query_cli.degraded)
app.command("history", help="Everything that happened to one device.")(query_cli.history)
app.command("sites", help="Site health, worst first: offline, failed, degraded, drifted, stuck.")(views_cli.sites)
app.command("diff", help="What changed between two moments, per site and snapshot.")(views_cli.diff)
app.add_typer(projections_cli.app, name="projections")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(contract_cli.app, name="contract")
app.add_typer(token_cli.app, name="token")
app.command("up", help="Run everything on this machine, supervised.")(up_cli.up)
app.command("status", help="What `fleet up` runs, and how it is.")(up_cli.status)
app.add_typer(context_cli.app, name="context")
app.command("init", help="Create or check the log and the buckets on an external NATS (admin).")(up_cli.init)
app.command("agent", help="Run the agent of one device.")(agent_cli.agent)
app.command("simulate", help="Simulate many devices in one process.")(agent_cli.simulate)


def main() -> None:
    """Entry point of the `fleet` script (every part `fleet up` runs starts here too)."""
    aio.install()
    app()
