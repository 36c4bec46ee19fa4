"""Events of the registry service's aggregates: sites (`fleet.evt.site.<id>`) and devices
(`fleet.evt.device.<id>`)."""

from __future__ import annotations

from typing import Any

from shared.envelope import Event


class SiteEvent(Event, frozen=True, kw_only=True):
    """Base of site events."""

    site_id: str


class SiteAdded(SiteEvent, frozen=True, kw_only=True):
    """A site was registered."""

    aggregate = "site"
    id_field = "site_id"
    name: str = ""
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}


class DeviceEvent(Event, frozen=True, kw_only=True):
    """Base of device events."""

    device_id: str


class DeviceAdded(DeviceEvent, frozen=True, kw_only=True):
    """A device was registered at a site."""

    aggregate = "device"
    id_field = "device_id"
    site_id: str
    kind: str = "device"
    parent_id: str | None = None
    labels: dict[str, str] = {}
    metadata: dict[str, Any] = {}
