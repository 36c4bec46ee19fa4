"""The append port (`shared.appending.Pipeline`) against a real nats-server: the window is kept,
batches settle in the order sent, a dependency waits, a refusal goes to the writer's resync, and
a failure still settles (and folds in) every batch already sent."""

from __future__ import annotations

import pytest

from shared.appending import Pipeline
from shared.errors import Conflict
from shared.eventlog import Appended, EventLog, Write
from tests.integration.test_eventlog import counted, values


def batch(counter: str, *numbers: int, expected: int | None = None) -> list[Write]:
    return [Write(f"fleet.evt.counter.{counter}", [counted(counter, n) for n in numbers], expected)]


async def test_the_window_is_kept_and_batches_settle_in_the_order_sent(eventlog: EventLog) -> None:
    folded: list[str] = []
    most = 0
    async with Pipeline[str](eventlog, window=3, landed=lambda tag, _: folded.append(tag)) as pipeline:
        for n in range(10):
            await pipeline.send(batch(f"w{n}", n, n + 1), f"w{n}")
            most = max(most, pipeline.in_flight)
    assert most == 3 and pipeline.in_flight == 0
    assert folded == [f"w{n}" for n in range(10)] == [tag for tag, _ in pipeline.stored]
    for n in range(10):
        recorded, last = await eventlog.load(f"fleet.evt.counter.w{n}")
        assert values(recorded) == [n, n + 1]
        assert pipeline.last[f"fleet.evt.counter.w{n}"] == last


async def test_a_batch_sent_after_another_waits_until_that_one_landed(eventlog: EventLog) -> None:
    async with Pipeline[str](eventlog, window=4) as pipeline:
        await pipeline.send(batch("parent", 1), "parent")
        await pipeline.send(batch("other", 1), "other")
        await pipeline.send(batch("child", 1), "child", after=lambda flying: flying == "parent")
        assert [tag for tag, _ in pipeline.stored] == ["parent"]  # settled before the child went out
        assert pipeline.in_flight == 2


async def test_a_refused_batch_goes_to_the_writers_resync_and_the_others_land(eventlog: EventLog) -> None:
    await eventlog.append("fleet.evt.counter.taken", [counted("taken", 1)], 0)
    resynced: list[tuple[str, Conflict]] = []

    async def refused(tag: str, exc: Conflict) -> None:
        resynced.append((tag, exc))

    async with Pipeline[str](eventlog, window=2, refused=refused) as pipeline:
        await pipeline.send(batch("a", 1, expected=0), "a")
        await pipeline.send(batch("taken", 2, expected=0), "stale")  # someone wrote it first
        await pipeline.send(batch("b", 1, expected=0), "b")
    assert [tag for tag, _ in resynced] == ["stale"]
    assert [tag for tag, _ in pipeline.stored] == ["a", "b"]
    assert values((await eventlog.load("fleet.evt.counter.taken"))[0]) == [1]  # nothing of the refused batch


async def test_a_failure_still_settles_and_folds_in_every_batch_sent(eventlog: EventLog) -> None:
    await eventlog.append("fleet.evt.counter.taken", [counted("taken", 1)], 0)
    folded: list[tuple[str, list[Appended]]] = []

    async def refused(tag: str, exc: Conflict) -> None:
        raise exc  # this writer treats a refusal as a failure

    pipeline = Pipeline[str](eventlog, window=3, landed=lambda tag, where: folded.append((tag, where)),
                             refused=refused)

    async def write() -> None:
        async with pipeline:
            await pipeline.send(batch("taken", 2, expected=0), "stale")
            await pipeline.send(batch("c", 1), "c")
            await pipeline.send(batch("d", 1), "d")

    with pytest.raises(Conflict):
        await write()
    assert [tag for tag, _ in folded] == ["c", "d"]  # sent before the failure was known: folded in
    assert pipeline.in_flight == 0

