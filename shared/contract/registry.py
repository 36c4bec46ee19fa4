"""The registry's commands (`fleet.cmd.registry.<command>`), the site and device values its
replies carry, and the bulk import's report."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared.ids import Id
from shared.wire import Command, Expression, Reason

Status = Literal["absent", "active", "retired"]
Labels = Annotated[dict[str, str], msgspec.Meta(max_length=64)]
Metadata = dict[str, Any]  # a small JSON object: at most 16 KiB encoded, 32 levels deep
Windows = Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=64)]
Name = Annotated[str, msgspec.Meta(max_length=200)]


# --- values --------------------------------------------------------------------------------------


class Site(msgspec.Struct, frozen=True, kw_only=True):
    """A site as the registry knows it (`status` "absent" until it is added)."""

    site_id: str
    status: Status = "absent"
    name: str = ""
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    retired_reason: str = ""
    windows: list[str] = []


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """A device as the registry knows it (`status` "absent" until it is added)."""

    device_id: str
    status: Status = "absent"
    site_id: str = ""
    kind: str = "device"
    parent_id: str | None = None
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    retired_reason: str = ""



# --- commands ------------------------------------------------------------------------------------


class AddSite(Command, frozen=True, kw_only=True):
    """Register a site; adding the same site again with the same data is a no-op."""

    site_id: Annotated[Id, msgspec.Meta(description="the site's id")]
    name: Annotated[Name | None, msgspec.Meta(description="a human name")] = None
    labels: Annotated[Labels | None, msgspec.Meta(description=(
        "labels `key: value` (keys `^[a-z0-9]([a-z0-9._/-]{0,62})$`, values up to 256 characters)"
    ))] = None
    metadata: Annotated[dict[str, Any] | None, msgspec.Meta(description=(
        "free JSON, at most 16 KiB encoded and 32 levels deep"
    ))] = None
    windows: Annotated[Windows | None, msgspec.Meta(description=(
        "maintenance windows `DAYS HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 22:00-04:00 Europe/Berlin`; "
        "none: always open"
    ))] = None


class UpdateSite(Command, frozen=True, kw_only=True):
    """Change a site's name, labels or metadata (omitted fields keep their value)."""

    site_id: Id
    name: Annotated[Name | None, msgspec.Meta(description="a new human name (null: unchanged)")] = None
    labels: Annotated[Labels | None, msgspec.Meta(description="replace the labels (null: unchanged)")] = None
    metadata: Annotated[dict[str, Any] | None, msgspec.Meta(description=(
        "replace the metadata (null: unchanged)"
    ))] = None
    windows: Annotated[Windows | None, msgspec.Meta(description=(
        "replace the maintenance windows; [] clears them (null: unchanged)"
    ))] = None


class RetireSite(Command, frozen=True, kw_only=True):
    """Retire a site that holds no active device."""

    site_id: Id
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class DeviceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device as given to `add_device` or one line of `import_devices`."""

    device_id: Id
    site_id: Annotated[Id, msgspec.Meta(description="the site it is at (must exist)")]
    kind: Annotated[Id, msgspec.Meta(description="its kind")] = "device"
    parent_id: Annotated[str | None, msgspec.Meta(description="its parent controller (a device id)")] = None
    labels: Labels | None = None
    metadata: dict[str, Any] | None = None


class AddDevice(Command, frozen=True, kw_only=True):
    """Register a device; the same device again with the same data is a no-op."""

    device_id: Id
    site_id: Annotated[Id, msgspec.Meta(description="the site it is at (must exist)")]
    kind: Annotated[Id, msgspec.Meta(description="its kind, e.g. plc, gateway, camera")] = "device"
    parent_id: Annotated[str | None, msgspec.Meta(description="its parent controller (a device id)")] = None
    labels: Annotated[Labels | None, msgspec.Meta(description=(
        "labels `key: value`; `site` and `kind` are reserved (selectors match the device's own)"
    ))] = None
    metadata: Annotated[dict[str, Any] | None, msgspec.Meta(description="free JSON, at most 16 KiB encoded")] = None

    def spec(self) -> DeviceSpec:
        """The device this command describes."""
        return DeviceSpec(device_id=self.device_id, site_id=self.site_id, kind=self.kind,
                          parent_id=self.parent_id, labels=self.labels, metadata=self.metadata)


class UpdateDevice(Command, frozen=True, kw_only=True):
    """Change a device's kind, parent (`""` clears it) or metadata; omitted fields stay."""

    device_id: Id
    kind: Annotated[str | None, msgspec.Meta(description="a new kind (null: unchanged)")] = None
    parent_id: Annotated[str | None, msgspec.Meta(description=(
        "a new parent; \"\" clears it (null: unchanged)"
    ))] = None
    metadata: Annotated[dict[str, Any] | None, msgspec.Meta(description=(
        "replace the metadata (null: unchanged)"
    ))] = None


class RelabelDevice(Command, frozen=True, kw_only=True):
    """Replace a device's labels."""

    device_id: Id
    labels: Annotated[Labels, msgspec.Meta(description="the device's labels from now on (replaces them all)")]


class MoveDevice(Command, frozen=True, kw_only=True):
    """Move a device to another site."""

    device_id: Id
    site_id: Annotated[Id, msgspec.Meta(description="the site it moves to")]


class RetireDevice(Command, frozen=True, kw_only=True):
    """Retire a device: it keeps its history and can no longer be targeted."""

    device_id: Id
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class ImportDevices(Command, frozen=True, kw_only=True):
    """Add many devices; each line is checked on its own (see handlers.import_devices)."""

    # Each line is a DeviceSpec, decoded on its own: a malformed line is refused in the report,
    # not the whole command.
    devices: Annotated[list[Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"$ref": "#/$defs/DeviceSpec"})]],
                       msgspec.Meta(max_length=2500)]



# --- queries and results -------------------------------------------------------------------------


class Refusal(msgspec.Struct, frozen=True):
    """Why one import line was not added."""

    index: int
    device_id: str | None
    code: str
    field: str | None
    message: str


class ImportReport(msgspec.Struct, frozen=True):
    """The result of `import_devices`."""

    added: int = 0
    unchanged: int = 0
    refused: list[Refusal] = []




class GetSite(Command, frozen=True, kw_only=True):
    """One site."""

    site_id: Id


class ListSites(Command, frozen=True, kw_only=True):
    """All sites (retired ones only when asked)."""

    include_retired: Annotated[bool, msgspec.Meta(description="list retired sites too")] = False


class GetDevice(Command, frozen=True, kw_only=True):
    """One device."""

    device_id: Id


class ListDevices(Command, frozen=True, kw_only=True):
    """Devices by site and/or label selector, ordered by id, `limit` at a time after `after`."""

    site_id: Annotated[Id | None, msgspec.Meta(description="only devices at this site")] = None
    selector: Annotated[Expression, msgspec.Meta(description="only devices matching this label selector")] = ""
    include_retired: Annotated[bool, msgspec.Meta(description="list retired devices too")] = False
    limit: Annotated[Annotated[int, msgspec.Meta(ge=1, le=5000)], msgspec.Meta(description=(
        "at most this many (a page may stop earlier to fit one message)"
    ))] = 1000
    after: Annotated[str | None, msgspec.Meta(description=(
        "the page after this device id (the `next` of the previous page)"
    ))] = None


class SiteSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A site with its device count, for listings."""

    site_id: Id
    status: Status
    name: str
    labels: dict[str, str]
    metadata: dict[str, Any]
    retired_reason: str
    active_devices: int
    windows: list[str] = []




class SiteList(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `list_sites`."""

    sites: list[SiteSummary]


class DevicePage(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `list_devices`: one page, how many matched, and the `after` of the next page
    (null: this was the last)."""

    devices: list[Device]
    total: int
    next: str | None
