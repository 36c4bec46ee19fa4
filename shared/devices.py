"""What devices exchange with Fleetplane (DESIGN §5): the desired-state value in the KV bucket
`fleet_desired` and the heartbeat published on `fleet.hb.<site>.<device>`. Plain JSON, so any
NATS client in any language can be a device."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared.ids import Id

Health = Literal["ok", "degraded", "failed"]
HEARTBEAT_MAX_BYTES = 8192  # a heartbeat is a few hundred bytes; anything this large is refused unread
Hash = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,128}$")]  # printable, no spaces
MetricName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")]
Metric = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]  # finite


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

    device_id: Id
    site: Id
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    at: Annotated[str, msgspec.Meta(max_length=40)]
    snapshot_id: Id | None = None
    config_hash: Hash | None = None
    health: Health = "ok"
    metrics: Annotated[dict[MetricName, Metric], msgspec.Meta(max_length=64)] = {}
    agent_version: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[\x20-\x7e]*$")] = ""


DESIRED_ENCODER = msgspec.json.Encoder()
DESIRED_DECODER = msgspec.json.Decoder(DesiredState)
HEARTBEAT_ENCODER = msgspec.json.Encoder()
HEARTBEAT_DECODER = msgspec.json.Decoder(Heartbeat)
