"""`fleet up` (run everything here, supervised) and `fleet status` (what runs, and how it is)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from typing import Any

import msgspec
import typer
from rich.table import Table

from fleet.cli.common import JsonOption, OutputOption, console, emit, run, settings
from fleet.supervisor import PARTS, Supervisor, read_status
from shared.errors import Invalid, Unavailable
from shared.lease import instance_name
from shared.logs import setup_logging


def up(
    ctx: typer.Context,
    api_port: int | None = typer.Option(None, "--api-port", help="Port of the query API (default: free)."),
    heartbeat_interval: str | None = typer.Option(None, "--heartbeat-interval", envvar="FLEET_HEARTBEAT_INTERVAL"),
    offline_after: int | None = typer.Option(None, "--offline-after", envvar="FLEET_OFFLINE_AFTER"),
    drift_grace: str | None = typer.Option(None, "--drift-grace", envvar="FLEET_DRIFT_GRACE"),
    reconcile_backoff: str | None = typer.Option(None, "--reconcile-backoff", envvar="FLEET_RECONCILE_BACKOFF"),
    cluster: int = typer.Option(0, "--cluster", help="Run a NATS cluster of this many nodes (3) on loopback "
                                "and two instances of every part: the scale-out topology on one machine."),
) -> None:
    """Run NATS, PostgreSQL (embedded unless URLs are given), the services, projections and API."""
    obj = dict(ctx.find_root().obj or {})
    obj.update({"heartbeat_interval": heartbeat_interval, "offline_after": offline_after,
                "drift_grace": drift_grace, "reconcile_backoff": reconcile_backoff})
    ctx.find_root().obj = obj
    conf = settings(ctx, local=True)
    # the supervisor's own lines (a part restarted, a duty failing) in the one JSON format; what it
    # tells the person at the terminal stays on stdout
    setup_logging(conf.log_level, "up", instance_name("up", str(conf.data_path.resolve())))

    async def main() -> None:
        if cluster not in (0, 3):
            raise Invalid(f"--cluster {cluster}: the cluster config in deploy/nats/ has 3 nodes", field="cluster")
        supervisor = Supervisor(conf, api_port=api_port, cluster=cluster, serve_metrics=True)
        try:
            status = await supervisor.start()
        except BaseException:
            await supervisor.stop()
            raise
        parts = ", ".join(supervisor.parts) or ", ".join(PARTS)
        console.print(f"fleet up: NATS {status.nats_url}, API {status.api_url}, parts {parts}; "
                      f"data in {conf.data_path.resolve()} (Ctrl-C stops everything)")
        await supervisor.run_until_stopped()
        console.print("fleet up: stopped")

    run(main())


def status(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Each embedded server and part (state, pid, up since, restarts, last exit), the API's readiness."""
    conf = settings(ctx)
    local = read_status(conf.data_path)
    if local is not None and not _alive(local.pid):
        local = None
    api_url = conf.api_url or (local.api_url if local else None)
    if local is None and api_url is None:
        run(_fail(f"nothing is running in {conf.data_path.resolve()} and no FLEET_API_URL is set"),
            json_out=json_out)
    ready = run(_ready(api_url), json_out=json_out) if api_url else None
    result: dict[str, Any] = {"up": msgspec.to_builtins(local) if local else None, "api_url": api_url,
                              "api": ready}
    emit(result, json_out=json_out, render=_render)


def _render(result: dict[str, Any]) -> None:
    up_ = result["up"]
    if up_:
        console.print(f"fleet up (pid {up_['pid']}) since {up_['started_at']}; NATS {up_['nats_url']}"
                      + (f"; metrics {up_['metrics_url']}" if up_.get("metrics_url") else ""))
        table = Table("part", "state", "pid", "up since", "restarts", "last exit", "metrics", "duties")
        for part in [*up_.get("servers", []), *up_["parts"]]:
            table.add_row(part["name"], part["state"], str(part["pid"] or "-"), part["up_since"] or "-",
                          str(part["restarts"]), "-" if part["last_exit"] is None else str(part["last_exit"]),
                          part.get("metrics_url") or "-", _duties(part))
        console.print(table)
    console.print(f"API {result['api_url']}: {json.dumps(result['api']) if result['api'] else 'not answering'}")


def _duties(part: dict[str, Any]) -> str:
    """What the duty check says of a part: the stalled duty and since when, or why it was last
    restarted for one (shared.liveness)."""
    if part.get("stalled"):
        return f"[red]{part['stalled']} stalled since {part.get('stalled_since') or '?'}[/red]"
    if part.get("restarted_for"):
        return f"ok (restarted: {part['restarted_for']})"
    return "ok" if part.get("answered_at") else "-"


async def _fail(message: str) -> None:
    raise Unavailable(message)


async def _ready(api_url: str) -> Any:
    def fetch() -> Any:
        try:
            with urllib.request.urlopen(f"{api_url}/readyz", timeout=3) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"null")
        except (OSError, ValueError):
            return None

    return await asyncio.to_thread(fetch)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def init(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Create or check the event log and every bucket on an external NATS, as admin: what `fleet up`
    does before it starts the parts, for deployments whose parts may only use them (Kubernetes,
    hosts). Run it once with admin credentials (FLEET_NATS_URL, FLEET_NATS_CREDS); running it again
    only checks."""
    conf = settings(ctx)
    result = run(_init(conf), json_out=json_out)
    emit(result, json_out=json_out, render=lambda r: console.print(
        f"{r['stream']} and the buckets {', '.join(r['buckets'])} are in place with {r['replicas']} "
        f"replica{'s' if r['replicas'] > 1 else ''}"))


async def _init(conf: Any) -> dict[str, Any]:
    from shared.cluster import ensure_all
    from shared.connection import connect_nats
    from shared.lease import LEASE_BUCKET
    from shared.subjects import CHECKPOINTED, DESIRED_BUCKET, EVENTS_STREAM, checkpoint_bucket

    nc = await connect_nats(conf, "init")
    try:
        replicas, missing = await ensure_all(nc, conf)
        if missing:
            raise Unavailable(f"{', '.join(missing)} could not be created: `fleet init` needs admin credentials")
        buckets = [DESIRED_BUCKET, LEASE_BUCKET, *(checkpoint_bucket(s) for s in CHECKPOINTED)]
        return {"stream": EVENTS_STREAM, "replicas": replicas, "buckets": buckets}
    finally:
        await nc.close()
