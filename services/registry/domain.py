"""The registry's pure core: site and device states, the commands that change them, and
`decide`/`evolve` for both aggregates.

No I/O here. Facts about *other* aggregates (does the site exist? is the parent retired? how many
active devices does a site hold?) come in through a `View`, so the same decisions serve single
commands, bulk imports (a view that also sees the import's earlier lines) and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from shared.bounds import check_depth
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
from shared.errors import Conflict, Invalid, NotFound
from shared.events.registry import (
    DeviceAdded,
    DeviceMoved,
    DeviceRelabeled,
    DeviceRetired,
    DeviceUpdated,
    SiteAdded,
    SiteRetired,
    SiteUpdated,
)
from shared.ids import check_id, check_labels
from shared.selectors import IMPLICIT_LABELS
from shared.windows import DEVICE_LABEL as WINDOW_LABEL
from shared.windows import canonical as canonical_windows
from shared.windows import parse_label_windows

METADATA_MAX_BYTES = 16 * 1024
NAME_MAX = 200
REASON_MAX = 1000
PARENT_DEPTH_MAX = 64

_SIZE = msgspec.json.Encoder()


# --- state ---------------------------------------------------------------------------------------


def initial_site(site_id: str) -> Site:
    """The state of a site before its first event."""
    return Site(site_id=site_id)


def initial_device(device_id: str) -> Device:
    """The state of a device before its first event."""
    return Device(device_id=device_id)


class View(Protocol):
    """What a decision may know about other aggregates."""

    def site(self, site_id: str) -> Site:
        """The site's state (absent when unknown)."""
        ...

    def device(self, device_id: str) -> Device:
        """The device's state (absent when unknown)."""
        ...

    def active_devices(self, site_id: str) -> int:
        """How many active devices the site holds."""
        ...


# --- commands ------------------------------------------------------------------------------------


SiteCommand = AddSite | UpdateSite | RetireSite
DeviceCommand = AddDevice | UpdateDevice | RelabelDevice | MoveDevice | RetireDevice


# --- validation ----------------------------------------------------------------------------------


def check_device_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    """Valid labels, none of them shadowing the implicit selector labels `site` and `kind`."""
    for key in labels:
        if key in IMPLICIT_LABELS:
            raise Invalid(f"label key {key!r} is reserved: selectors match it against the device's "
                          f"{key}", field=f"{field}.{key}")
    if WINDOW_LABEL in labels:  # the device's own maintenance windows: refused now, not at rollout time
        parse_label_windows(labels[WINDOW_LABEL], f"{field}.{WINDOW_LABEL}")
    return check_labels(dict(labels), field)


def check_metadata(metadata: Mapping[str, Any], field: str = "metadata") -> dict[str, Any]:
    """Metadata is a small, shallow JSON object."""
    check_depth(metadata, field)
    size = len(_SIZE.encode(metadata))
    if size > METADATA_MAX_BYTES:
        raise Invalid(f"metadata is {size} bytes encoded; the limit is {METADATA_MAX_BYTES}", field=field)
    return dict(metadata)


def _check_text(value: str, limit: int, field: str) -> str:
    if len(value) > limit:
        raise Invalid(f"longer than {limit} characters", field=field)
    return value


def check_spec(spec: DeviceSpec) -> DeviceSpec:
    """Raise Invalid for the first malformed field of a device spec."""
    check_id(spec.device_id, "device_id")
    check_id(spec.site_id, "site_id")
    check_id(spec.kind, "kind")
    if spec.parent_id is not None:
        check_id(spec.parent_id, "parent_id")
        if spec.parent_id == spec.device_id:
            raise Invalid("a device cannot be its own parent", field="parent_id")
    check_device_labels(spec.labels or {})
    check_metadata(spec.metadata or {})
    return spec


# --- decisions: sites ----------------------------------------------------------------------------


def decide_site(state: Site, command: SiteCommand, view: View) -> list[Event]:
    """The events a site command causes on `state`, or a refusal."""
    check_id(command.site_id, "site_id")
    match command:
        case AddSite():
            return _add_site(state, command)
        case UpdateSite():
            return _update_site(state, command)
        case RetireSite():
            return _retire_site(state, command, view)


def _site_fields(command: AddSite | UpdateSite, state: Site,
                 ) -> tuple[str, dict[str, str], dict[str, Any], list[str]]:
    name = state.name if command.name is None else _check_text(command.name, NAME_MAX, "name")
    labels = state.labels if command.labels is None else check_labels(dict(command.labels))
    metadata = state.metadata if command.metadata is None else check_metadata(command.metadata)
    windows = state.windows if command.windows is None else canonical_windows(command.windows, "windows")
    return name, labels, metadata, windows


def _add_site(state: Site, command: AddSite) -> list[Event]:
    name, labels, metadata, windows = _site_fields(command, Site(site_id=command.site_id))
    if state.status == "retired":
        raise Conflict(f"site {state.site_id} is retired; site ids are not reused", field="site_id")
    if state.status == "active":
        if (state.name, state.labels, state.metadata, state.windows) == (name, labels, metadata, windows):
            return []
        raise Conflict(f"site {state.site_id} already exists with different data "
                       "(use update_site to change it)", field="site_id")
    return [SiteAdded(site_id=command.site_id, name=name, labels=labels, metadata=metadata, windows=windows)]


def _require_active_site(state: Site) -> None:
    if state.status == "absent":
        raise NotFound(f"site {state.site_id} does not exist", field="site_id")
    if state.status == "retired":
        raise Conflict(f"site {state.site_id} is retired", field="site_id")


def _update_site(state: Site, command: UpdateSite) -> list[Event]:
    name, labels, metadata, windows = _site_fields(command, state)
    _require_active_site(state)
    if (state.name, state.labels, state.metadata, state.windows) == (name, labels, metadata, windows):
        return []
    return [SiteUpdated(site_id=state.site_id, name=name, labels=labels, metadata=metadata, windows=windows)]


def _retire_site(state: Site, command: RetireSite, view: View) -> list[Event]:
    reason = _check_text(command.reason, REASON_MAX, "reason")
    if state.status == "absent":
        raise NotFound(f"site {state.site_id} does not exist", field="site_id")
    if state.status == "retired":
        return []
    active = view.active_devices(state.site_id)
    if active:
        raise Conflict(f"site {state.site_id} still holds {active} active device(s); move or retire "
                       "them first", field="site_id")
    return [SiteRetired(site_id=state.site_id, reason=reason)]


# --- decisions: devices --------------------------------------------------------------------------


def decide_device(state: Device, command: DeviceCommand, view: View) -> list[Event]:
    """The events a device command causes on `state`, or a refusal."""
    check_id(command.device_id, "device_id")
    match command:
        case AddDevice():
            return add_device(state, command.spec(), view)
        case UpdateDevice():
            return _update_device(state, command, view)
        case RelabelDevice():
            labels = check_device_labels(command.labels)
            _require_active_device(state)
            return [] if labels == state.labels else [
                DeviceRelabeled(device_id=state.device_id, labels=labels)]
        case MoveDevice():
            check_id(command.site_id, "site_id")
            _require_active_device(state)
            if command.site_id == state.site_id:
                return []
            _require_active_site(view.site(command.site_id))
            return [DeviceMoved(device_id=state.device_id, from_site_id=state.site_id,
                                to_site_id=command.site_id)]
        case RetireDevice():
            reason = _check_text(command.reason, REASON_MAX, "reason")
            if state.status == "absent":
                raise NotFound(f"device {state.device_id} does not exist", field="device_id")
            return [] if state.status == "retired" else [
                DeviceRetired(device_id=state.device_id, reason=reason)]


def add_device(state: Device, spec: DeviceSpec, view: View) -> list[Event]:
    """Add a device (also one import line): identical data again is a no-op, different data a
    conflict, a retired id is never reused."""
    check_spec(spec)
    labels = spec.labels or {}
    metadata = spec.metadata or {}
    if state.status == "retired":
        raise Conflict(f"device {state.device_id} is retired; device ids are not reused",
                       field="device_id")
    if state.status == "active":
        wanted = {"site_id": spec.site_id, "kind": spec.kind, "parent_id": spec.parent_id,
                  "labels": labels, "metadata": metadata}
        differing = [name for name, value in wanted.items() if getattr(state, name) != value]
        if not differing:
            return []
        raise Conflict(f"device {state.device_id} already exists with different "
                       f"{', '.join(differing)}", field=differing[0])
    _require_active_site(view.site(spec.site_id))
    if spec.parent_id is not None:
        _require_parent(view.device(spec.parent_id))
    return [DeviceAdded(device_id=spec.device_id, site_id=spec.site_id, kind=spec.kind,
                        parent_id=spec.parent_id, labels=labels, metadata=metadata)]


def _require_active_device(state: Device) -> None:
    if state.status == "absent":
        raise NotFound(f"device {state.device_id} does not exist", field="device_id")
    if state.status == "retired":
        raise Conflict(f"device {state.device_id} is retired", field="device_id")


def _require_parent(parent: Device) -> None:
    if parent.status == "absent":
        raise NotFound(f"parent device {parent.device_id} does not exist", field="parent_id")
    if parent.status == "retired":
        raise Conflict(f"parent device {parent.device_id} is retired", field="parent_id")


def _update_device(state: Device, command: UpdateDevice, view: View) -> list[Event]:
    kind = state.kind if command.kind is None else check_id(command.kind, "kind")
    metadata = state.metadata if command.metadata is None else check_metadata(command.metadata)
    parent_id = state.parent_id
    if command.parent_id == "":
        parent_id = None
    elif command.parent_id is not None:
        parent_id = check_id(command.parent_id, "parent_id")
    _require_active_device(state)
    if parent_id is not None and parent_id != state.parent_id:
        _require_parent(view.device(parent_id))
        _refuse_cycle(state.device_id, parent_id, view)
    if (kind, parent_id, metadata) == (state.kind, state.parent_id, state.metadata):
        return []
    return [DeviceUpdated(device_id=state.device_id, kind=kind, parent_id=parent_id, metadata=metadata)]


def _refuse_cycle(device_id: str, parent_id: str, view: View) -> None:
    current: str | None = parent_id
    for _ in range(PARENT_DEPTH_MAX):
        if current is None:
            return
        if current == device_id:
            raise Conflict(f"making {parent_id} the parent of {device_id} would form a cycle",
                           field="parent_id")
        current = view.device(current).parent_id
    raise Invalid(f"parent chain is deeper than {PARENT_DEPTH_MAX}", field="parent_id")


# --- evolution -----------------------------------------------------------------------------------


def evolve_site(state: Site, event: Event) -> Site:
    """The site after one of its events."""
    match event:
        case SiteAdded():
            return Site(site_id=event.site_id, status="active", name=event.name,
                        labels=event.labels, metadata=event.metadata, windows=event.windows)
        case SiteUpdated():
            return msgspec.structs.replace(state, name=event.name, labels=event.labels,
                                           metadata=event.metadata, windows=event.windows)
        case SiteRetired():
            return msgspec.structs.replace(state, status="retired", retired_reason=event.reason)
    return state


def evolve_device(state: Device, event: Event) -> Device:
    """The device after one of its events."""
    match event:
        case DeviceAdded():
            return Device(device_id=event.device_id, status="active", site_id=event.site_id,
                          kind=event.kind, parent_id=event.parent_id, labels=event.labels,
                          metadata=event.metadata)
        case DeviceUpdated():
            return msgspec.structs.replace(state, kind=event.kind, parent_id=event.parent_id,
                                           metadata=event.metadata)
        case DeviceRelabeled():
            return msgspec.structs.replace(state, labels=event.labels)
        case DeviceMoved():
            return msgspec.structs.replace(state, site_id=event.to_site_id)
        case DeviceRetired():
            return msgspec.structs.replace(state, status="retired", retired_reason=event.reason)
    return state
