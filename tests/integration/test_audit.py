"""The audit proof against a real nats-server: the checkpoint writer over FLEET_EVENTS (resuming
after a crash without a second checkpoint for a sequence), `fleet audit verify` of the stream, of
an export offline and of doctored copies of the stream (`--stream`), `fleet audit key`, and the
independent checker (tests/audit_verify_independent.py) run as a subprocess."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS
from nats.js import api

from services.audit.handlers import CheckpointWriter
from shared.audit.chain import b64
from shared.audit.keys import load_or_create, retired_key
from shared.audit.source import verify_stream
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog
from shared.events.audit import AuditCheckpointed
from tests.integration.test_projections import append_history
from tests.integration.test_projections_cli import fleet

INDEPENDENT = Path(__file__).parent.parent / "audit_verify_independent.py"
KEY = SigningKey(bytes(range(32)))


async def checkpoints(log: EventLog) -> list[tuple[int, AuditCheckpointed]]:
    last = await log.last_stream_seq()
    return [(r.seq, r.event) async for r in log.replay(1, last, subjects="fleet.evt.audit.>")
            if isinstance(r.event, AuditCheckpointed)]


async def written_log(log: EventLog, every: int = 25) -> CheckpointWriter:
    """A history of events with a writer's checkpoints, closed by a shutdown checkpoint."""
    writer = CheckpointWriter(log, KEY, every=every)
    await writer.resume()
    await append_history(log, 10, rounds=1)
    await writer.catch_up()
    await append_history(log, 4, rounds=0, seed=9)
    await writer.finish()
    return writer


async def test_the_writer_checkpoints_every_n_and_at_shutdown(eventlog: EventLog) -> None:
    writer = await written_log(eventlog)
    cps = await checkpoints(eventlog)
    last = await eventlog.last_stream_seq()
    assert [cp.number for _, cp in cps] == list(range(1, len(cps) + 1))
    assert all(cp.from_seq == prev.through_seq + 1 for (_, prev), (_, cp) in itertools.pairwise(cps))
    sizes = [cp.through_seq - cp.from_seq + 1 for _, cp in cps]
    assert set(sizes[:-1]) == {25} and sizes[-1] <= 25  # every 25 messages, then the shutdown one
    last_event = max([seq async for seq, subject, _ in eventlog.replay_raw() if ".audit." not in subject])
    assert cps[-1][0] == last and cps[-1][1].through_seq >= last_event  # the shutdown checkpoint
    assert writer.written == len(cps)
    report = await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)])
    assert report.intact, report.problem
    through = cps[-1][1].through_seq
    assert (report.checkpoints, report.signed_through, report.unsigned) == (len(cps), through, last - through)


async def test_the_follower_checkpoints_as_the_log_grows(eventlog: EventLog) -> None:
    writer = CheckpointWriter(eventlog, KEY, every=10)
    await writer.resume()
    following = asyncio.create_task(writer.follow())
    try:
        head = await append_history(eventlog, 6, rounds=1)
        async with asyncio.timeout(30):
            while writer.chain.through < head - 10:  # the last full block of 10 is covered
                await asyncio.sleep(0.02)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert (await verify_stream(eventlog)).intact


async def test_a_quiet_log_is_checkpointed_by_the_timer_duty(eventlog: EventLog) -> None:
    writer = CheckpointWriter(eventlog, KEY, every=1000)  # N is never reached here
    await writer.resume()
    head = await append_history(eventlog, 3, rounds=0)
    await writer.catch_up()
    assert writer.written == 0
    appended = await writer.tick()
    assert appended is not None
    [(_, cp)] = await checkpoints(eventlog)
    assert cp.through_seq == head
    await writer.catch_up()
    assert await writer.tick() is None  # only its own checkpoint is uncovered: nothing to sign


async def test_only_a_writer_that_may_write_writes_and_it_announces_its_key_first(eventlog: EventLog) -> None:
    holding = False

    async def lease() -> bool:  # what the HA lease will answer
        return holding

    writer = CheckpointWriter(eventlog, KEY, every=10, may_write=lease)
    await writer.resume()
    await append_history(eventlog, 4, rounds=1)
    await writer.catch_up()
    assert await writer.finish() is None
    assert await checkpoints(eventlog) == []
    holding = True
    await writer.catch_up()
    await writer.finish()
    assert await checkpoints(eventlog)
    report = await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)])
    assert report.intact, report.problem
    assert [k.seq > 1 for k in report.keys] == [True]  # announced when it first could write


async def test_a_standby_follows_the_holders_checkpoints_and_takes_over(eventlog: EventLog) -> None:
    holder = {"a": True}

    def lease(name: str) -> Callable[[], Awaitable[bool]]:
        async def held() -> bool:
            return holder["a"] == (name == "a")
        return held

    a = CheckpointWriter(eventlog, KEY, every=10, may_write=lease("a"))
    b = CheckpointWriter(eventlog, KEY, every=10, may_write=lease("b"))
    await a.resume()
    await b.resume()
    await append_history(eventlog, 5, rounds=1)
    await a.catch_up()
    await b.catch_up()
    assert b.written == 0
    assert b.chain.number == a.chain.number > 0  # the standby took in the holder's checkpoints
    assert len(b.chain.seqs) < 10 + a.chain.number  # and keeps only what they do not cover
    holder["a"] = False  # the lease moves to b
    await append_history(eventlog, 3, rounds=0, seed=4)
    await b.catch_up()
    await b.finish()
    assert b.written >= 1
    cps = await checkpoints(eventlog)
    assert [cp.number for _, cp in cps] == list(range(1, len(cps) + 1))
    assert (await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)])).intact


async def test_a_restarted_writer_resumes_without_a_second_checkpoint_for_a_sequence(eventlog: EventLog) -> None:
    first = CheckpointWriter(eventlog, KEY, every=20)
    await first.resume()
    await append_history(eventlog, 8, rounds=1)
    await first.catch_up()  # then it "crashes": no shutdown checkpoint
    assert first.written >= 1
    stale = first.chain  # what a writer that died just after appending had in memory
    second = CheckpointWriter(eventlog, KEY, every=20)
    await second.resume()
    assert (second.chain.number, second.chain.through) == (stale.number, stale.through)
    await append_history(eventlog, 3, rounds=0, seed=3)
    # two instances at once (no lease yet): the server lets only one write each checkpoint number
    await asyncio.gather(second.catch_up(), first.catch_up())
    await second.finish()
    restarted = CheckpointWriter(eventlog, KEY, every=20)
    await restarted.resume()
    assert await restarted.finish() is None  # nothing new since the last checkpoint but itself
    cps = await checkpoints(eventlog)
    throughs = [cp.through_seq for _, cp in cps]
    assert len(throughs) == len(set(throughs))
    assert [cp.number for _, cp in cps] == list(range(1, len(cps) + 1))
    assert (await verify_stream(eventlog)).intact


async def copy_stream(nc: NATS, name: str, messages: list[tuple[str, bytes]]) -> None:
    """A second stream holding `messages` under their own fleet.evt subjects (a restored,
    doctored backup): it listens on `<name>.fleet.evt.>` and stores without the prefix."""
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(
        name=name, subjects=[f"{name}.fleet.evt.>"], storage=api.StorageType.FILE,
        subject_transform=api.SubjectTransform(src=f"{name}.fleet.evt.>", dest="fleet.evt.>")))
    for subject, body in messages:
        await js.publish(f"{name}.{subject}", body, stream=name)


@pytest.mark.parametrize(("tamper", "kind"), [
    ("alter", "altered"), ("drop", "missing"), ("swap", "reordered"), ("insert", "inserted"), (None, None)])
async def test_verify_names_tampering_in_a_copy_of_the_stream(eventlog: EventLog, nc: NATS, tmp_path: Path,
                                                              nats_server: EmbeddedNats, tamper: str | None,
                                                              kind: str | None) -> None:
    await written_log(eventlog)
    messages = [(subject, body) async for _, subject, body in eventlog.replay_raw()]
    at = 30  # 1-based sequence of the event to tamper with
    i = at - 1
    if tamper == "alter":
        body = bytearray(messages[i][1])
        body[body.index(b'"at":"') + 8] ^= 0x01  # one byte of the event's time
        messages[i] = (messages[i][0], bytes(body))
    elif tamper == "drop":
        del messages[i]
    elif tamper == "swap":
        messages[i], messages[i + 1] = messages[i + 1], messages[i]
    elif tamper == "insert":
        messages.insert(i, (messages[i][0], messages[i][1].replace(b'"id":"', b'"id":"x')))
    name = f"COPY_{tamper or 'INTACT'}".upper()
    await copy_stream(nc, name, messages)
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url}
    code, out = await fleet("audit", "verify", "--stream", name, "--key", b64(bytes(KEY.verify_key)), "--json",
                            env=env)
    report = json.loads(out)
    if tamper is None:
        assert (code, report["intact"]) == (0, True), out
        return
    assert code == 7, out
    assert (report["problem"]["seq"], report["problem"]["kind"]) == (at, kind), out
    code, text = await fleet("audit", "verify", "--stream", name, env=env)
    assert code == 7
    assert text.startswith(f"NOT INTACT: seq {at} {kind}:"), text


async def independent(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the independent checker (no Fleetplane import) on an export."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, str(INDEPENDENT), str(path), *args],
                                   capture_output=True, text=True, check=False)


async def test_export_verifies_offline_and_with_an_independent_implementation(
        eventlog: EventLog, tmp_path: Path, nats_server: EmbeddedNats, creds: Callable[[str, str], str]) -> None:
    await written_log(eventlog)
    # as the auditor, who reads with direct gets only (it may create no consumer)
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url,
           "FLEET_NATS_CREDS": creds("auditor", "audrey")}
    export = tmp_path / "audit.jsonl"
    code, out = await fleet("audit", "export", "--out", str(export), "--json", env=env)
    assert code == 0, out
    code, out = await fleet("audit", "verify", "--json", env=env)
    assert code == 0, out
    online = json.loads(out)
    offline_env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": "nats://127.0.0.1:1"}  # no server
    code, out = await fleet("audit", "verify", "--file", str(export), "--json", env=offline_env)
    assert code == 0, out
    assert json.loads(out)["head"] == online["head"]

    checked = await independent(export, "--key", b64(bytes(KEY.verify_key)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.split()[:2] == ["intact", online["head"]]

    lines = export.read_bytes().splitlines(keepends=True)
    doctored = tmp_path / "doctored.jsonl"
    doctored.write_bytes(b"".join(lines[:11] + lines[12:]))  # seq 12 dropped
    code, out = await fleet("audit", "verify", "--file", str(doctored), "--json", env=offline_env)
    assert code == 7
    assert (json.loads(out)["problem"]["seq"], json.loads(out)["problem"]["kind"]) == (12, "missing")
    checked = await independent(doctored)
    assert checked.returncode == 1, checked.stdout


async def test_expect_and_key_commands(eventlog: EventLog, tmp_path: Path, nats_server: EmbeddedNats) -> None:
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": nats_server.url}
    key = load_or_create(tmp_path)
    assert (tmp_path / "secrets" / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    writer = CheckpointWriter(eventlog, key, every=25)
    await writer.resume()
    await append_history(eventlog, 6, rounds=1)
    await writer.finish()
    code, out = await fleet("audit", "key", "--json", env=env)
    assert code == 0, out
    [announced] = json.loads(out)
    assert announced["public_key"] == b64(bytes(key.verify_key))
    code, out = await fleet("audit", "verify", "--json", env=env)
    head = json.loads(out)["head"]

    await append_history(eventlog, 3, rounds=0, seed=5)
    code, out = await fleet("audit", "verify", "--expect", head, "--key", announced["public_key"], env=env)
    assert code == 0, out
    assert out.startswith("intact:") and "extends the expected head" in out
    forged = head[:-1] + ("0" if head[-1] != "0" else "1")
    code, out = await fleet("audit", "verify", "--expect", forged, "--json", env=env)
    assert code == 7 and json.loads(out)["problem"]["kind"] == "rewritten"
    code, out = await fleet("audit", "verify", "--key", b64(bytes(KEY.verify_key)), "--json", env=env)
    assert code == 7 and json.loads(out)["problem"]["kind"] == "bad_signature"
    code, out = await fleet("audit", "verify", "--expect", "12:nothex", env=env)
    assert code == 2
    cps = await checkpoints(eventlog)
    boundary = cps[0][1].through_seq + 1
    code, out = await fleet("audit", "verify", "--from", str(boundary + 3), "--to", str(boundary + 30), "--json",
                            env=env)
    ranged = json.loads(out)
    assert code == 0, out
    assert (ranged["from_seq"], ranged["to_seq"]) == (boundary, boundary + 30)  # from the boundary before --from
    code, out = await fleet("audit", "verify", "--from", str(boundary + 3), "--expect", "2:" + "00" * 32, env=env)
    assert code == 2, out  # an --expect before where verification starts is refused

    code, out = await fleet("audit", "rotate-key", "--json", env=env)  # announced endorsed by the retired one
    assert code == 0, out
    old, new = json.loads(out)["old_key_id"], json.loads(out)["new_key_id"]
    assert old == announced["key_id"]
    assert (tmp_path / "secrets" / f"audit-signing.{old}.retired").exists()
    rotated = CheckpointWriter(eventlog, load_or_create(tmp_path), every=25,
                               previous_key=functools.partial(retired_key, tmp_path))
    assert rotated.key_id == new
    await rotated.resume()
    await append_history(eventlog, 3, rounds=0, seed=6)
    await rotated.finish()
    code, out = await fleet("audit", "verify", "--key", announced["public_key"], "--json", env=env)
    assert code == 0, out
    assert [k["why"] for k in json.loads(out)["keys"]] == ["pinned", f"endorsed by {old}"]


async def test_a_squatted_checkpoint_number_does_not_stop_checkpointing(
        eventlog: EventLog, connect_as: Callable[..., Awaitable[Any]]) -> None:
    """A stolen audit identity puts junk on the next checkpoint numbers (expected sequence 0): the
    writer moves on to a free number, counts and logs it, and the log still verifies signed."""
    writer = CheckpointWriter(eventlog, KEY, every=1000)
    await writer.resume()
    await append_history(eventlog, 3, rounds=0)
    await writer.write()
    number = writer.chain.number
    squatter = (await connect_as("service:audit", "audit")).jetstream()
    for taken in (number + 1, number + 2):
        await squatter.publish(f"fleet.evt.audit.{taken}", b'{"junk": true}',
                               headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    await append_history(eventlog, 3, rounds=0, seed=4)
    written = await writer.finish()
    assert written is not None and writer.squatted == 2
    cps = await checkpoints(eventlog)
    assert [cp.number for _, cp in cps][-2:] == [number, number + 3]
    report = await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)])
    assert report.intact and report.signed_through == written.seq - 1
    assert report.warnings and "squatted" in report.warnings[0]  # verify tells the auditor


async def test_an_unsigned_tail_older_than_the_bound_is_not_intact(eventlog: EventLog) -> None:
    """Checkpointing stopped (squatted, or the writer gone): events left unsigned for longer than
    the bound make verify fail instead of saying intact with a growing unsigned tail."""
    await written_log(eventlog)
    await append_history(eventlog, 2, rounds=0, seed=3)  # nobody checkpoints these
    fresh = await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)], max_unsigned_age=3600)
    assert fresh.intact and fresh.unsigned > 0
    stale = await verify_stream(eventlog, pinned=[bytes(KEY.verify_key)], max_unsigned_age=0)
    assert not stale.intact and stale.problem is not None
    assert (stale.problem.kind, stale.problem.seq) == ("unsigned", fresh.to_seq - fresh.unsigned + 1)
