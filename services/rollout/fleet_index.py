"""The rollout service's own view of the fleet, built from the log (never by asking another
service): devices and their sites/labels (registry events), snapshots (snapshot events), desired
state per device (desired events) and what devices report (observed events)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from services.rollout.domain import Desired, FleetView, Observed
from shared.configs import config_hash, current_hash, effective_config, hash_aliases
from shared.envelope import Event
from shared.errors import Invalid
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import (
    DeviceCameOnline,
    DeviceHealthChanged,
    DeviceReportedState,
    DeviceWentOffline,
)
from shared.events.registry import (
    DeviceAdded,
    DeviceMoved,
    DeviceRelabeled,
    DeviceRetired,
    DeviceUpdated,
    SiteAdded,
    SiteUpdated,
)
from shared.events.snapshot import SnapshotCreated, SnapshotMarkedKnownGood, SnapshotRetired
from shared.windows import DEVICE_LABEL, Window, parse_label_windows, parse_windows

log = logging.getLogger(__name__)


class DeviceInfo(msgspec.Struct, array_like=True):
    """A registered device as the rollout service needs it."""

    site: str
    kind: str = "device"
    labels: dict[str, str] = {}
    retired: bool = False


class SnapshotInfo(msgspec.Struct):
    """A snapshot's content and standing."""

    name: str
    version: int
    config: dict[str, Any]
    overrides: dict[str, dict[str, Any]] = {}
    retired: bool = False
    known_good: bool = False
    created_seq: int = 0

    def hash_for_site(self, site: str) -> str:
        """config_hash of the effective config for a device at `site`."""
        return config_hash(effective_config(self.config, self.overrides, site))


class FleetIndex:
    """Devices, snapshots, desired and observed state, advanced event by event."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.snapshots: dict[str, SnapshotInfo] = {}
        self.view = FleetView()
        self.desired_seq: dict[str, int] = {}  # device -> seq of its last desired event

    def apply(self, seq: int, event: Event) -> None:
        """Fold one event of any family this index cares about (others are ignored)."""
        match event:
            case SiteAdded() | SiteUpdated():
                self._windows(event.site_id, event.windows)
            case DeviceAdded():
                self.devices[event.device_id] = DeviceInfo(event.site_id, event.kind, dict(event.labels))
                self.view.site_of[event.device_id] = event.site_id
                self._device_windows(event.device_id, event.labels)
            case DeviceUpdated():
                if info := self.devices.get(event.device_id):
                    info.kind = event.kind
            case DeviceRelabeled():
                if info := self.devices.get(event.device_id):
                    info.labels = dict(event.labels)
                self._device_windows(event.device_id, event.labels)
            case DeviceMoved():
                if info := self.devices.get(event.device_id):
                    info.site = event.to_site_id
                    self.view.site_of[event.device_id] = event.to_site_id
            case DeviceRetired():
                if info := self.devices.get(event.device_id):
                    info.retired = True
            case SnapshotCreated():
                self.snapshots[event.snapshot_id] = SnapshotInfo(
                    event.name, event.version, dict(event.config), dict(event.overrides), created_seq=seq)
                self.view.hash_aliases.update(hash_aliases(event.config, event.overrides))
            case SnapshotRetired():
                if snap := self.snapshots.get(event.snapshot_id):
                    snap.retired = True
            case SnapshotMarkedKnownGood():
                if snap := self.snapshots.get(event.snapshot_id):
                    snap.known_good = True
            case DesiredStateAssigned():
                if seq > self.desired_seq.get(event.device_id, 0):
                    self.desired_seq[event.device_id] = seq
                    self.view.desired[event.device_id] = Desired(
                        event.snapshot_id, event.config_hash, event.revision, event.rollout_id)
            case DeviceCameOnline():
                observed = self.observed(event.device_id)
                observed.online, observed.health = True, event.health
                observed.config_hash = current_hash(self.view.hash_aliases, event.config_hash)
            case DeviceWentOffline():
                self.observed(event.device_id).online = False
            case DeviceReportedState():
                self.observed(event.device_id).config_hash = current_hash(self.view.hash_aliases, event.config_hash)
            case DeviceHealthChanged():
                observed = self.observed(event.device_id)
                observed.health = event.health
                if event.metrics:
                    observed.metrics = dict(event.metrics)

    def _windows(self, site: str, texts: list[str]) -> None:
        try:
            windows = parse_windows(texts)
        except Invalid as exc:
            # The registry refuses bad windows; one that no longer parses (say, a time zone this
            # machine's tz database lacks) must not stop the service: the site is treated as open.
            log.warning("site %s: maintenance windows ignored: %s", site, exc.message)
            windows = ()
        if windows:
            self.view.windows[site] = windows
        else:
            self.view.windows.pop(site, None)

    def _device_windows(self, device: str, labels: dict[str, str]) -> None:
        value = labels.get(DEVICE_LABEL)
        windows: tuple[Window, ...] = ()
        if value is not None:
            try:
                windows = parse_label_windows(value)
            except Invalid as exc:
                log.warning("device %s: maintenance-window label ignored: %s", device, exc.message)
        if windows:
            self.view.device_windows[device] = windows
        else:
            self.view.device_windows.pop(device, None)

    def observed(self, device: str) -> Observed:
        """The observed state of a device, made empty on first use (heartbeat metrics land here)."""
        observed = self.view.observed.get(device)
        if observed is None:
            observed = self.view.observed[device] = Observed()
        return observed
