"""The config hash (DESIGN §5): RFC 8785 canonical JSON, the committed test vectors every agent
must pass, and the aliases that let an upgraded control plane recognise the legacy form."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fleet_agent.confighash import NotCanonicalizable, canonical_bytes, config_hash

from services.drift.domain import heartbeat_in_current_form, in_current_form
from shared.configs import current_hash, hash_aliases, legacy_config_hash
from shared.devices import Heartbeat
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import DeviceReportedState

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "contract" / "config-hash-vectors.json"
FLOATY = {"gain": 1.0, "ratio": 0.1, "limit": 1e21, "site name": "Zürich ✓"}


def vectors() -> list[dict[str, Any]]:
    return list(json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"])


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: v["name"])
def test_every_committed_vector_holds(vector: dict[str, Any]) -> None:
    """The config, parsed by two JSON parsers (the standard library's and msgspec's, which the
    agent reads its file with), canonicalizes to exactly the committed text and hash."""
    raw = VECTORS.read_bytes()
    as_msgspec = next(v for v in msgspec.json.decode(raw)["vectors"] if v["name"] == vector["name"])
    for config in (vector["config"], as_msgspec["config"]):
        assert canonical_bytes(config) == vector["canonical"].encode("utf-8")
        assert config_hash(config) == vector["sha256"] == hashlib.sha256(vector["canonical"].encode()).hexdigest()


def test_the_vectors_cover_what_canonicalizers_disagree_on() -> None:
    """Floats written as integers, exponents, negative zero, non-ASCII and astral-plane text,
    nested arrays and objects: each appears in the committed file's configs."""
    text = VECTORS.read_text(encoding="utf-8")
    canonical = " ".join(v["canonical"] for v in vectors())
    assert '"gain": 1.0' in text and '"gain":1,' in canonical  # 1.0 is written 1
    assert "1e+21" in canonical and "1e-7" in canonical and "5e-324" in canonical
    assert "-0.0" in text and '"z":0' in canonical
    assert "Zürich ✓" in canonical and "\U0001f600" in canonical and "\\u001f" in canonical
    assert "[[[]]]" in canonical


def test_the_hash_is_not_the_legacy_form_where_they_differ() -> None:
    assert config_hash(FLOATY) != legacy_config_hash(FLOATY)  # 1.0 and 1e21 are written differently
    assert config_hash({"a": 1, "b": "x"}) == legacy_config_hash({"a": 1, "b": "x"})  # same bytes


def test_a_config_jcs_cannot_write_is_refused() -> None:
    with pytest.raises(NotCanonicalizable):
        canonical_bytes({"n": 2**53 + 1})


def test_aliases_map_each_effective_config_legacy_to_current() -> None:
    overrides: dict[str, dict[str, Any]] = {"site-b": {"gain": 2.5}, "site-c": {"plain": "text"}}
    aliases = hash_aliases(FLOATY, overrides)
    at_b = {**FLOATY, "gain": 2.5}
    assert aliases[legacy_config_hash(FLOATY)] == config_hash(FLOATY)
    assert aliases[legacy_config_hash(at_b)] == config_hash(at_b)
    assert len(aliases) == 3  # site-c's config still holds the floats of the base
    assert hash_aliases({"a": 1}, {}) == {}  # nothing to translate where the forms agree
    assert current_hash(aliases, "something-else") == "something-else"
    assert current_hash(aliases, None) is None


def test_events_and_heartbeats_in_the_legacy_form_read_as_the_current_one() -> None:
    aliases = hash_aliases(FLOATY, {})
    old, new = legacy_config_hash(FLOATY), config_hash(FLOATY)
    assigned = DesiredStateAssigned(device_id="d1", site_id="s", snapshot_id="snap", config_hash=old, revision=1)
    assert in_current_form(assigned, aliases) == DesiredStateAssigned(
        device_id="d1", site_id="s", snapshot_id="snap", config_hash=new, revision=1)
    reported = DeviceReportedState(device_id="d1", snapshot_id="snap", config_hash=old)
    moved = in_current_form(reported, aliases)
    assert isinstance(moved, DeviceReportedState) and moved.config_hash == new
    beat = Heartbeat(device_id="d1", site="s", seq=1, at="2027-01-01T00:00:00Z", snapshot_id="snap", config_hash=old)
    assert heartbeat_in_current_form(beat, aliases).config_hash == new
    other = msgspec.structs.replace(beat, config_hash="f" * 64)
    assert heartbeat_in_current_form(other, aliases) is other
