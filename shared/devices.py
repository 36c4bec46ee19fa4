"""What devices exchange with Fleetplane (DESIGN §5): the desired-state value in the KV bucket
`fleet_desired` and the heartbeat published on `fleet.hb.<site>.<device>`. Plain JSON, so any
NATS client in any language can be a device."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Health = Literal["ok", "degraded", "failed"]


class DesiredState(msgspec.Struct, frozen=True, kw_only=True):
    """Value of key `<device>` in bucket `fleet_desired`."""

    device_id: str
    snapshot_id: str
    config: dict[str, Any]
    config_hash: str
    rollout_id: str | None = None
    revision: int = 1


class EncodedDesiredState(msgspec.Struct, frozen=True, kw_only=True):
    """A DesiredState whose config is already JSON: encodes to the same bytes (same fields, same
    order). For writers that give one effective config to many devices, so it is encoded once per
    snapshot and site rather than once per device."""

    device_id: str
    snapshot_id: str
    config: msgspec.Raw
    config_hash: str
    rollout_id: str | None = None
    revision: int = 1


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A device's periodic report; `snapshot_id`/`config_hash` are null until it has a desired state."""

    device_id: str
    site: str
    seq: int
    at: str
    snapshot_id: str | None = None
    config_hash: str | None = None
    health: Health = "ok"
    metrics: dict[str, float] = {}
    agent_version: str = ""


DESIRED_ENCODER = msgspec.json.Encoder()
DESIRED_DECODER = msgspec.json.Decoder(DesiredState)
HEARTBEAT_ENCODER = msgspec.json.Encoder()
HEARTBEAT_DECODER = msgspec.json.Decoder(Heartbeat)
