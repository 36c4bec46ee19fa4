"""`fleet audit`: the log as the audit trail (DESIGN §8, docs/audit.md) — `export` it as JSON
lines, `verify` it (or an export, offline) against its signed checkpoints, print the signing
`key`s announced in it, `rotate-key` of this data dir's checkpoint writer."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import typer

from fleet.cli.common import JsonOption, OutputOption, console, emit, err_console, fail, run, settings
from shared.config import Settings
from shared.errors import Invalid
from shared.times import parse_time

app = typer.Typer(help="The log as the audit trail.", no_args_is_help=True)

EXIT_NOT_INTACT = 7  # verify: the log (or export) is not what its checkpoints signed
# An unsigned tail older than FLEET_AUDIT_MAX_DELAY times this fails verify (checkpointing stopped).
UNSIGNED_MARGIN = 3


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
    start: str | None = typer.Option(None, "--from", help="First log sequence or RFC 3339 time."),
    end: str | None = typer.Option(None, "--to", help="Last log sequence or RFC 3339 time."),
    out: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Messages in sequence order, one `{"seq", "subject", "body"}` line each, the body being the
    exact stored bytes (the whole log without bounds). Time bounds compare with each event's `at`:
    from the first event at or after --from to the last before the first event after --to."""
    conf = settings(ctx)
    count = run(_export(conf, start, end, out), json_out=json_out)
    summary = {"events": count, "out": str(out) if out else None}
    if out is not None or json_out:
        emit(summary, json_out=json_out,
             render=lambda s: err_console.print(f"{s['events']} events written to {s['out']}"))


async def _export(conf: Settings, start: str | None, end: str | None, out: Path | None) -> int:
    from shared.audit.source import export_line
    from shared.connection import connect_nats
    from shared.envelope import decode_envelope
    from shared.errors import FleetError
    from shared.eventlog import EventLog

    from_seq, from_time = _bound(start, "from")
    to_seq, to_time = _bound(end, "to")
    nc = await connect_nats(conf, "audit", connect_for=5.0)
    count = 0
    started = from_time is None
    handle: IO[bytes] = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        async for seq, subject, body in EventLog(nc, consumers=False).replay_raw(from_seq or 1, to_seq):
            if from_time is not None or to_time is not None:
                try:
                    at = decode_envelope(body).at_time
                except FleetError:
                    at = None  # not an envelope: it belongs to the run it sits in
                if not started:
                    started = at is not None and at >= from_time  # type: ignore[operator]  # from_time is set whenever `started` is False
                    if not started:
                        continue
                if to_time is not None and at is not None and at > to_time:
                    break
            handle.write(export_line(seq, subject, body))
            count += 1
    finally:
        if out is not None:
            handle.close()
        else:
            handle.flush()
        await nc.close()
    return count


def _expect(text: str | None) -> tuple[int, bytes] | None:
    if text is None:
        return None
    seq, _, head = text.partition(":")
    try:
        value = bytes.fromhex(head)
        if not seq.isdigit() or len(value) != 32:
            raise ValueError
    except ValueError:
        raise Invalid(f"--expect takes SEQ:HEAD, a sequence and the 64 hex digits of the chain there "
                      f"(as verify printed it), not {text!r}", field="expect") from None
    return int(seq), value


def _keys(texts: list[str]) -> list[bytes]:
    from shared.audit.chain import public_key_of

    keys = []
    for text in texts:
        try:
            keys.append(public_key_of(text))
        except ValueError as exc:
            raise Invalid(f"--key {text!r} is not an ed25519 public key in base64 or hex: {exc}",
                          field="key") from None
    return keys


@app.command("verify")
def verify(
    ctx: typer.Context,
    start: int | None = typer.Option(None, "--from", help="Start at the checkpoint boundary at or before SEQ."),
    end: int | None = typer.Option(None, "--to", help="Stop after SEQ."),
    expect: str | None = typer.Option(None, "--expect", help="SEQ:HEAD from an earlier verification."),
    key: list[str] = typer.Option([], "--key", help="Trusted public key (base64 or hex); repeatable."),
    file: Path | None = typer.Option(None, "--file", help="Verify this export offline (no server)."),
    stream: str | None = typer.Option(None, "--stream", help="Verify this stream (e.g. a restored copy)."),
    json_out: bool = JsonOption, _output: str | None = OutputOption,
) -> None:
    """Re-compute the hash chain and check every checkpoint: exit 0 and one line when intact,
    else exit 7 naming the first bad sequence and what is wrong."""
    from shared.audit.source import verify_file

    try:
        pinned, expected = _keys(key), _expect(expect)
        if file is not None:
            report = verify_file(file, pinned=pinned, from_seq=start, to_seq=end, expect=expected)
        else:
            report = run(_verify_stream(settings(ctx), stream, pinned, start or 1, end, expected),
                         json_out=json_out)
    except Invalid as exc:
        fail(exc, json_out=json_out)
    emit(report, json_out=json_out, render=_render_report)
    if not report.intact:
        raise typer.Exit(EXIT_NOT_INTACT)


async def _verify_stream(conf: Settings, stream: str | None, pinned: list[bytes], start: int,
                         end: int | None, expected: tuple[int, bytes] | None) -> Any:
    from shared.audit.source import verify_stream
    from shared.connection import connect_nats
    from shared.eventlog import EventLog
    from shared.subjects import EVENTS_STREAM

    nc = await connect_nats(conf, "audit", connect_for=5.0)
    try:
        # the log itself with direct gets (all an auditor may do); a copy of it may lack them
        log = EventLog(nc, stream=stream or EVENTS_STREAM, consumers=stream is not None)
        return await verify_stream(log, pinned=pinned, from_seq=start, to_seq=end, expect=expected,
                                   max_unsigned_age=None if stream else conf.audit_max_delay * UNSIGNED_MARGIN)
    finally:
        await nc.close()


def _render_report(report: Any) -> None:
    for warning in report.warnings:
        console.print(f"WARNING: {warning}", highlight=False, soft_wrap=True)
    trusted = [k for k in report.keys if k.trusted]
    signer = ", ".join(f"{k.key_id} ({k.why})" for k in trusted) or "no trusted key"
    if report.intact:
        tail = f"; {report.unsigned} after it not yet signed" if report.unsigned else ""
        expect = ", extends the expected head" if report.expect_checked else ""
        console.print(
            f"intact: seq {report.from_seq}-{report.to_seq} ({report.events} events), "
            f"{report.checkpoints} checkpoints verified, signed through seq {report.signed_through} by "
            f"{signer}{tail}{expect}; head {report.head}", highlight=False, soft_wrap=True)
    else:
        problem = report.problem
        console.print(f"NOT INTACT: seq {problem.seq} {problem.kind}: {problem.detail}",
                      highlight=False, soft_wrap=True)


@app.command("key")
def key_command(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """The checkpoint signing keys announced in the log (pin one with `verify --key`)."""
    keys = run(_announced(settings(ctx)), json_out=json_out)

    def render(items: list[dict[str, Any]]) -> None:
        if not items:
            console.print("no signing key announced in the log yet")
        for item in items:
            endorsed = f", endorsed by {item['endorsed_by']}" if item["endorsed_by"] else ""
            console.print(f"{item['key_id']} {item['public_key']} (announced at seq {item['seq']}{endorsed})",
                          highlight=False, soft_wrap=True)

    emit(keys, json_out=json_out, render=render)


async def _announced(conf: Settings) -> list[dict[str, Any]]:
    from shared.audit.chain import AUDIT_SUBJECT_PREFIX
    from shared.connection import connect_nats
    from shared.eventlog import EventLog
    from shared.events.audit import AuditKeyAnnounced

    nc = await connect_nats(conf, "audit", connect_for=5.0)
    try:
        log = EventLog(nc, consumers=False)
        last = await log.last_stream_seq()
        return [{"key_id": r.event.key_id, "public_key": r.event.public_key, "seq": r.seq,
                 "endorsed_by": r.event.endorsed_by}
                async for r in log.replay(1, last, subjects=f"{AUDIT_SUBJECT_PREFIX}>")
                if isinstance(r.event, AuditKeyAnnounced)]
    finally:
        await nc.close()


@app.command("rotate-key")
def rotate_key(ctx: typer.Context, json_out: bool = JsonOption, _output: str | None = OutputOption) -> None:
    """Retire this data dir's checkpoint signing key and create a new one; the audit service
    announces it, endorsed by the old one, when it next starts."""
    from shared.audit.keys import rotate

    old, new = rotate(settings(ctx).data_path)
    emit({"old_key_id": old, "new_key_id": new}, json_out=json_out,
         render=lambda r: console.print(f"signing key {r['old_key_id']} retired, {r['new_key_id']} created; "
                                        "restart the audit service to announce it", highlight=False))
