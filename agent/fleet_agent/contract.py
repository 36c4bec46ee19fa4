"""The device side of the wire contract (DESIGN §5, §11), defined once: the desired-state value in
the KV bucket `fleet_desired`, the heartbeat on `fleet.hb.<site>.<device>`, the subjects a device
uses, its inbox prefix and the credential-renewal reply. The control plane imports these (through
`shared.devices` and `shared.subjects`); plain JSON, so any NATS client in any language can be a
device (`docs/contract.md`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
Id = Annotated[str, msgspec.Meta(pattern=ID_RE.pattern)]  # the id rule, checked while decoding

HEARTBEATS_PREFIX = "fleet.hb"
DESIRED_BUCKET = "fleet_desired"
DESIRED_STREAM = f"KV_{DESIRED_BUCKET}"
RENEW_PREFIX = "fleet.renew"  # a device asks for a fresh JWT on fleet.renew.<its id>

Health = Literal["ok", "degraded", "failed"]
HEARTBEAT_MAX_BYTES = 8192  # a heartbeat is a few hundred bytes; anything this large is refused unread
Hash = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,128}$")]  # printable, no spaces
MetricName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")]
Metric = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]  # finite


def heartbeat_subject(site: str, device: str) -> str:
    """`fleet.hb.<site>.<device>`: core NATS, never stored."""
    return f"{HEARTBEATS_PREFIX}.{site}.{device}"


def desired_key_subject(device: str) -> str:
    """The subject a KV put to the desired-state bucket lands on, for core subscriptions."""
    return f"$KV.{DESIRED_BUCKET}.{device}"


def desired_get_subject(device: str) -> str:
    """The direct get of one device's key, subject in the path (what a device is allowed)."""
    return f"$JS.API.DIRECT.GET.{DESIRED_STREAM}.{desired_key_subject(device)}"


def renew_subject(device: str) -> str:
    """Where a device asks for a fresh JWT for itself."""
    return f"{RENEW_PREFIX}.{device}"


def device_inbox(device: str) -> str:
    """The inbox prefix a device must use: it may read replies only under it."""
    return f"_INBOX.{device}"


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


class Renewed(msgspec.Struct, omit_defaults=True):
    """The answer to a renewal request on `fleet.renew.<device>`: a JWT, or why not."""

    jwt: str | None = None
    error: str | None = None


DESIRED_ENCODER = msgspec.json.Encoder()
DESIRED_DECODER = msgspec.json.Decoder(DesiredState)
HEARTBEAT_ENCODER = msgspec.json.Encoder()
HEARTBEAT_DECODER = msgspec.json.Decoder(Heartbeat)
RENEWED_ENCODER = msgspec.json.Encoder()
RENEWED_DECODER = msgspec.json.Decoder(Renewed)


def decode_desired(data: bytes) -> DesiredState | None:
    """A desired-state value, or None when the bytes are not one (a delete marker, garbage)."""
    if not data:
        return None
    try:
        return DESIRED_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
