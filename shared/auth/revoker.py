"""Retiring a device revokes its identity (DESIGN §11): this duty follows the device events and,
for each `DeviceRetired`, adds the device's key to FLEET's revocations and pushes the new account
JWT to the server, which cuts the device's live connections off at once and refuses it from then.

It needs the account keys, so it runs where they are: in the `authority` part
(services.authority), never in another service. It remembers the last sequence it handled, so a
restart does not re-read the log. `fleet creds revoke-device` is a command to that part
(`fleet.cmd.authority.revoke_device`), so revocations have one writer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from nats.aio.client import Client as NATS

from shared import metrics
from shared.auth.authority import Authority, push_account
from shared.contract.authority import Revoked, RevokeDevice
from shared.eventlog import EventLog
from shared.ids import check_id
from shared.subjects import aggregate_wildcard

log = logging.getLogger(__name__)
SERVICE = "authority"
T = TypeVar("T")
__all__ = ["SERVICE", "RevokeDevice", "Revoked", "revoke_device", "revoke_retired"]



class Changes(Protocol):
    """Where changes to the revocation state are made when it is shared (the authority part's
    copy in NATS, services.authority.state); without one they go to the local state directly."""

    async def change(self, mutate: Callable[[], T]) -> T:
        """Apply `mutate` to the current state and keep the result."""
        ...


async def _apply(changes: Changes | None, mutate: Callable[[], T]) -> T:
    return mutate() if changes is None else await changes.change(mutate)


async def revoke_device(system: NATS, authority: Authority, cmd: RevokeDevice,
                        changes: Changes | None = None) -> Revoked:
    """Revoke one device now and push the account; the command's result."""
    check_id(cmd.device_id, "device_id")
    await push_account(system, await _apply(changes, lambda: authority.revoke_device(cmd.device_id)))
    metrics.REVOCATIONS.inc()
    log.info("revoked the identity of device %s for %s", cmd.device_id, cmd.actor)
    return Revoked(device_id=cmd.device_id, revoked=True)


async def revoke_retired(events: EventLog, system: NATS, authority: Authority,
                         changes: Changes | None = None) -> None:
    """Follow `fleet.evt.device.*` for ever, revoking every retired device."""
    start = authority.state.handled_seq + 1
    async for recorded in events.replay(start, subjects=aggregate_wildcard("device"), follow=True):
        seq = recorded.seq
        if recorded.envelope.type == "DeviceRetired":
            device_id = recorded.envelope.aggregate_id
            account = await _apply(changes, functools.partial(authority.revoke_device, device_id, handled_seq=seq))
            await push_account(system, account)
            metrics.REVOCATIONS.inc()
            log.info("revoked the identity of retired device %s", device_id)
        elif seq - authority.state.handled_seq >= 10_000:
            await _apply(changes, functools.partial(authority.handled, seq))
