"""The registry's pure core: decide/evolve for sites and devices, without any server."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.registry import domain
from shared.contract.registry import (
    AddDevice,
    AddSite,
    Device,
    DeviceSpec,
    MoveDevice,
    RelabelDevice,
    RetireDevice,
    RetireSite,
    Site,
    UpdateDevice,
    UpdateSite,
)
from shared.envelope import Event
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.events.registry import DeviceAdded, DeviceEvent, DeviceMoved, SiteAdded, SiteEvent


class World:
    """States of all sites and devices, advanced only through decide/evolve."""

    def __init__(self) -> None:
        self.sites: dict[str, Site] = {}
        self.devices: dict[str, Device] = {}
        self.events: list[Event] = []

    def site(self, site_id: str) -> Site:
        return self.sites.get(site_id, domain.initial_site(site_id))

    def device(self, device_id: str) -> Device:
        return self.devices.get(device_id, domain.initial_device(device_id))

    def active_devices(self, site_id: str) -> int:
        return sum(1 for d in self.devices.values() if d.site_id == site_id and d.status == "active")

    def run(self, command: Any) -> list[Event]:
        if isinstance(command, AddSite | UpdateSite | RetireSite):
            events = domain.decide_site(self.site(command.site_id), command, self)
        else:
            events = domain.decide_device(self.device(command.device_id), command, self)
        for event in events:
            self.apply(event)
        return events

    def apply(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, SiteEvent):
            self.sites[event.site_id] = domain.evolve_site(self.site(event.site_id), event)
        else:
            assert isinstance(event, DeviceEvent)
            self.devices[event.device_id] = domain.evolve_device(self.device(event.device_id), event)


def cmd(cls: type, **fields: Any) -> Any:
    return cls(command_id="c-1", **fields)


def test_add_site_then_devices() -> None:
    world = World()
    assert world.run(cmd(AddSite, site_id="s1", name="One", labels={"region": "eu"})) == [
        SiteAdded(site_id="s1", name="One", labels={"region": "eu"})]
    assert world.run(cmd(AddSite, site_id="s1", name="One", labels={"region": "eu"})) == []
    with pytest.raises(Conflict):
        world.run(cmd(AddSite, site_id="s1"))
    events = world.run(cmd(AddDevice, device_id="d1", site_id="s1", kind="plc", labels={"tier": "edge"}))
    assert events == [DeviceAdded(device_id="d1", site_id="s1", kind="plc", labels={"tier": "edge"})]
    assert world.device("d1").status == "active"


@pytest.mark.parametrize(
    ("command", "error", "field"),
    [
        (cmd(AddDevice, device_id="d2", site_id="ghost"), NotFound, "site_id"),
        (cmd(AddDevice, device_id="d2", site_id="s1", parent_id="ghost"), NotFound, "parent_id"),
        (cmd(AddDevice, device_id="d2", site_id="s1", parent_id="d2"), Invalid, "parent_id"),
        (cmd(AddDevice, device_id="d2", site_id="s1", labels={"kind": "x"}), Invalid, "labels.kind"),
        (cmd(AddDevice, device_id="d2", site_id="s1", metadata={"x": "y" * 17000}), Invalid, "metadata"),
        (cmd(AddDevice, device_id="-d2", site_id="s1"), Invalid, "device_id"),
        (cmd(AddDevice, device_id="d1", site_id="s1", kind="gateway"), Conflict, "kind"),
        (cmd(AddSite, site_id="s1", name="x" * 201), Invalid, "name"),
        (cmd(UpdateDevice, device_id="d1", kind="bad kind"), Invalid, "kind"),
        (cmd(RelabelDevice, device_id="d1", labels={"a b": "x"}), Invalid, "labels.a b"),
        (cmd(MoveDevice, device_id="d1", site_id="ghost"), NotFound, "site_id"),
        (cmd(RetireSite, site_id="s1"), Conflict, "site_id"),
        (cmd(RetireDevice, device_id="d1", reason="r" * 1001), Invalid, "reason"),
    ],
)
def test_refusals(command: Any, error: type[FleetError], field: str) -> None:
    world = World()
    world.run(cmd(AddSite, site_id="s1"))
    world.run(cmd(AddDevice, device_id="d1", site_id="s1"))
    before = list(world.events)
    with pytest.raises(error) as info:
        world.run(command)
    assert info.value.field == field
    assert world.events == before


def test_parent_cycles_are_refused() -> None:
    world = World()
    world.run(cmd(AddSite, site_id="s1"))
    world.run(cmd(AddDevice, device_id="a", site_id="s1"))
    world.run(cmd(AddDevice, device_id="b", site_id="s1", parent_id="a"))
    world.run(cmd(AddDevice, device_id="c", site_id="s1", parent_id="b"))
    with pytest.raises(Conflict, match="cycle"):
        world.run(cmd(UpdateDevice, device_id="a", parent_id="c"))
    assert world.run(cmd(UpdateDevice, device_id="c", parent_id="")) != []
    assert world.device("c").parent_id is None
    assert world.run(cmd(UpdateDevice, device_id="a", parent_id="c")) != []


def test_move_records_both_sites() -> None:
    world = World()
    world.run(cmd(AddSite, site_id="s1"))
    world.run(cmd(AddSite, site_id="s2"))
    world.run(cmd(AddDevice, device_id="d", site_id="s1"))
    assert world.run(cmd(MoveDevice, device_id="d", site_id="s2")) == [
        DeviceMoved(device_id="d", from_site_id="s1", to_site_id="s2")]
    assert world.run(cmd(MoveDevice, device_id="d", site_id="s2")) == []


def test_import_line_is_the_same_decision_as_add_device() -> None:
    world = World()
    world.run(cmd(AddSite, site_id="s1"))
    spec = DeviceSpec(device_id="d", site_id="s1", labels={"a": "1"})
    assert domain.add_device(world.device("d"), spec, world) == world.run(
        cmd(AddDevice, device_id="d", site_id="s1", labels={"a": "1"}))
    assert domain.add_device(world.device("d"), spec, world) == []


SITES = ["s1", "s2", "s3"]
DEVICES = ["d1", "d2", "d3", "d4"]
site_ids = st.sampled_from(SITES)
device_ids = st.sampled_from(DEVICES)
labels = st.dictionaries(st.sampled_from(["tier", "line", "bad key"]), st.sampled_from(["a", "b"]), max_size=2)
maybe_parent = st.one_of(st.none(), device_ids)
commands = st.one_of(
    st.builds(lambda s, n, lb: cmd(AddSite, site_id=s, name=n, labels=lb), site_ids, st.sampled_from(["", "x"]), labels),
    st.builds(lambda s, n: cmd(UpdateSite, site_id=s, name=n), site_ids, st.sampled_from(["", "y"])),
    st.builds(lambda s: cmd(RetireSite, site_id=s), site_ids),
    st.builds(lambda d, s, p, lb: cmd(AddDevice, device_id=d, site_id=s, parent_id=p, labels=lb),
              device_ids, site_ids, maybe_parent, labels),
    st.builds(lambda d, p, k: cmd(UpdateDevice, device_id=d, parent_id=p, kind=k),
              device_ids, st.one_of(maybe_parent, st.just("")), st.sampled_from([None, "plc", "gateway"])),
    st.builds(lambda d, lb: cmd(RelabelDevice, device_id=d, labels=lb), device_ids, labels),
    st.builds(lambda d, s: cmd(MoveDevice, device_id=d, site_id=s), device_ids, site_ids),
    st.builds(lambda d: cmd(RetireDevice, device_id=d), device_ids),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=40))
def test_any_command_sequence_replays_to_the_same_state(sequence: list[Any]) -> None:
    world = World()
    for command in sequence:
        before = (dict(world.sites), dict(world.devices), len(world.events))
        try:
            world.run(command)
        except FleetError:
            # a refusal changes nothing
            assert (world.sites, world.devices, len(world.events)) == before
            continue
        # the same command again changes nothing more (or is refused)
        with contextlib.suppress(FleetError):
            assert world.run(command) == []

    replayed = World()
    for event in world.events:
        replayed.apply(event)
    assert replayed.sites == world.sites
    assert replayed.devices == world.devices

    for device in world.devices.values():
        if device.status == "active":
            assert world.site(device.site_id).status == "active"  # no active device on a dead site
            assert not set(device.labels) & {"site", "kind", "bad key"}
        seen = {device.device_id}
        parent = device.parent_id
        while parent is not None:  # parent chains end: no cycles
            assert parent not in seen
            seen.add(parent)
            assert world.device(parent).status != "absent"
            parent = world.device(parent).parent_id


def test_site_maintenance_windows_are_checked_canonical_and_replaced_by_update() -> None:
    world = World()
    [added] = world.run(cmd(AddSite, site_id="ber", windows=["mon-fri 22:00-04:00 Europe/Berlin"]))
    assert isinstance(added, SiteAdded)
    assert added.windows == ["Mon-Fri 22:00-04:00 Europe/Berlin"]
    assert world.run(cmd(AddSite, site_id="ber", windows=["Mon-Fri 22:00-04:00 Europe/Berlin"])) == []  # same data
    with pytest.raises(Invalid, match="IANA") as info:
        world.run(cmd(UpdateSite, site_id="ber", windows=["Sat 00:00-24:00 UTC", "Sun 01:00-02:00 Berlin"]))
    assert info.value.field == "windows[1]"
    assert world.run(cmd(UpdateSite, site_id="ber", name="Berlin")) and world.site("ber").windows == [
        "Mon-Fri 22:00-04:00 Europe/Berlin"]  # omitted: kept
    world.run(cmd(UpdateSite, site_id="ber", windows=[]))
    assert world.site("ber").windows == []
