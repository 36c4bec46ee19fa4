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

    site_id: Id
    name: Name | None = None
    labels: Labels | None = None
    metadata: dict[str, Any] | None = None
    windows: Windows | None = None


class UpdateSite(Command, frozen=True, kw_only=True):
    """Change a site's name, labels or metadata (omitted fields keep their value)."""

    site_id: Id
    name: Name | None = None
    labels: Labels | None = None
    metadata: dict[str, Any] | None = None
    windows: Windows | None = None  # replaces the site's windows; [] clears them


class RetireSite(Command, frozen=True, kw_only=True):
    """Retire a site that holds no active device."""

    site_id: Id
    reason: Reason = ""


class DeviceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device as given to `add_device` or one line of `import_devices`."""

    device_id: Id
    site_id: Id
    kind: Id = "device"
    parent_id: str | None = None
    labels: Labels | None = None
    metadata: dict[str, Any] | None = None


class AddDevice(Command, frozen=True, kw_only=True):
    """Register a device; the same device again with the same data is a no-op."""

    device_id: Id
    site_id: Id
    kind: Id = "device"
    parent_id: str | None = None
    labels: Labels | None = None
    metadata: dict[str, Any] | None = None

    def spec(self) -> DeviceSpec:
        """The device this command describes."""
        return DeviceSpec(device_id=self.device_id, site_id=self.site_id, kind=self.kind,
                          parent_id=self.parent_id, labels=self.labels, metadata=self.metadata)


class UpdateDevice(Command, frozen=True, kw_only=True):
    """Change a device's kind, parent (`""` clears it) or metadata; omitted fields stay."""

    device_id: Id
    kind: str | None = None
    parent_id: str | None = None
    metadata: dict[str, Any] | None = None


class RelabelDevice(Command, frozen=True, kw_only=True):
    """Replace a device's labels."""

    device_id: Id
    labels: Labels


class MoveDevice(Command, frozen=True, kw_only=True):
    """Move a device to another site."""

    device_id: Id
    site_id: Id


class RetireDevice(Command, frozen=True, kw_only=True):
    """Retire a device: it keeps its history and can no longer be targeted."""

    device_id: Id
    reason: Reason = ""


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

    include_retired: bool = False


class GetDevice(Command, frozen=True, kw_only=True):
    """One device."""

    device_id: Id


class ListDevices(Command, frozen=True, kw_only=True):
    """Devices by site and/or label selector, ordered by id, `limit` at a time after `after`."""

    site_id: Id | None = None
    selector: Expression = ""
    include_retired: bool = False
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 1000
    after: str | None = None


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
