"""Command serving over NATS micro: typed decoding, error replies that name the field, idempotent
command ids (also across a restart), conflicts, and `$SRV` discovery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.aggregates import AggregateStore
from shared.commands import Command, CommandClient, CommandService, Context, Outcome
from shared.envelope import Event
from shared.errors import Conflict, Invalid, NotFound, Unavailable
from shared.eventlog import EventLog, Recorded
from shared.ids import check_id


class Opened(Event, frozen=True, kw_only=True):
    aggregate = "account"
    id_field = "account_id"
    account_id: str


class Deposited(Event, frozen=True, kw_only=True):
    aggregate = "account"
    id_field = "account_id"
    account_id: str
    amount: int


class Account(msgspec.Struct):
    account_id: str
    opened: bool = False
    balance: int = 0


class Open(Command, frozen=True, kw_only=True):
    account_id: str


class Deposit(Command, frozen=True, kw_only=True):
    account_id: str
    amount: int


def evolve(state: Account, event: Event) -> Account:
    match event:
        case Opened():
            return Account(state.account_id, opened=True)
        case Deposited(amount=amount):
            return Account(state.account_id, True, state.balance + amount)
    return state


def decide_open(state: Account, cmd: Open) -> Sequence[Event]:
    if state.opened:
        return []  # opening twice is a no-op
    return [Opened(account_id=cmd.account_id)]


def decide_deposit(state: Account, cmd: Deposit) -> Sequence[Event]:
    if not state.opened:
        raise NotFound(f"account {cmd.account_id} does not exist", field="account_id")
    if cmd.amount <= 0:
        raise Invalid("amount must be positive", field="amount")
    return [Deposited(account_id=cmd.account_id, amount=cmd.amount)]


async def start_bank(nc: NATS, log: EventLog,
                     more: Callable[[CommandService, AggregateStore[Account]], None] = lambda service, store: None,
                     ) -> tuple[CommandService, AggregateStore[Account]]:
    store: AggregateStore[Account] = AggregateStore(log, "account", Account, evolve)
    await store.rebuild()
    service = CommandService(nc, "bank")

    async def on_open(cmd: Open, ctx: Context) -> Outcome:
        check_id(cmd.account_id, "account_id")
        appended = await store.execute(cmd.account_id, lambda s: decide_open(s, cmd),
                                       command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        return Outcome(appended, {"account_id": cmd.account_id})

    async def on_deposit(cmd: Deposit, ctx: Context) -> Outcome:
        check_id(cmd.account_id, "account_id")
        appended = await store.execute(cmd.account_id, lambda s: decide_deposit(s, cmd),
                                       command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        return Outcome(appended, {"balance": store.get(cmd.account_id).state.balance})

    service.route("open", Open, on_open)
    service.route("deposit", Deposit, on_deposit)
    more(service, store)
    await service.start()
    return service, store


@pytest.fixture
async def bank(nc: NATS, eventlog: EventLog) -> AsyncIterator[CommandService]:
    service, _ = await start_bank(nc, eventlog)
    yield service
    await service.stop()


async def raw(nc: NATS, command: str, body: bytes) -> dict[str, Any]:
    reply = await nc.request(f"fleet.cmd.bank.{command}", body, timeout=5)
    decoded: dict[str, Any] = json.loads(reply.data)
    return decoded


async def test_commands_append_events_and_reply(bank: CommandService, nc: NATS, eventlog: EventLog) -> None:
    client = CommandClient(nc, actor="operator:alice")
    opened = await client.send("bank", "open", {"account_id": "acc-1"})
    assert opened.ok
    assert [(e.subject, e.seq) for e in opened.events] == [("fleet.evt.account.acc-1", 1)]
    deposited = await client.send("bank", "deposit", {"account_id": "acc-1", "amount": 5})
    assert deposited.result == {"balance": 5}
    recorded, _ = await eventlog.load("fleet.evt.account.acc-1")
    assert [r.envelope.type for r in recorded] == ["Opened", "Deposited"]
    assert recorded[1].envelope.actor == "operator:alice"
    assert recorded[1].envelope.causation_id == recorded[1].envelope.correlation_id


@pytest.mark.parametrize(
    ("command", "body", "field", "fragment"),
    [
        ("deposit", b"{not json", "body", "not valid JSON"),
        ("deposit", b'{"command_id": "c1", "amount": 5}', "account_id", "missing required field"),
        ("deposit", b'{"command_id": "c1", "account_id": "a", "amount": "five"}', "amount", "Expected `int`"),
        ("deposit", b'{"command_id": "c1", "account_id": "a b", "amount": 5}', "account_id", "not a valid id"),
        ("deposit", b'{"command_id": "c1", "account_id": "a", "amount": 5, "x": 1}', "x", "unknown field"),
        ("deposit", b'{"command_id": "bad id", "account_id": "a", "amount": 5}', "command_id", "not a valid id"),
        ("deposit", b'{"command_id": "c2", "account_id": "nobody", "amount": 5}', "account_id", "does not exist"),
    ],
)
async def test_bad_input_gets_an_error_naming_the_field_and_no_event(
    bank: CommandService, nc: NATS, eventlog: EventLog, command: str, body: bytes, field: str, fragment: str
) -> None:
    reply = await raw(nc, command, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] in ("invalid", "not_found")
    assert reply["error"]["field"] == field
    assert fragment in reply["error"]["message"]
    assert await eventlog.last_stream_seq() == 0


async def test_duplicate_command_id_gives_same_reply_and_one_event(
    bank: CommandService, nc: NATS, eventlog: EventLog
) -> None:
    client = CommandClient(nc)
    await client.send("bank", "open", {"account_id": "acc"})
    body = {"command_id": "dep-1", "account_id": "acc", "amount": 10}
    first = await client.send("bank", "deposit", body)
    again = await client.send("bank", "deposit", body)
    assert first == again
    recorded, _ = await eventlog.load("fleet.evt.account.acc")
    assert [r.envelope.type for r in recorded] == ["Opened", "Deposited"]


async def test_a_lost_reply_is_asked_for_again_with_the_same_command_id(
    bank: CommandService, nc: NATS, eventlog: EventLog
) -> None:
    # A stand-in for the server dropping a reply in flight (it does, across an update of the
    # services' account): the first answer is swallowed, the command was applied all the same.
    seen: list[str] = []

    async def lossy(msg: Msg) -> None:
        seen.append(json.loads(msg.data)["command_id"])
        answer = await nc.request(msg.subject.replace(".lossy.", ".bank."), msg.data, timeout=5)
        if len(seen) > 1:
            await msg.respond(answer.data)

    relay = await nc.subscribe("fleet.cmd.lossy.*", cb=lossy)
    try:
        client = CommandClient(nc, timeout=1.0)
        await client.send("bank", "open", {"account_id": "acc-lost"})
        reply = await client.send("lossy", "deposit", {"account_id": "acc-lost", "amount": 7})
    finally:
        await relay.unsubscribe()
    assert reply.result == {"balance": 7}
    assert len(seen) == 2 and seen[0] == seen[1]  # the same command, twice
    recorded, _ = await eventlog.load("fleet.evt.account.acc-lost")
    assert [r.envelope.type for r in recorded] == ["Opened", "Deposited"]  # applied once


async def test_a_command_unanswered_twice_is_unavailable(nc: NATS) -> None:
    seen: list[str] = []

    async def silent(msg: Msg) -> None:
        seen.append(json.loads(msg.data)["command_id"])

    sink = await nc.subscribe("fleet.cmd.mute.*", cb=silent)
    try:
        with pytest.raises(Unavailable, match="did not answer deposit in time"):
            await CommandClient(nc, timeout=0.3).send("mute", "deposit", {"account_id": "a", "amount": 1})
    finally:
        await sink.unsubscribe()
    assert len(seen) == 2 and seen[0] == seen[1]  # sent once more with its id, then given up


async def test_duplicate_command_id_after_restart_adds_no_event(nc: NATS, eventlog: EventLog) -> None:
    service, _ = await start_bank(nc, eventlog)
    client = CommandClient(nc)
    await client.send("bank", "open", {"account_id": "acc"})
    body = {"command_id": "dep-1", "account_id": "acc", "amount": 10}
    first = await client.send("bank", "deposit", body)
    await service.stop()

    service, store = await start_bank(nc, eventlog)  # a new process: empty reply cache
    again = await client.send("bank", "deposit", body)
    assert again.events == first.events
    assert store.get("acc").state.balance == 10
    assert await eventlog.last_stream_seq() == 2
    await service.stop()


def deposited(record: Recorded) -> Deposited:
    event = record.event
    assert isinstance(event, Deposited)
    return event


async def test_writers_racing_on_one_aggregate_are_retried_not_lost(nc: NATS, eventlog: EventLog) -> None:
    # Two service instances (as with two processes) share the queue group and deposit
    # concurrently; stale in-memory state is reloaded after each conflict.
    first, _ = await start_bank(nc, eventlog)
    second, _ = await start_bank(nc, eventlog)
    client = CommandClient(nc)
    try:
        await client.send("bank", "open", {"account_id": "acc"})
        replies = await asyncio.gather(*[
            client.send("bank", "deposit", {"account_id": "acc", "amount": 1}) for _ in range(40)])
        assert all(r.ok for r in replies)
        recorded, _ = await eventlog.load("fleet.evt.account.acc")
        assert sum(deposited(r).amount for r in recorded[1:]) == 40
    finally:
        await first.stop()
        await second.stop()


async def test_conflict_after_bounded_retries(nc: NATS, eventlog: EventLog) -> None:
    _, store = await start_bank(nc, eventlog)
    await store.execute("acc", lambda s: [Opened(account_id="acc")], command_id="c0",
                        actor="t", now=__import__("shared.times").times.utcnow())

    attempts = 0

    def always_stale(state: Account) -> Sequence[Event]:
        nonlocal attempts
        attempts += 1
        store.slots["acc"].seq = 0  # simulate a writer that never catches up
        return [Deposited(account_id="acc", amount=1)]

    store.slots["acc"].seq = 0
    with pytest.raises(Conflict, match="gave up"):
        await store.execute("acc", always_stale, command_id="c1", actor="t",
                            now=__import__("shared.times").times.utcnow())
    assert attempts == 10


async def test_service_is_discoverable_with_srv_ping_info_and_stats(bank: CommandService, nc: NATS) -> None:
    await CommandClient(nc).request("bank", "deposit", {"account_id": "nobody", "amount": 1})
    ping = json.loads((await nc.request("$SRV.PING.fleet-bank", b"", timeout=2)).data)
    assert ping["name"] == "fleet-bank"
    info = json.loads((await nc.request("$SRV.INFO.fleet-bank", b"", timeout=2)).data)
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert sorted(endpoints) == ["deposit", "open"]  # one endpoint per command
    assert endpoints["deposit"]["subject"] == "fleet.cmd.bank.deposit"
    assert endpoints["deposit"]["metadata"]["request_schema"] == "commands/bank.deposit.json"
    stats = json.loads((await nc.request("$SRV.STATS.fleet-bank", b"", timeout=2)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    assert by_name["deposit"]["data"]["by_result"] == {"not_found": 1}
    assert "metrics" in by_name["deposit"]["data"]  # the process's metrics, once per instance
    assert "metrics" not in by_name["open"]["data"]


async def test_an_unknown_command_has_no_responder(bank: CommandService, nc: NATS) -> None:
    with pytest.raises(Unavailable, match=r"no command 'withdraw'.*SRV.INFO"):
        await CommandClient(nc).send("bank", "withdraw", {})


class Balance(Command, frozen=True, kw_only=True):
    account_id: str


async def test_queries_are_not_remembered_and_replies_are_bounded_in_bytes(
    nc: NATS, eventlog: EventLog
) -> None:
    """One operator sending queries with fresh command ids (100 at once, and again) leaves nothing
    behind in the service; the replies kept for repeats of writes stay under their byte bound."""
    big = "x" * 48_000  # about what a list of 300 devices weighs

    def add_balance(service: CommandService, store: AggregateStore[Account]) -> None:
        async def on_balance(cmd: Balance, ctx: Context) -> Outcome:
            return Outcome((), {"balance": store.get(cmd.account_id).state.balance, "padding": big})

        service.route("balance", Balance, on_balance)  # before start: each command is an endpoint

    service, _ = await start_bank(nc, eventlog, add_balance)
    service._remember_bytes = 4_000  # a small bound, to see it hold
    try:
        client = CommandClient(nc)
        await client.send("bank", "open", {"account_id": "acc-q"})
        for _ in range(2):
            replies = await asyncio.gather(*(client.send("bank", "balance", {"account_id": "acc-q"})
                                             for _ in range(100)))
            assert all(r.result["padding"] == big for r in replies)
        assert len(service._replies) == 1  # only the open's reply (200 queries kept nothing)
        for n in range(60):
            await client.send("bank", "deposit", {"account_id": "acc-q", "amount": 1, "command_id": f"dep-{n}"})
        assert 0 < service.cached_bytes <= 4_000
        assert sum(len(body) for body in service._replies.values()) == service.cached_bytes
        # a recent write's repeat is still answered from memory (one event, the same reply)
        again = await client.send("bank", "deposit", {"account_id": "acc-q", "amount": 1, "command_id": "dep-59"})
        assert again.result == {"balance": 60}
    finally:
        await service.stop()


async def test_a_command_id_is_one_identitys_own(bank: CommandService, nc: NATS, eventlog: EventLog) -> None:
    """Bob sending a command under an id Alice used gets his own command done, not her reply."""
    alice, bob = CommandClient(nc, actor="operator:alice"), CommandClient(nc, actor="operator:bob")
    await alice.send("bank", "open", {"account_id": "acc-alice", "command_id": "c-same"})
    reply = await bob.send("bank", "open", {"account_id": "acc-bob", "command_id": "c-same"})
    assert reply.result == {"account_id": "acc-bob"}
    recorded, _ = await eventlog.load("fleet.evt.account.acc-bob")
    assert [(r.envelope.type, r.envelope.actor) for r in recorded] == [("Opened", "operator:bob")]
