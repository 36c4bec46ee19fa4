"""Events of the registry service's aggregates: sites (`fleet.evt.site.<id>`) and devices
(`fleet.evt.device.<id>`). Label and metadata fields carry the full new value, not a patch, so
every event can be applied on its own."""

from __future__ import annotations

from typing import Any

from shared.envelope import Event


class SiteEvent(Event, frozen=True, kw_only=True):
    """Base of site events."""

    id_field = "site_id"
    site_id: str


class SiteAdded(SiteEvent, frozen=True, kw_only=True):
    """A site was registered."""

    aggregate = "site"
    name: str = ""
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    windows: list[str] = []  # maintenance windows, canonical (shared.windows); none = always open


class SiteUpdated(SiteEvent, frozen=True, kw_only=True):
    """A site's name, labels or metadata changed (fields hold the new values)."""

    aggregate = "site"
    name: str = ""
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    windows: list[str] = []  # maintenance windows, canonical (shared.windows); none = always open


class SiteRetired(SiteEvent, frozen=True, kw_only=True):
    """A site was retired; it keeps its history and takes no new devices."""

    aggregate = "site"
    reason: str = ""


class DeviceEvent(Event, frozen=True, kw_only=True):
    """Base of device events."""

    id_field = "device_id"
    device_id: str


class DeviceAdded(DeviceEvent, frozen=True, kw_only=True):
    """A device was registered at a site."""

    aggregate = "device"
    site_id: str
    kind: str = "device"
    parent_id: str | None = None
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}


class DeviceUpdated(DeviceEvent, frozen=True, kw_only=True):
    """A device's kind, parent controller or metadata changed (fields hold the new values)."""

    aggregate = "device"
    kind: str = "device"
    parent_id: str | None = None
    metadata: dict[str, Any] = {}


class DeviceRelabeled(DeviceEvent, frozen=True, kw_only=True):
    """A device's labels were replaced by `labels`."""

    aggregate = "device"
    labels: dict[str, str] = {}


class DeviceMoved(DeviceEvent, frozen=True, kw_only=True):
    """A device moved from one site to another."""

    aggregate = "device"
    from_site_id: str
    to_site_id: str


class DeviceRetired(DeviceEvent, frozen=True, kw_only=True):
    """A device was retired: it keeps its history and can no longer be targeted."""

    aggregate = "device"
    reason: str = ""
