"""The published contract (docs/contract/) equals what the code generates, covers every command
the services route and every event type, and agrees with the msgspec types it is made from."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from shared.contract import publish, schema
from shared.contract.catalog import COMMANDS
from shared.contract.rollout import (
    MetricThreshold,
    StartRollout,
    parse_canary,
    parse_in_flight,
    parse_metric,
    parse_waves,
)
from shared.envelope import Event, seal
from shared.errors import Invalid

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"
FILES = schema.export()


def test_the_committed_contract_equals_the_generated_one() -> None:
    generated = publish.files()
    committed = {str(p.relative_to(CONTRACT)): p.read_bytes() for p in CONTRACT.rglob("*")
                 if p.parent.name in ("commands", "replies", "events") or str(p.relative_to(CONTRACT)) in generated}
    assert sorted(committed) == sorted(generated), "run `fleet contract export docs/contract`"
    stale = [path for path in generated if committed[path] != generated[path]]
    assert not stale, f"stale: {stale}; run `fleet contract export docs/contract`"


@pytest.mark.parametrize("path", sorted(FILES))
def test_every_schema_is_a_valid_2020_12_schema(path: str) -> None:
    if path == "asyncapi.json":
        return
    Draft202012Validator.check_schema(FILES[path])


def test_every_event_type_and_command_has_a_schema_and_a_channel() -> None:
    doc = FILES["asyncapi.json"]
    addresses = {channel["address"] for channel in doc["channels"].values()}
    for cls in schema.event_types():
        assert f"events/{cls.__name__}.json" in FILES
        assert f"fleet.evt.{cls.aggregate}.{{id}}" in addresses
    for spec in COMMANDS:
        assert spec.subject in addresses
        assert f"commands/{spec.key}.json" in FILES and f"replies/{spec.key}.json" in FILES
    assert {"fleet.hb.{site}.{device}", "$KV.fleet_desired.{device}", "fleet.renew.{device}"} <= addresses


def test_a_command_schema_leaves_the_actor_out_and_names_defaults() -> None:
    start = FILES["commands/rollout.start.json"]["$defs"]["StartRollout"]
    assert "actor" not in start["properties"]
    assert start["required"] == ["snapshot_id"]
    assert start["properties"]["waves"]["default"] == [100]
    assert start["additionalProperties"] is False


def _validator(path: str) -> Draft202012Validator:
    return Draft202012Validator(FILES[path])


def test_the_short_forms_parse_into_what_the_schema_accepts() -> None:
    command = StartRollout(snapshot_id="s1", canary=parse_canary("2%"), waves=parse_waves("10,50,100"),
                           metrics=[parse_metric("error_rate p95<=0.02")], approve_after=[1])
    body = msgspec.to_builtins(command)
    body.pop("actor")
    _validator("commands/rollout.start.json").validate(body)
    assert body["metrics"] == [{"metric": "error_rate", "aggregate": "p95", "op": "<=", "value": 0.02}]
    assert body["canary"] == {"percent": 2.0}
    with pytest.raises(Invalid) as refused:
        parse_waves("50,10")
    assert refused.value.field == "waves"
    assert parse_in_flight("") == {"max_in_flight": 0}
    assert parse_in_flight("250") == {"max_in_flight": 250}
    assert parse_in_flight("10%") == {"max_in_flight": 0, "max_in_flight_percent": 10.0}
    for bad in ("1.5", "0", "ten", "%"):
        with pytest.raises(Invalid):
            parse_in_flight(bad)
    _validator("commands/rollout.start.json").validate(
        {"snapshot_id": "s1", **parse_in_flight("10%")})


def test_what_the_schema_refuses_msgspec_refuses_on_the_same_field() -> None:
    decoder = msgspec.json.Decoder(StartRollout)
    validator = _validator("commands/rollout.start.json")
    for body in ({"snapshot_id": "s 1"}, {"snapshot_id": "s", "waves": [0]},
                 {"snapshot_id": "s", "metrics": [{"metric": "x", "op": "=", "value": 1}]},
                 {"snapshot_id": "s", "min_healthy": 2}, {"snapshot_id": "s", "bogus": 1}):
        assert not validator.is_valid(body)
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(json.dumps(body))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _values(t: mi.Type) -> st.SearchStrategy[Any]:
    """JSON values shaped like the msgspec type `t` (its constraints are left to msgspec to judge)."""
    match t:
        case mi.StructType():
            return st.fixed_dictionaries({f.encode_name: _values(f.type) for f in t.fields if f.required},
                                         optional={f.encode_name: _values(f.type) for f in t.fields
                                                   if not f.required})
        case mi.ListType() | mi.VarTupleType() | mi.SetType() | mi.FrozenSetType():
            return st.lists(_values(t.item_type), max_size=3)
        case mi.TupleType():
            return st.tuples(*(_values(i) for i in t.item_types)).map(list)
        case mi.DictType():
            return st.dictionaries(_values(t.key_type), _values(t.value_type), max_size=3)
        case mi.UnionType():
            return st.one_of(*(_values(i) for i in t.types))
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.StrType():
            return st.text(max_size=12)
        case mi.IntType():
            return st.integers(min_value=-(2**40), max_value=2**40)
        case mi.FloatType():
            return st.floats(allow_nan=False, allow_infinity=False)
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case _:
            return _JSON


@pytest.mark.parametrize("cls", schema.event_types(), ids=lambda cls: cls.__name__)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
          deadline=None)
@given(data=st.data())
def test_every_event_struct_encodes_to_json_its_schema_accepts(cls: type[Event], data: st.DataObject) -> None:
    raw = data.draw(_values(mi.type_info(cls)))
    try:  # what msgspec refuses is no event of this type (e.g. a count that is not an integer)
        event = msgspec.convert(raw, cls)
    except msgspec.ValidationError:
        assume(False)
        return
    envelope = seal(event, actor="service:test", at="2026-01-01T00:00:00.000000Z",
                    causation_id="c", correlation_id="c")
    body = json.loads(msgspec.json.encode(envelope))
    errors = list(_validator(f"events/{cls.__name__}.json").iter_errors(body))
    assert not errors, (body, errors[0].message)


def test_metric_threshold_becomes_the_recorded_gate() -> None:
    gate = MetricThreshold(metric="latency_ms", aggregate="max", op="<", value=5).gate()
    assert (gate.metric, gate.aggregate, gate.op, gate.threshold) == ("latency_ms", "max", "<", 5)


DOC = CONTRACT.parent / "contract.md"
_NATS_REQ = re.compile(r"req (fleet\.cmd\.[a-z_]+\.[a-z_]+) '(\{.*\})'")
_CURL = re.compile(r"-d '(\{.*\})' https://[^/\s]+(/v1/\S+)")
_JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)


def _schema_of_path(path: str) -> tuple[str, dict[str, Any]]:
    """The command an HTTP path sends, and what the path itself adds to the body."""
    if path == "/v1/rollouts":
        return "rollout.start", {}
    if path.startswith("/v1/commands/"):
        return ".".join(path.removeprefix("/v1/commands/").split("/")), {}
    _, _, rollouts, rollout_id, action = path.split("/")
    assert rollouts == "rollouts"
    return f"rollout.{action}", {"rollout_id": rollout_id}


def test_the_examples_in_the_contract_are_valid_commands() -> None:
    text = DOC.read_text()
    examples = [(subject.removeprefix("fleet.cmd."), json.loads(body)) for subject, body in _NATS_REQ.findall(text)]
    for body, path in _CURL.findall(text):
        key, extra = _schema_of_path(path)
        examples.append((key, {**json.loads(body), **extra}))
    assert len(examples) >= 11
    for key, body in examples:
        errors = list(_validator(f"commands/{key}.json").iter_errors(body))
        assert not errors, (key, body, errors[0].message)
    # the rollout in prose is a valid start, and the documented event envelope a valid event
    start, event = (json.loads(block) for block in _JSON_BLOCK.findall(text)
                    if '"snapshot_id": "web-3f9c2a1b", "target"' in block or '"type": "RolloutPaused"' in block)
    _validator("commands/rollout.start.json").validate(start)
    _validator("events/RolloutPaused.json").validate(event)
    blocks = {name: json.loads(block) for block in _JSON_BLOCK.findall(text)
              for name, marker in (("heartbeat", '"seq": 812'), ("desired-state", '"revision": 3')) if marker in block}
    for name, value in blocks.items():
        _validator(f"{name}.json").validate(value)
    assert sorted(blocks) == ["desired-state", "heartbeat"]


def test_fleet_contract_export_writes_checks_and_sweeps(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleet.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["contract", "export", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["contract", "export", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "commands" / "rollout.start.json").write_text("{}")
    (tmp_path / "events" / "GoneAway.json").write_text("{}")  # a type that no longer exists
    (tmp_path / "config-hash-vectors.json").write_text("[]")  # not generated: left alone
    checked = runner.invoke(app, ["contract", "export", str(tmp_path), "--check"])
    assert checked.exit_code == 1 and "rollout.start.json" in checked.output and "GoneAway" in checked.output
    assert runner.invoke(app, ["contract", "export", str(tmp_path)]).exit_code == 0
    assert not (tmp_path / "events" / "GoneAway.json").exists()
    assert (tmp_path / "config-hash-vectors.json").read_text() == "[]"
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == {
        *publish.files(), "config-hash-vectors.json"}


def test_a_service_cannot_route_a_published_command_to_another_type() -> None:
    from typing import cast

    from nats.aio.client import Client as NATS

    from shared.commands import CommandService, Context, Outcome
    from shared.contract.rollout import ActOnRollout

    async def handle(cmd: Any, ctx: Context) -> Outcome:
        return Outcome()

    service = CommandService(cast(NATS, None), "rollout")
    with pytest.raises(TypeError, match=r"rollout.start takes StartRollout"):
        service.route("start", ActOnRollout, handle)
    service.route("pause", ActOnRollout, handle)  # the catalog's type
    partition = CommandService(cast(NATS, None), "drift-3")
    with pytest.raises(TypeError, match=r"drift-3\.reconcile takes Reconcile"):
        partition.route("reconcile", ActOnRollout, handle)
