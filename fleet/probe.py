"""`python -m fleet.probe [SERVICE]`: the readiness/liveness probe of a Fleetplane pod.

Connects to NATS with the process's settings (FLEET_NATS_URL, credentials) and, given a service
name, sends `$SRV.PING.fleet-<service>` (the NATS micro services API every command service
answers), then asks the part for its duties (`$SRV.DUTIES.<service>`, shared.liveness): a part
that answers but reports a stalled duty fails the probe too (only this instance's, when
FLEET_INSTANCE names it). Prints one JSON line and exits 0 when answered, 1 when not: what a
Kubernetes exec probe or a script needs. Without a service it checks only that NATS is reachable (the projection runner,
which serves no commands)."""

from __future__ import annotations

import asyncio
import sys

import msgspec

from shared.config import load_settings
from shared.connection import connect_nats
from shared.errors import FleetError
from shared.liveness import gather_reports
from shared.transient import NATS_TRANSIENT


async def probe(service: str | None, timeout: float = 3.0) -> dict[str, object]:
    """Ping one service (or only NATS); the outcome as a dict with `ok`."""
    settings = load_settings()
    try:
        nc = await connect_nats(settings, "probe", connect_for=timeout)
    except FleetError as exc:
        return {"ok": False, "error": str(exc)}
    try:
        if service is None:
            return {"ok": True, "nats": nc.connected_url.netloc if nc.connected_url else None}
        reply = await nc.request(f"$SRV.PING.fleet-{service}", b"", timeout=timeout)
        reports = [r for r in await gather_reports(nc, service, wait=min(timeout, 1.0))
                   if not settings.instance or r.instance == settings.instance]
        stalled = [{"instance": r.instance, "duty": d.name, "since": d.stalled_since}
                   for r in reports for d in r.stalled]
        return {"ok": not stalled, "service": service, "ping": msgspec.json.decode(reply.data),
                **({"stalled": stalled} if stalled else {})}
    except NATS_TRANSIENT as exc:
        return {"ok": False, "service": service, "error": repr(exc)}
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    """Run the probe; exit code 0 answered, 1 not."""
    outcome = asyncio.run(probe(argv[0] if argv else None))
    print(msgspec.json.encode(outcome).decode())
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
