"""The drift service's commands (`fleet.cmd.drift.<command>`): what an operator does about a
drifted device."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.ids import Id
from shared.wire import Command, Reason


class Reconcile(Command, frozen=True, kw_only=True):
    """Reconcile a drifted device now (re-put its desired state), even when it is stuck: its
    tries start over."""

    device_id: Annotated[Id, msgspec.Meta(description="the drifted device")]
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class Acknowledge(Command, frozen=True, kw_only=True):
    """Accept a drifted device as it is: it is not reconciled until the drift ends or an operator
    forces reconciliation."""

    device_id: Annotated[Id, msgspec.Meta(description="the drifted device")]
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class DriftStanding(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to both: where the device stands now."""

    device_id: str
    stuck: bool
    acknowledged: bool
