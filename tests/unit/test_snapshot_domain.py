"""The snapshot service's pure core: content-derived ids, versions, standing changes, diff."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.snapshot import domain
from services.snapshot.domain import SiteStatus
from shared.configs import snapshot_id
from shared.contract.snapshot import CreateSnapshot, KnownGood, MarkGood, RetireSnapshot, Snapshot
from shared.envelope import Event
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.events.snapshot import SnapshotCreated, SnapshotMarkedKnownGood, SnapshotRetired


class World:
    def __init__(self, sites: dict[str, SiteStatus] | None = None) -> None:
        self.sites = sites or {"berlin": "active", "old": "retired"}
        self.snapshots: dict[str, Snapshot] = {}
        self.events: list[Event] = []

    def site_status(self, site_id: str) -> SiteStatus:
        return self.sites.get(site_id, "absent")

    def snapshot(self, sid: str) -> Snapshot:
        return self.snapshots.get(sid, domain.initial_snapshot(sid))

    def next_version(self, name: str) -> int:
        return 1 + max((s.version for s in self.snapshots.values() if s.name == name), default=0)

    def run(self, command: Any) -> list[Event]:
        if isinstance(command, CreateSnapshot):
            sid = domain.check_create(command)
            events = domain.decide_create(self.snapshot(sid), command, self, "operator:t")
        elif isinstance(command, RetireSnapshot):
            events = domain.decide_retire(self.snapshot(command.snapshot_id), command)
        else:
            events = domain.decide_mark_good(self.snapshot(command.snapshot_id), command)
        for event in events:
            self.apply(event)
        return events

    def apply(self, event: Event) -> None:
        self.events.append(event)
        sid = event.aggregate_id
        self.snapshots[sid] = domain.evolve(self.snapshot(sid), event)


def create(**fields: Any) -> CreateSnapshot:
    return CreateSnapshot(command_id="c", **fields)


def test_create_versions_per_name_and_same_content_is_a_no_op() -> None:
    world = World()
    [first] = world.run(create(name="web", config={"a": 1}, artifacts={"app": "1"}))
    assert isinstance(first, SnapshotCreated) and first.version == 1 and first.author == "operator:t"
    assert first.snapshot_id == snapshot_id("web", {"a": 1}, {"app": "1"}, {})
    assert world.run(create(name="web", config={"a": 1}, artifacts={"app": "1"}, description="other")) == []
    [second] = world.run(create(name="web", config={"a": 2}))
    assert isinstance(second, SnapshotCreated) and second.version == 2
    [other] = world.run(create(name="api", config={"a": 2}))
    assert isinstance(other, SnapshotCreated) and other.version == 1 and other.snapshot_id != second.snapshot_id


@pytest.mark.parametrize(
    ("command", "error", "field"),
    [
        (create(name="-web", config={}), Invalid, "name"),
        (create(name="web", config={"x": "y" * 262144}), Invalid, "config"),
        (create(name="web", config={"n": 2**53 + 1}), Invalid, "config"),  # no RFC 8785 form: no config hash
        (create(name="web", config={}, overrides={"berlin": {"n": [-(2**60)]}}), Invalid, "overrides.berlin"),
        (create(name="web", config={}, artifacts={"app": "1 2"}), Invalid, "artifacts.app"),
        (create(name="web", config={}, artifacts={"app": 2}), Invalid, "artifacts.app"),
        (create(name="web", config={}, overrides={"paris": {}}), Invalid, "overrides.paris"),
        (create(name="web", config={}, overrides={"old": {}}), Invalid, "overrides.old"),
        (create(name="web", config={}, overrides={"berlin": []}), Invalid, "overrides.berlin"),
        (create(name="web", config={}, overrides={"berlin": {"x": "y" * 262144}}), Invalid, "overrides.berlin"),
        (create(name="web", config={}, parent_id="web-000000000000"), NotFound, "parent_id"),
        (create(name="web", config={}, parent_id="no good"), Invalid, "parent_id"),
        (RetireSnapshot(command_id="c", snapshot_id="web-000000000000"), NotFound, "snapshot_id"),
        (MarkGood(command_id="c", snapshot_id="web-000000000000"), NotFound, "snapshot_id"),
        (MarkGood(command_id="c", snapshot_id="web-000000000000", target="a in"), Invalid, "target"),
    ],
)
def test_refusals(command: Any, error: type[FleetError], field: str) -> None:
    world = World()
    with pytest.raises(error) as info:
        world.run(command)
    assert info.value.field == field
    assert world.events == []


def test_override_for_a_known_site_and_effective_config() -> None:
    world = World()
    [event] = world.run(create(name="web", config={"db": {"pool": 1, "host": "h"}},
                               overrides={"berlin": {"db": {"pool": 5}}}))
    assert isinstance(event, SnapshotCreated) and event.overrides == {"berlin": {"db": {"pool": 5}}}


def test_mark_good_and_retire() -> None:
    world = World()
    [created] = world.run(create(name="web", config={}))
    assert isinstance(created, SnapshotCreated)
    sid = created.snapshot_id
    assert world.run(MarkGood(command_id="c", snapshot_id=sid, target=" tier = edge ")) == [
        SnapshotMarkedKnownGood(snapshot_id=sid, target="tier=edge")]
    assert world.run(MarkGood(command_id="c", snapshot_id=sid, target="tier==edge")) == []
    assert world.run(MarkGood(command_id="c", snapshot_id=sid, rollout_id="r-1")) != []
    assert world.snapshot(sid).known_good == (KnownGood("tier=edge"), KnownGood("", "r-1"))
    assert world.run(RetireSnapshot(command_id="c", snapshot_id=sid, reason="x")) == [
        SnapshotRetired(snapshot_id=sid, reason="x")]
    assert world.run(RetireSnapshot(command_id="c", snapshot_id=sid)) == []
    with pytest.raises(Conflict):
        world.run(MarkGood(command_id="c", snapshot_id=sid))


def test_diff_walks_nested_objects() -> None:
    a = Snapshot(snapshot_id="a", config={"db": {"pool": 1, "x": [1]}, "n": 1}, artifacts={"app": "1"})
    b = Snapshot(snapshot_id="b", config={"db": {"pool": 2, "x": [1]}, "n": 1.0}, overrides={"s": {"k": 1}})
    assert [(c.path, c.op, c.old, c.new) for c in domain.diff(a, b)] == [
        ("config.db.pool", "changed", 1, 2),
        ("config.n", "changed", 1, 1.0),  # 1 and 1.0 differ in JSON and in the config hash
        ("artifacts.app", "removed", "1", None),
        ("overrides.s", "added", None, {"k": 1}),
    ]
    assert domain.diff(a, a) == []


json_values = st.recursive(
    # the numbers a config may hold: what RFC 8785 writes (integers within ±2**53, finite doubles)
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
configs = st.dictionaries(st.text(max_size=5), json_values, max_size=5)


def shuffled(value: Any, data: st.DataObject) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        keys = data.draw(st.permutations(list(value)))
        return {k: shuffled(value[k], data) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, data) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(configs, st.dictionaries(st.sampled_from(["app", "fw", "agent"]), st.sampled_from(["1", "2.0"])),
       st.dictionaries(st.sampled_from(["berlin"]), configs), st.data())
def test_snapshot_id_is_stable_under_key_order(config: dict[str, Any], artifacts: dict[str, str],
                                               overrides: dict[str, Any], data: st.DataObject) -> None:
    one = create(name="web", config=config, artifacts=artifacts, overrides=overrides)
    two = create(name="web", config=shuffled(config, data), artifacts=shuffled(artifacts, data),
                 overrides=shuffled(overrides, data))
    assert domain.check_create(one) == domain.check_create(two)
    world = World()
    assert len(world.run(one)) == 1
    assert world.run(two) == []  # creating the same content again is a no-op
    # and through JSON and back, as the wire carries it
    wire = json.loads(json.dumps({"name": "web", "config": config, "artifacts": artifacts, "overrides": overrides}))
    assert domain.check_create(create(**wire)) == domain.check_create(one)


commands = st.one_of(
    st.builds(lambda n, c: create(name=n, config=c), st.sampled_from(["web", "api"]), st.sampled_from([{}, {"a": 1}, {"a": 2}])),
    st.builds(lambda i: RetireSnapshot(command_id="c", snapshot_id=i), st.integers(0, 5)),
    st.builds(lambda i, t: MarkGood(command_id="c", snapshot_id=i, target=t), st.integers(0, 5),
              st.sampled_from(["", "tier=edge", "site in (a,b)"])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=25))
def test_any_command_sequence_replays_to_the_same_state(sequence: list[Any]) -> None:
    world = World()
    for drawn in sequence:
        command = drawn
        if not isinstance(drawn, CreateSnapshot):  # aim at a snapshot that exists, by index
            ids = sorted(world.snapshots)
            if not ids:
                continue
            command = type(drawn)(**{**{f: getattr(drawn, f) for f in drawn.__struct_fields__},
                                     "snapshot_id": ids[int(drawn.snapshot_id) % len(ids)]})
        try:
            world.run(command)
        except FleetError:
            continue
    replayed = World()
    for event in world.events:
        replayed.apply(event)
    assert replayed.snapshots == world.snapshots
    versions = sorted((s.name, s.version) for s in world.snapshots.values())
    for name in ("web", "api"):  # versions of a name are 1..n without gaps
        mine = [v for n, v in versions if n == name]
        assert mine == list(range(1, len(mine) + 1))
