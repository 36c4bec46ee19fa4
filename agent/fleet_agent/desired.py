"""Reading one device's desired state: a direct get of its own key in `fleet_desired`, the only
read a device's identity is allowed (subject in the path). The drift service reads the same way
(`shared.desired.get_desired`)."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS

from fleet_agent.contract import DesiredState, decode_desired, desired_get_subject


class DesiredUnreachable(Exception):
    """The bucket did not answer (no responders, timeout): try again later."""


async def read_desired(nc: NATS, device_id: str, timeout: float = 5.0) -> DesiredState | None:
    """One device's desired state (None when it has none)."""
    try:
        msg = await nc.request(desired_get_subject(device_id), b"", timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise DesiredUnreachable(f"desired-state bucket not reachable: {exc!r}") from exc
    headers = msg.headers or {}
    if headers.get("Status") or headers.get("KV-Operation") in ("DEL", "PURGE"):
        return None  # 404: no value; a delete marker: none either
    return decode_desired(msg.data)
