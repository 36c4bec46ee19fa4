"""Retiring a device revokes its identity (DESIGN §11): this duty follows the device events and,
for each `DeviceRetired`, adds the device's key to FLEET's revocations and pushes the new account
JWT to the server, which cuts the device's live connections off at once and refuses it from then.

It needs the account keys, so it runs where they are: in the `authority` part
(services.authority), never in another service. It remembers the last sequence it handled, so a
restart does not re-read the log. `fleet creds revoke-device` is a command to that part
(`fleet.cmd.authority.revoke_device`), so revocations have one writer."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from shared import metrics
from shared.auth.authority import Authority, push_account
from shared.eventlog import EventLog
from shared.ids import check_id
from shared.subjects import aggregate_wildcard
from shared.wire import Command

log = logging.getLogger(__name__)
SERVICE = "authority"


class RevokeDevice(Command, frozen=True, kw_only=True):
    """Revoke every credential issued to a device so far (re-enrolling it is rotation)."""

    device_id: str


async def revoke_device(system: NATS, authority: Authority, cmd: RevokeDevice) -> dict[str, object]:
    """Revoke one device now and push the account; the command's result."""
    check_id(cmd.device_id, "device_id")
    await push_account(system, authority.revoke_device(cmd.device_id))
    metrics.REVOCATIONS.inc()
    log.info("revoked the identity of device %s for %s", cmd.device_id, cmd.actor)
    return {"device_id": cmd.device_id, "revoked": True}


async def revoke_retired(events: EventLog, system: NATS, authority: Authority) -> None:
    """Follow `fleet.evt.device.*` for ever, revoking every retired device."""
    start = authority.state.handled_seq + 1
    async for recorded in events.replay(start, subjects=aggregate_wildcard("device"), follow=True):
        if recorded.envelope.type == "DeviceRetired":
            device_id = recorded.envelope.aggregate_id
            await push_account(system, authority.revoke_device(device_id, handled_seq=recorded.seq))
            metrics.REVOCATIONS.inc()
            log.info("revoked the identity of retired device %s", device_id)
        elif recorded.seq - authority.state.handled_seq >= 10_000:
            authority.handled(recorded.seq)
