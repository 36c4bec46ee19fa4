"""Desired-state events (`fleet.evt.desired.<device>`), written by the rollout service when it
assigns a snapshot to a device (a wave, a rollback). The matching value is put in the KV bucket
`fleet_desired` (see shared.devices.DesiredState)."""

from __future__ import annotations

from shared.envelope import Event


class DesiredStateAssigned(Event, frozen=True, kw_only=True):
    """The device should run `snapshot_id` with effective config `config_hash`.

    `previous_*` hold what was desired before (None for the first assignment), so a rollback can
    be computed from the log alone. `reason` is `rollout`, `rollback` or `manual`."""

    aggregate = "desired"
    id_field = "device_id"
    device_id: str
    site_id: str
    snapshot_id: str
    config_hash: str
    revision: int
    rollout_id: str | None = None
    reason: str = "rollout"
    previous_snapshot_id: str | None = None
    previous_config_hash: str | None = None
