"""Pure tests of the contract in code: ids, labels, times, durations, envelopes, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.atomic import MAX_BATCH
from shared.commands import decode_error_field
from shared.config import Endpoints, load_settings, write_endpoints
from shared.devices import DESIRED_DECODER, DESIRED_ENCODER, DesiredState, EncodedDesiredState
from shared.envelope import UPCASTERS, Envelope, Event, decode_envelope, decode_event, encode_envelope, seal
from shared.errors import Invalid
from shared.eventlog import Write, _group_writes
from shared.ids import check_id, check_label, parse_label
from shared.times import format_time, parse_duration, parse_time

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Pinged(Event, frozen=True, kw_only=True):
    aggregate = "probe"
    id_field = "probe_id"
    probe_id: str
    count: int = 0


class Renamed(Event, frozen=True, kw_only=True):
    aggregate = "probe"
    id_field = "probe_id"
    schema_version = 2
    probe_id: str
    display_name: str


UPCASTERS[("Renamed", 1)] = lambda data: {"probe_id": data["probe_id"], "display_name": data["name"]}


@pytest.mark.parametrize("value", ["a", "site-1", "D_17", "0abc", "x" * 128])
def test_valid_ids(value: str) -> None:
    assert check_id(value, "device_id") == value


@pytest.mark.parametrize("value", ["", "-a", "_a", "a.b", "a b", "a*", "a>", "x" * 129, "é", 5, None])
def test_invalid_ids_name_the_field(value: object) -> None:
    with pytest.raises(Invalid) as err:
        check_id(value, "device_id")
    assert err.value.field == "device_id"


@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z"))
def test_every_id_matching_the_rule_is_accepted(value: str) -> None:
    assert check_id(value, "id") == value


def test_labels() -> None:
    check_label("tier", "edge")
    check_label("topology.kubernetes.io/zone", "a")
    assert parse_label("tier=edge") == ("tier", "edge")
    with pytest.raises(Invalid, match="label key"):
        check_label("Tier", "edge")
    with pytest.raises(Invalid, match="longer than 256"):
        check_label("tier", "x" * 257)
    with pytest.raises(Invalid, match="key=value"):
        parse_label("tier")


def test_times_round_trip_with_microseconds() -> None:
    text = format_time(NOW)
    assert text == "2026-01-02T03:04:05.000000Z"
    assert parse_time(text) == NOW
    with pytest.raises(Invalid, match="no time zone"):
        parse_time("2026-01-02T03:04:05")
    with pytest.raises(Invalid, match="RFC 3339"):
        parse_time("yesterday", field="at")


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600),
                                               ("7", 7), ("1.5s", 1.5), (3, 3.0), ("30d", 30 * 86400),
                                               ("1h30m", 5400), ("2d12h", 216000), ("1m30s500ms", 90.5),
                                               (" 1 h ", 3600)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5w", "-1s", "1 h m", "1h30", "h", "1.5.2s", "400d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(Invalid):
        parse_duration(text, field="bake")


def test_envelope_round_trip() -> None:
    envelope = seal(Pinged(probe_id="p1", count=3), actor="operator:alice", at=NOW,
                    causation_id="c1", correlation_id="c0")
    decoded = decode_envelope(encode_envelope(envelope))
    assert decoded.type == "Pinged"
    assert decoded.aggregate == "probe"
    assert decoded.aggregate_id == "p1"
    assert decoded.at == "2026-01-02T03:04:05.000000Z"
    assert decoded.at_time == NOW
    assert decode_event(decoded) == Pinged(probe_id="p1", count=3)
    assert Pinged(probe_id="p1").subject == "fleet.evt.probe.p1"


def test_unknown_event_type_decodes_to_none() -> None:
    body = encode_envelope(Envelope(type="FromTheFuture", v=1, id="x", aggregate="probe",
                                    aggregate_id="p", at=format_time(NOW), actor="t"))
    assert decode_event(decode_envelope(body)) is None


def test_old_version_is_upcast() -> None:
    envelope = Envelope(type="Renamed", v=1, id="x", aggregate="probe", aggregate_id="p",
                        at=format_time(NOW), actor="t",
                        data=msgspec.Raw(b'{"probe_id":"p","name":"old"}'))
    assert decode_event(envelope) == Renamed(probe_id="p", display_name="old")


def test_malformed_envelope_is_invalid() -> None:
    with pytest.raises(Invalid, match="not JSON"):
        decode_envelope(b"{nope")
    with pytest.raises(Invalid, match="not an event envelope"):
        decode_envelope(b'{"type": 1}')


def test_event_type_names_are_unique() -> None:
    with pytest.raises(TypeError, match="already taken"):
        class Pinged(Event, frozen=True, kw_only=True):
            aggregate = "other"
            id_field = "x"
            x: str


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("Object missing required field `device_id`", "device_id"),
        ("Expected `str`, got `int` - at `$.site_id`", "site_id"),
        ("Object missing required field `name` - at `$.gates[0]`", "gates[0].name"),
        ("Object contains unknown field `colour`", "colour"),
        ("Expected `object`, got `array`", None),
    ],
)
def test_decode_error_names_the_field(message: str, field: str | None) -> None:
    assert decode_error_field(message) == field


def _write(n: int, i: int = 0) -> Write:
    envelope = seal(Pinged(probe_id=f"p{i}"), actor="t", at=NOW)
    return Write(f"fleet.evt.probe.p{i}", [envelope] * n, 0)


def test_writes_are_grouped_into_batches_without_splitting_one() -> None:
    groups = _group_writes([_write(600, 1), _write(300, 2), _write(200, 3), _write(1, 4)])
    assert [[len(w.envelopes) for w in g] for g in groups] == [[600, 300], [200, 1]]
    with pytest.raises(Invalid, match="atomic batch limit"):
        _group_writes([_write(MAX_BATCH + 1)])


def test_settings_precedence(tmp_path: Path) -> None:
    write_endpoints(tmp_path, Endpoints(nats_url="nats://from-file:1", api_url="http://file"))
    assert (tmp_path / "endpoints.json").stat().st_mode & 0o777 == 0o600
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_NATS_URL": "nats://from-env:2",
           "FLEET_DRIFT_GRACE": "2m", "FLEET_UNRELATED": "x"}
    settings = load_settings({"api_url": None}, env=env)
    assert settings.nats_url == "nats://from-env:2"
    assert settings.api_url == "http://file"
    assert settings.drift_grace == 120.0
    settings = load_settings({"nats_url": "nats://flag:3"}, env=env)
    assert settings.nats_url == "nats://flag:3"
    with pytest.raises(Invalid, match="drift_grace"):
        load_settings({}, env={**env, "FLEET_DRIFT_GRACE": "soon"})
    with pytest.raises(Invalid, match="offline_after"):
        load_settings({}, env={**env, "FLEET_OFFLINE_AFTER": "many"})


def test_effective_config_and_hash_are_canonical() -> None:
    from shared.configs import config_hash, deep_merge, effective_config, snapshot_id

    base = {"b": 1, "a": {"x": 1, "y": [1, 2]}}
    overrides = {"s1": {"a": {"y": [3]}, "c": True}}
    assert effective_config(base, overrides, "s1") == {"b": 1, "a": {"x": 1, "y": [3]}, "c": True}
    assert effective_config(base, overrides, "s2") == base
    assert config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1})
    import hashlib
    assert config_hash({"b": 1, "a": 2}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    one = snapshot_id("edge", {"b": 1, "a": 2}, {"fw": "1.2"}, {})
    two = snapshot_id("edge", {"a": 2, "b": 1}, {"fw": "1.2"}, {})
    assert one == two
    assert one.startswith("edge-")
    assert snapshot_id("edge", {"a": 3}, {}, {}) != one


def test_pure_domains_import_no_io() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "import services.registry.domain, services.snapshot.domain, services.rollout.domain, "
            "services.drift.domain\n"
            "print(sorted(m for m in ('nats', 'asyncpg', 'litestar') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8) | st.booleans(),
                       max_size=5),
       st.none() | st.text(min_size=1, max_size=8), st.integers(min_value=1, max_value=10**6))
def test_an_encoded_desired_state_is_byte_for_byte_a_desired_state(config: dict[str, Any], rollout: str | None,
                                                                   revision: int) -> None:
    fields: dict[str, Any] = {"device_id": "d1", "snapshot_id": "s-1", "config_hash": "ab" * 32,
                              "rollout_id": rollout, "revision": revision}
    plain = DESIRED_ENCODER.encode(DesiredState(config=config, **fields))
    encoded = DESIRED_ENCODER.encode(EncodedDesiredState(config=msgspec.Raw(msgspec.json.encode(config)), **fields))
    assert encoded == plain
    assert DESIRED_DECODER.decode(encoded) == DesiredState(config=config, **fields)
