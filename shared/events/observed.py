"""Observed-state events (`fleet.evt.observed.<device>`), written by the drift service when a
heartbeat reveals a *change*: online/offline, reported snapshot or hash, health, drift began or
ended, reconciliation attempts and giving up, and what operators did about drift. Heartbeats
themselves never enter the log."""

from __future__ import annotations

from shared.envelope import Event


class ObservedEvent(Event, frozen=True, kw_only=True):
    """Base of observed-state events."""

    id_field = "device_id"
    device_id: str


class DeviceCameOnline(ObservedEvent, frozen=True, kw_only=True):
    """A heartbeat arrived from a device that was offline or never heard from."""

    aggregate = "observed"
    site_id: str
    snapshot_id: str | None = None
    config_hash: str | None = None
    health: str = "ok"
    agent_version: str = ""


class DeviceWentOffline(ObservedEvent, frozen=True, kw_only=True):
    """No heartbeat for `offline_after` intervals; `last_seen` is the last heartbeat's time."""

    aggregate = "observed"
    last_seen: str


class DeviceReportedState(ObservedEvent, frozen=True, kw_only=True):
    """The device reports another snapshot or config hash than before."""

    aggregate = "observed"
    snapshot_id: str | None
    config_hash: str | None
    previous_snapshot_id: str | None = None
    previous_config_hash: str | None = None


class DeviceHealthChanged(ObservedEvent, frozen=True, kw_only=True):
    """The device's health changed (`ok`, `degraded`, `failed`); metrics as last reported."""

    aggregate = "observed"
    health: str
    previous: str
    metrics: dict[str, float] = {}


class DriftBegan(ObservedEvent, frozen=True, kw_only=True):
    """What the device runs has differed from desired for longer than the grace period."""

    aggregate = "observed"
    desired_snapshot_id: str | None
    desired_config_hash: str | None
    reported_snapshot_id: str | None
    reported_config_hash: str | None
    since: str


class DriftEnded(ObservedEvent, frozen=True, kw_only=True):
    """The device matches desired again (`resolution`: `converged`, `desired_changed`, `retired`)."""

    aggregate = "observed"
    duration_seconds: float
    resolution: str = "converged"


class ReconcileAttempted(ObservedEvent, frozen=True, kw_only=True):
    """The drift service re-put the device's desired state (KV revision bumped)."""

    aggregate = "observed"
    attempt: int
    revision: int
    retry_at: str | None = None  # when the next attempt is due if the device still drifts


class DeviceStuck(ObservedEvent, frozen=True, kw_only=True):
    """Reconciliation gave up after `attempts` tries; an operator must look."""

    aggregate = "observed"
    attempts: int


class ReconcileForced(ObservedEvent, frozen=True, kw_only=True):
    """An operator asked for reconciliation again: a stuck device's tries start over."""

    aggregate = "observed"
    reason: str = ""


class DriftAcknowledged(ObservedEvent, frozen=True, kw_only=True):
    """An operator accepted the device's drift as it is (a deliberate local change, say): it is not
    reconciled, nor marked stuck, until the drift ends or an operator forces reconciliation."""

    aggregate = "observed"
    reason: str = ""
