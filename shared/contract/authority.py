"""The authority part's command (`fleet.cmd.authority.<command>`): revoking a device's identity
now (retiring it in the registry does the same, from the log)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.ids import Id
from shared.wire import Command


class RevokeDevice(Command, frozen=True, kw_only=True):
    """Revoke every credential issued to a device so far (re-enrolling it is rotation): within
    seconds it can no longer connect or publish."""

    device_id: Annotated[Id, msgspec.Meta(description="the device whose credentials are revoked")]


class Revoked(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `revoke_device`."""

    device_id: str
    revoked: bool
