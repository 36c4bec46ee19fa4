"""`fleet service authority`: the identity duties (DESIGN §11, §15) as a part like any other —
revoking the credentials of retired devices and answering credential renewals — so a retired
device is cut off within seconds wherever the parts run, with or without `fleet up`.

It holds only what the duties need (`<data-dir>/secrets/`, shared.auth.authority.DUTY_FILES: the
operator's signing key, FLEET's scoped device key, the device-key secret, the public keys) and the
system account's user (`secrets/system.creds`) to push account updates. Two or more instances may
run: the holder of the `authority` lease does the duties, the others stand by. Renewals come in
on a connection of their own, bounded per device (shared.auth.renewal.RenewalGate) and queued at
most `PENDING` deep, so a device flooding renewals neither gets JWTs signed nor delays a
revocation (which follows the log and pushes on its own connections). The revocation state is
kept in NATS (services.authority.state: one KV key written with the revision it was read at)
and mirrored into the local file every decision is taken on, so a revocation made by one
instance is never undone by another's stale copy (docs/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from services.authority.state import SharedState
from shared.auth.authority import Authority
from shared.auth.renewal import DEFAULT_LIFETIME, RenewalGate, serve_renewals
from shared.auth.revoker import SERVICE, RevokeDevice, revoke_device, revoke_retired
from shared.cluster import ensure_log
from shared.commands import CommandService, Context, Outcome
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Unavailable
from shared.eventlog import EventLog
from shared.lease import instance_name, run_while_held
from shared.lease_thread import ThreadLease
from shared.liveness import keep_alive, serve_vitals

log = logging.getLogger(__name__)
LEASE = SERVICE
SYSTEM_CREDS = "system.creds"


async def run(settings: Settings) -> None:
    """Do the identity duties while holding the lease, until cancelled."""
    secrets = settings.secrets_path
    if not (secrets / SYSTEM_CREDS).exists():
        raise Unavailable(f"no system user under {secrets} ({SYSTEM_CREDS}: `fleet creds create --role sys`): "
                          "the authority part pushes account updates with it")
    authority = Authority.load_for_duties(secrets)  # DUTY_FILES: never the operator's or accounts' own keys
    gate = RenewalGate(DEFAULT_LIFETIME)

    nc = await connect_nats(settings, "authority")
    renewals = await connect_renewals(settings, gate)
    system = await connect_nats(msgspec.structs.replace(settings, nats_creds=str(secrets / SYSTEM_CREDS)),
                                "authority-system")
    try:
        await serve_vitals(nc, "authority", settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        shared = SharedState(nc, authority)  # the state every instance decides on, in NATS
        await shared.start()
        commands = CommandService(nc, SERVICE)  # every instance answers; the state has one writer at a time

        async def on_revoke(cmd: RevokeDevice, ctx: Context) -> Outcome:
            # remembered: the account update it pushes may drop this very reply on its way (the
            # server resets the services' imports), and the client's resend must get it again
            return Outcome((), await revoke_device(system, authority, cmd, shared), remember=True)

        commands.route("revoke_device", RevokeDevice, on_revoke)
        await commands.start()
        # renewed in a thread of its own: nothing this part does can starve it (shared.lease_thread)
        lease = ThreadLease(settings, LEASE, instance_name(LEASE, settings.instance))
        holding = asyncio.create_task(lease.run(), name="authority-lease")
        working = asyncio.create_task(run_while_held(
            lease, lambda: duties(eventlog, system, renewals, authority, gate, shared)), name="authority-duties")
        try:
            # A lease that stopped trying (an error it does not retry), duties that ended, or a
            # connection closed for good would leave the duties undone for ever: end the part
            # instead, so that its supervisor starts it again (shared.liveness).
            await keep_alive(nc, [holding, working])
        finally:
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
            await commands.stop()
            await shared.stop()
            lease.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
    finally:
        for conn in (renewals, system, nc):
            with contextlib.suppress(Exception):
                await conn.close()


async def connect_renewals(settings: Settings, gate: RenewalGate) -> NATS:
    """The renewals' own connection; requests its queue drops (beyond `PENDING`) are counted."""

    def count_drop(exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            gate.counts["dropped"] += 1

    return await connect_nats(settings, "authority-renewals", on_error=count_drop)


async def duties(events: EventLog, system: NATS, renewals: NATS, authority: Authority,  # noqa: PLR0917 - the part's parts
                 gate: RenewalGate, shared: SharedState | None = None) -> None:
    """Revoke retired devices and answer renewals until cancelled (the lease was lost)."""
    sub = await serve_renewals(renewals, authority, gate=gate)
    try:
        while True:
            try:
                await revoke_retired(events, system, authority, shared)
            except Unavailable as exc:  # the log or the server away for a moment: follow again
                log.warning("revoking retired devices: %s; following again", exc)
                await asyncio.sleep(1.0)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
