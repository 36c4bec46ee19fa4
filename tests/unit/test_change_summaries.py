"""Every event type has a change summary an operator can read (issue 14): the test walks every
registered event type (so a type added later without a sentence of its own fails here), builds an
instance from its fields, and checks the summary is a sentence, not a type name."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

import shared.events  # noqa: F401 - registers every family
from projections.changes.model import change_row
from shared.envelope import EVENT_TYPES, Event, seal
from shared.events import rollout

CAMEL = re.compile(r"\b[A-Z][a-z]+[A-Z][A-Za-z]*\b")  # RolloutWavePlanned, DeviceCameOnline, ...


def _sample(info: msgspec.inspect.Type, name: str) -> Any:
    """A plausible value of a field's type."""
    match info:
        case msgspec.inspect.StrType():
            return "2026-11-30T18:00:00.000000Z" if name in ("at", "until", "since", "last_seen") else f"{name}-1"
        case msgspec.inspect.BoolType():
            return False
        case msgspec.inspect.IntType():
            return 2
        case msgspec.inspect.FloatType():
            return 1.5
        case msgspec.inspect.ListType():
            return [_sample(info.item_type, name), _sample(info.item_type, name + "b")]
        case msgspec.inspect.DictType():
            return {}
        case msgspec.inspect.UnionType():
            concrete = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            return _sample(concrete[0], name)
        case msgspec.inspect.StructType():
            return {f.name: _sample(f.type, f.name) for f in info.fields if f.required}
    return None


def instance(cls: type[Event]) -> Event:
    """An event of type `cls` with every required field filled."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return msgspec.convert({f.name: _sample(f.type, f.name) for f in info.fields if f.required}, cls)


# Every type of the contract's event families (tests register toy types of their own; not those).
CONTRACT_TYPES = sorted(n for n, cls in EVENT_TYPES.items() if cls.__module__.startswith("shared.events."))


@pytest.mark.parametrize("name", CONTRACT_TYPES)
def test_every_event_type_has_a_readable_summary(name: str) -> None:
    event = instance(EVENT_TYPES[name])
    row = change_row(1, seal(event, actor="operator:alice", at="2026-11-30T18:00:00Z"), event, lambda _: "site-1")
    assert row.summary, name
    assert name not in row.summary, f"{name}: {row.summary!r} names the type"
    assert not CAMEL.search(row.summary), f"{name}: {row.summary!r} reads like an internal name"
    assert len(row.summary.split()) >= 3, f"{name}: {row.summary!r} is not a sentence"


def test_every_family_is_walked() -> None:
    families = {EVENT_TYPES[n].aggregate for n in CONTRACT_TYPES}
    assert {"site", "device", "snapshot", "desired", "observed", "rollout"} <= families
    assert len(CONTRACT_TYPES) >= 30


def test_rollout_summaries_say_what_an_operator_needs() -> None:
    def summary(event: Event) -> str:
        return change_row(1, seal(event, actor="service:rollout", at="2026-11-30T18:00:00Z"), event,
                          lambda _: None).summary

    assert summary(rollout.RolloutWavePlanned(rollout_id="r-v3", wave=0, devices=["a", "b", "c"])) == (
        "rollout r-v3 wave 1 planned: 3 devices")
    assert summary(rollout.RolloutWaveBaking(rollout_id="r-web", wave=1, until="2026-11-30T19:00:00.000000Z")) == (
        "rollout r-web wave 2 settled; baking until 2026-11-30T19:00:00.000000Z")
    inputs = rollout.GateInputs(devices=20, healthy=0, converged=20, failed=20, timed_out=0, offline=0, degraded=0,
                                metrics={"error_rate p95": 0.5})
    failed = summary(rollout.RolloutGateEvaluated(rollout_id="r-v3", wave=0, passed=False, inputs=inputs,
                                                  gates=rollout.Gates(), reasons=["healthy 0/20 < 95%"]))
    assert failed == ("rollout r-v3 wave 1 gate failed: healthy 0/20 < 95% (healthy 0/20, failed 20, offline 0, "
                      "timed out 0, error_rate p95 0.5)")
