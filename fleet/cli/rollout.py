"""`fleet rollout ...`: start, watch and steer progressive rollouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from fleet.cli.common import JsonOption, console, emit_reply, reason_command, run, send, settings
from shared.commands import Reply
from shared.contract.rollout import (
    ActOnRollout,
    GetRollout,
    ListRollouts,
    RollbackRollout,
    StartRollout,
    WhatIfGates,
    parse_canary,
    parse_fraction,
    parse_in_flight,
    parse_metric,
    parse_waves,
)
from shared.errors import Unavailable
from shared.times import parse_duration, parse_time

app = typer.Typer(help="Progressive rollouts: canary, waves, gates, pause/resume/abort, rollback.",
                  no_args_is_help=True)

# What `rollout watch` exits with once it stops (2-6 are the refusals of fleet.cli.common).
WATCH_OK, WATCH_FAILED, WATCH_NEEDS_OPERATOR = 0, 1, 7


def watch_exit(result: dict[str, Any]) -> int | None:
    """The exit code `rollout watch` stops with for this status, or None to keep watching.

    Only a terminal status or a pause that needs an operator stops the watch: a rollout that is
    rolling back has failed even though it has not finished, so it is watched to the end and exits
    1 (stopping at `rolling_back` with 0 let a pipeline go on after a failed release)."""
    status, phase = result["status"], result["phase"]
    if status == "completed":
        return WATCH_OK
    if status in ("rolled_back", "aborted") or (status == "paused" and phase == "gate_failed"):
        return WATCH_FAILED
    if status == "paused" or (status == "running" and phase == "held"):
        return WATCH_NEEDS_OPERATOR
    return None  # running, rolling_back: not over yet


def _render(result: dict[str, Any]) -> None:
    if "rollouts" in result:
        table = Table("rollout", "status", "phase", "wave", "snapshot", "target", "assigned")
        for r in result["rollouts"]:
            status = r["status"] + (" (waiting for windows)" if r.get("waiting_for_windows") else "")
            table.add_row(r["rollout_id"], status, r["phase"], f"{r['wave']}/{r['waves']}",
                          r["snapshot_id"], r["target"] or "(all)", f"{r['assigned']}/{r['devices']}")
        console.print(table)
        return
    console.print(f"[bold]{result['rollout_id']}[/bold] {result['status']} ({result['phase']}), wave "
                  f"{result['wave']}/{result['waves']}, {result['assigned']}/{result['devices']} devices "
                  f"assigned, snapshot {result['snapshot_id']}, target {result['target'] or '(all)'}")
    if result.get("reason"):
        console.print(f"  reason: {result['reason']}")
    if result.get("not_before"):
        console.print(f"  scheduled: assigns nothing before {result['not_before']}")
    if result.get("ignore_windows"):
        console.print("  maintenance windows ignored (--ignore-windows)")
    waiting = result.get("waiting_for_windows") or {}
    if waiting:
        console.print("  waiting for maintenance windows: " + ", ".join(
            f"{site} (opens {opens or 'not within 8 days'})" for site, opens in sorted(waiting.items())))
    for wave in result.get("wave_progress") or []:
        parts = ", ".join(f"{k} {v}" for k, v in wave["counts"].items())
        console.print(f"  wave {wave['wave']}: {wave['size']} devices — {parts}")
    gate = result.get("last_gate")
    if gate:
        verdict = "[green]passed[/green]" if gate["passed"] else "[red]failed[/red]"
        inputs = gate["inputs"]
        console.print(f"  last gate (wave {gate['wave']}): {verdict} — healthy {inputs['healthy']}/"
                      f"{inputs['devices']}, failed {inputs['failed']}, offline {inputs['offline']}, "
                      f"timed out {inputs['timed_out']}, metrics {inputs['metrics']}")
        for reason in gate["reasons"]:
            console.print(f"    {reason}")
    if "plan" in result and result.get("dry_run"):
        for number, wave in enumerate(result["plan"]):
            console.print(f"  wave {number + 1}: {len(wave)} devices: {', '.join(wave[:20])}"
                          f"{' ...' if len(wave) > 20 else ''}")
        for site, digest in sorted(result["config_hashes"].items()):
            console.print(f"  site {site}: config {digest[:16]}")
        for entry in result.get("schedule", []):
            starts, every, ends = (entry[k] or "unknown" for k in ("starts", "all_sites_open", "bake_ends"))
            pace = (f", {entry['in_flight']:,} in flight in {entry['rounds']} rounds"
                     if entry.get("rounds") else "")
            console.print(f"  wave {entry['wave']} expected: starts {starts}, every site open by {every}{pace}, "
                          f"bake ends {ends}")
        if result.get("expected_seconds") is not None:
            console.print(f"  expected duration: {result['expected_seconds'] / 60:,.1f} min "
                          "(a round of assignments settles in about one heartbeat interval)")
    elif "plan" in result:
        console.print("  the rollback waits for maintenance windows (--rollback-in-windows)" if result.get("in_windows")
                      else "  the rollback ignores maintenance windows: devices are restored at once")
        table = Table("device", "from", "to snapshot", "to config")
        for step in result["plan"]:
            table.add_row(step["device_id"], step["from_snapshot_id"] or "-",
                          step["to_snapshot_id"] or "(left as is: nothing before)",
                          (step["to_config_hash"] or "-")[:16])
        console.print(table)


@app.command("start")
def start(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id to roll out."),
    target: str = typer.Option("", "--target", help="Label selector, e.g. 'site in (a,b),tier=edge'."),
    rollout_id: str | None = typer.Option(None, "--id", help="Rollout id (default: derived)."),
    canary: str = typer.Option("", "--canary", help="5 | 2% | site:a,b"),
    waves: str = typer.Option("100", "--waves", help="Cumulative percentages, e.g. 10,50,100."),
    bake: str = typer.Option("0s", "--bake", help="Bake time per wave."),
    max_in_flight: str = typer.Option("", "--max-in-flight",
                                      help="Devices changed at once: a count (500) or a share of each wave (10%); "
                                           "default: the larger of 500 and 25% of the wave."),
    apply_timeout: str = typer.Option("5m", "--apply-timeout"),
    min_healthy: str = typer.Option("90%", "--min-healthy"),
    max_failed: str = typer.Option("5%", "--max-failed"),
    max_offline: str = typer.Option("10%", "--max-offline"),
    metric: list[str] = typer.Option([], "--metric", help="e.g. 'error_rate p95<=0.02' (repeatable)."),
    on_failure: str = typer.Option("pause", "--on-failure", help="pause | rollback"),
    approve_after: list[int] = typer.Option([], "--approve-after", help="Hold after wave N for promote."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and when each wave is expected to run."),
    not_before: str | None = typer.Option(None, "--not-before", help="Assign nothing before this RFC 3339 time."),
    ignore_windows: bool = typer.Option(False, "--ignore-windows",
                                        help="Emergency: assign regardless of maintenance windows (recorded)."),
    rollback_in_windows: bool = typer.Option(False, "--rollback-in-windows",
                                             help="A rollback waits for windows too (by default it ignores them)."),
    json_out: bool = JsonOption,
) -> None:
    """Start a rollout (or, with --dry-run, show its plan)."""
    command = StartRollout(
        snapshot_id=snapshot, target=target, rollout_id=rollout_id, canary=parse_canary(canary),
        waves=parse_waves(waves), **parse_in_flight(max_in_flight), bake_seconds=parse_duration(bake, "bake"),
        apply_timeout_seconds=parse_duration(apply_timeout, "apply_timeout"),
        min_healthy=parse_fraction(min_healthy, "min_healthy"), max_failed=parse_fraction(max_failed, "max_failed"),
        max_offline=parse_fraction(max_offline, "max_offline"), metrics=[parse_metric(m) for m in metric],
        on_failure=on_failure, approve_after=approve_after, dry_run=dry_run,  # type: ignore[arg-type]  # checked by the service
        not_before=parse_time(not_before, "not_before") if not_before else None,
        ignore_windows=ignore_windows, rollback_in_windows=rollback_in_windows)
    reply = run(send(settings(ctx), "rollout", "start", command), json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render)


reason_command(app, "rollout", "pause", ActOnRollout, "Stop assigning until resume.", "rollout_id", _render)
reason_command(app, "rollout", "resume", ActOnRollout,
               "Go on (after a failed gate: override it and move to the next wave).",
               "rollout_id", _render)
reason_command(app, "rollout", "abort", ActOnRollout, "Stop for good; what is assigned stays assigned.",
               "rollout_id", _render)
reason_command(app, "rollout", "promote", ActOnRollout, "Approve going on after a held wave.", "rollout_id", _render)


@app.command("ignore-windows")
def ignore_windows(ctx: typer.Context, rollout_id: str = typer.Argument(...),
                   reason: str = typer.Option("", "--reason", help="Why, for the record."),
                   json_out: bool = JsonOption) -> None:
    """Emergency: from now on assign (and roll back) regardless of maintenance windows; recorded with who."""
    reply = run(send(settings(ctx), "rollout", "ignore_windows", ActOnRollout(rollout_id=rollout_id, reason=reason)),
                json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    rollout_id: str = typer.Argument(...),
    to: str | None = typer.Option(None, "--to", help="Give touched devices this snapshot instead."),
    plan: bool = typer.Option(False, "--plan", help="Only show what would be restored."),
    json_out: bool = JsonOption,
) -> None:
    """Restore every device the rollout touched to what it had before (a plan with --plan)."""
    command = RollbackRollout(rollout_id=rollout_id, plan_only=plan, to_snapshot_id=to)
    reply = run(send(settings(ctx), "rollout", "rollback", command), json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render)


def _verdict(passed: bool | None) -> str:
    return {True: "[green]passed[/green]", False: "[red]failed[/red]", None: "[yellow]unknown[/yellow]"}[passed]


def _judged(passed: bool | None, reasons: list[str], metrics: dict[str, float]) -> str:
    numbers = "; ".join(reasons) or ", ".join(f"{k} = {v:g}" for k, v in metrics.items())
    return _verdict(passed) + (f": {escape(numbers)}" if numbers else "")


def _render_what_if(result: dict[str, Any]) -> None:
    outcomes = {"same": "same outcome", "stops_earlier": "[red]would have stopped earlier[/red]",
                "would_pass": "[green]would have passed the gate it failed[/green]",
                "unknown": "[yellow]could not be judged[/yellow]", "no_gates": "no gate verdict yet"}
    for rollout in result["results"]:
        console.print(f"[bold]{rollout['rollout_id']}[/bold] ({rollout['status']}): {outcomes[rollout['outcome']]}")
        if not rollout["waves"]:
            continue
        table = Table("wave", "devices", "recorded", "what-if")
        for wave in rollout["waves"]:
            table.add_row(str(wave["wave"]), f"{wave['devices']}: healthy {wave['healthy']}, failed "
                          f"{wave['failed']}, offline {wave['offline']}",
                          _judged(wave["recorded_passed"], wave["recorded_reasons"], wave["recorded_metrics"]),
                          _judged(wave["what_if_passed"], wave["what_if_reasons"] + wave["unknown"],
                                  wave["what_if_metrics"]))
        console.print(table)
    console.print(result["summary"])


@app.command("what-if")
def what_if(
    ctx: typer.Context,
    rollout_id: str | None = typer.Argument(None, help="One rollout (or use --since)."),
    since: str | None = typer.Option(None, "--since", help="Every rollout started within, e.g. 30d."),
    min_healthy: str | None = typer.Option(None, "--min-healthy", help="Proposed, e.g. 99%."),
    max_failed: str | None = typer.Option(None, "--max-failed", help="Proposed, e.g. 1%."),
    max_offline: str | None = typer.Option(None, "--max-offline", help="Proposed, e.g. 5%."),
    metric: list[str] = typer.Option([], "--metric", help="Proposed metric gates (replace the recorded ones)."),
    json_out: bool = JsonOption,
) -> None:
    """Judge every recorded gate verdict again with proposed thresholds, from the inputs in the log."""
    if rollout_id is None and since is None:
        since = "30d"
    command = WhatIfGates(
        rollout_id=rollout_id, since_seconds=parse_duration(since, "since") if since else None,
        min_healthy=None if min_healthy is None else parse_fraction(min_healthy, "min_healthy"),
        max_failed=None if max_failed is None else parse_fraction(max_failed, "max_failed"),
        max_offline=None if max_offline is None else parse_fraction(max_offline, "max_offline"),
        metrics=[parse_metric(m) for m in metric] or None)
    reply = run(send(settings(ctx), "rollout", "what_if", command), json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render_what_if)


@app.command("status")
def status(ctx: typer.Context, rollout_id: str = typer.Argument(...), json_out: bool = JsonOption) -> None:
    """One rollout: status, per-wave progress, the last gate verdict and its inputs."""
    reply = run(send(settings(ctx), "rollout", "get", GetRollout(rollout_id=rollout_id)), json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render)


@app.command("list")
def list_(ctx: typer.Context, json_out: bool = JsonOption) -> None:
    """All rollouts, newest first."""
    reply = run(send(settings(ctx), "rollout", "list", ListRollouts()), json_out=json_out)
    emit_reply(reply, json_out=json_out, render=_render)


@app.command("watch")
def watch(ctx: typer.Context, rollout_id: str = typer.Argument(...),
          interval: float = typer.Option(0.5, "--interval"), json_out: bool = JsonOption) -> None:
    """Live progress per wave until the rollout ends or needs an operator. Exit 0 completed; 1 failed
    (gate failed, rolling back then rolled back, aborted); 7 paused or held for `promote`."""
    conf = settings(ctx)

    async def get() -> dict[str, Any]:
        result: dict[str, Any] = (await send(conf, "rollout", "get", GetRollout(rollout_id=rollout_id))).result
        return result

    _, code = run(_watch(get, asyncio.sleep, interval, json_out), json_out=json_out)
    raise typer.Exit(code)


async def watch_until_done(get: Callable[[], Awaitable[dict[str, Any]]],
                           sleep: Callable[[float], Awaitable[None]], interval: float,
                           seen: Callable[[dict[str, Any]], None] = lambda result: None,
                           ) -> tuple[dict[str, Any], int]:
    """Poll `get` every `interval` (slept through `sleep`, so tests drive the clock) until
    `watch_exit` says stop; returns the last status and the exit code."""
    while True:
        try:
            result = await get()
        except Unavailable:
            await sleep(interval)
            continue
        seen(result)
        code = watch_exit(result)
        if code is not None:
            return result, code
        await sleep(interval)


async def _watch(get: Callable[[], Awaitable[dict[str, Any]]], sleep: Callable[[float], Awaitable[None]],
                 interval: float, json_out: bool) -> tuple[dict[str, Any], int]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        console=console, disable=json_out)
    bars: dict[int, Any] = {}

    def show(result: dict[str, Any]) -> None:
        for wave in result.get("wave_progress") or []:
            number = wave["wave"]
            if number not in bars:
                bars[number] = progress.add_task(f"wave {number}", total=wave["size"])
            settled = sum(wave["counts"].get(k, 0) for k in ("converged", "failed", "timed_out", "restored"))
            waiting = (result.get("waiting_for_windows") or {}) if number == result["wave"] else {}
            description = f"wave {number}" + (" — waiting for maintenance windows: " + ", ".join(
                f"{site} (opens {opens or '?'})" for site, opens in sorted(waiting.items())) if waiting else "")
            progress.update(bars[number], completed=settled, description=description)

    with Live(progress, console=console, transient=False, refresh_per_second=4) if not json_out else _null():
        result, code = await watch_until_done(get, sleep, interval, show)
    emit_reply(Reply(ok=True, result=result), json_out=json_out, render=_render)  # the last `get`'s reply
    return result, code


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
