"""`fleet audit export`: the log itself as JSON lines, straight from NATS (no read model between)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Optional

import typer

from fleet.cli.common import JsonOption, emit, err_console, run, settings
from shared.config import Settings
from shared.envelope import encode_envelope
from shared.times import parse_time

app = typer.Typer(help="The log as the audit trail.", no_args_is_help=True)


def _bound(text: str | None, field: str) -> tuple[int | None, datetime | None]:
    """(sequence, time) of a --from/--to bound: digits are a log sequence, else an RFC 3339 time."""
    if text is None:
        return None, None
    if text.isdigit():
        return int(text), None
    return None, parse_time(text, field)


@app.command("export")
def export(
    ctx: typer.Context,
    start: Optional[str] = typer.Option(None, "--from", help="First log sequence or RFC 3339 time."),  # noqa: UP045
    end: Optional[str] = typer.Option(None, "--to", help="Last log sequence or RFC 3339 time."),  # noqa: UP045
    out: Optional[Path] = typer.Option(None, "--out", help="Write here instead of stdout."),  # noqa: UP045
    json_out: bool = JsonOption,
) -> None:
    """Events in sequence order, one envelope per line (the whole log without bounds). Time
    bounds compare with each event's `at`."""
    conf = settings(ctx)
    count = run(_export(conf, start, end, out), json_out=json_out)
    summary = {"events": count, "out": str(out) if out else None}
    if out is not None or json_out:
        emit(summary, json_out=json_out,
             render=lambda s: err_console.print(f"{s['events']} events written to {s['out']}"))


async def _export(conf: Settings, start: str | None, end: str | None, out: Path | None) -> int:
    from shared.connection import connect_nats
    from shared.eventlog import EventLog

    from_seq, from_time = _bound(start, "from")
    to_seq, to_time = _bound(end, "to")
    nc = await connect_nats(conf, "audit", connect_for=5.0)
    count = 0
    handle: IO[bytes] = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        log = EventLog(nc)
        async for record in log.replay(from_seq or 1, to_seq):
            if from_time is not None or to_time is not None:
                at = record.envelope.at_time
                if (from_time is not None and at < from_time) or (to_time is not None and at > to_time):
                    continue
            handle.write(encode_envelope(record.envelope) + b"\n")
            count += 1
    finally:
        if out is not None:
            handle.close()
        else:
            handle.flush()
        await nc.close()
    return count
