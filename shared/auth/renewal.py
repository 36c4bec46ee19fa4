"""Short-lived device credentials, renewed by the agent (DESIGN §11: revocation that scales).

A device enrolled with a lifetime (`fleet device enroll --expires`) asks for a fresh JWT on
`fleet.renew.<its id>` before its own expires; the server lets a device publish there for its own
id only (the device template), so the subject says who asks. `fleet up`, which holds the keys,
answers with a new JWT for the same key unless the device was revoked. The agent writes it into
its credentials file (the seed stays) and opens a new connection under it before letting the old
one go: nats-py would close, not reconnect, a connection whose JWT the server expires. The
device's side (when to ask, writing the file) is the agent's: `fleet_agent.credentials`.

Because every device JWT then expires by itself, a revocation can be dropped once the longest
lifetime has passed (`Authority.prune_revocations`): the list holds one lifetime of retirements,
not all of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from fleet_agent.contract import RENEWED_ENCODER, Renewed
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.auth import jwt
from shared.auth.authority import Authority
from shared.auth.roles import RENEW_PREFIX

log = logging.getLogger(__name__)
DEFAULT_LIFETIME = 24 * 3600.0


_ANSWER = RENEWED_ENCODER


MIN_AGE = 1 / 3  # a device renewed less than this fraction of a lifetime ago is refused
REFUSE_EVERY = 1.0  # seconds: at most one refusal answered per device in this time; the rest dropped
PENDING = 256  # renewal requests queued at most; beyond, the client library drops them (counted)


class RenewalGate:
    """Per-device bounds on renewals, decided before anything is signed (one device flooding its
    own `fleet.renew.<id>` had 43,000 JWTs signed in 20 s and delayed every revocation): a device
    renewed less than `MIN_AGE` of a lifetime ago is refused (an agent renews after two thirds
    of it), and is answered so at most once per `REFUSE_EVERY`; the rest is dropped."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_age = lifetime * MIN_AGE
        self.clock = clock
        self.renewed: dict[str, float] = {}  # device -> when it was last given a JWT
        self.refused: dict[str, float] = {}  # device -> when it was last told "too soon"
        self.counts = {"renewed": 0, "refused": 0, "dropped": 0}

    def decide(self, device: str) -> Literal["renew", "too_soon", "drop"]:
        """What to do with one request of `device`, now."""
        now = self.clock()
        last = self.renewed.get(device)
        if last is None or now - last >= self.min_age:
            return "renew"
        if now - self.refused.get(device, -REFUSE_EVERY) < REFUSE_EVERY:
            self.counts["dropped"] += 1
            return "drop"
        self.refused[device] = now
        self.counts["refused"] += 1
        return "too_soon"

    def renewed_now(self, device: str) -> None:
        """Remember that `device` was given a JWT (forgetting devices whose bound has passed)."""
        now = self.clock()
        if len(self.renewed) >= 100_000:
            self.renewed = {d: t for d, t in self.renewed.items() if now - t < self.min_age}
            self.refused = {d: t for d, t in self.refused.items() if now - t < REFUSE_EVERY}
        self.renewed[device] = now
        self.counts["renewed"] += 1


async def serve_renewals(nc: NATS, authority: Authority, lifetime: float = DEFAULT_LIFETIME,
                         gate: RenewalGate | None = None) -> Subscription:
    """Answer `fleet.renew.*` with a fresh JWT of `lifetime` seconds for every device not revoked,
    within the bounds of `gate`. Give it a connection of its own: a flood of renewals then waits
    in that connection's queue (at most `PENDING`), not in front of a revocation."""
    from shared import metrics  # here, not at the top: the agent imports this module, not the server's metrics

    bounds = gate or RenewalGate(lifetime)

    async def renew(msg: Msg) -> None:
        if not msg.reply:  # nobody to answer: nothing to do (and nothing signed)
            bounds.counts["dropped"] += 1
            metrics.RENEWALS.labels("dropped").inc()
            return
        device = msg.subject.rsplit(".", 1)[-1]
        verdict = bounds.decide(device)
        if verdict == "drop":
            metrics.RENEWALS.labels("dropped").inc()
            return
        if verdict == "too_soon":
            answer = Renewed(error="too_soon")
        elif authority.device_revoked(device):
            answer = Renewed(error="revoked")
        else:
            answer = Renewed(jwt=jwt.jwt_of_creds(authority.issue_device(device, expires_in=lifetime)))
            bounds.renewed_now(device)
        metrics.RENEWALS.labels(answer.error or "renewed").inc()  # renewed, revoked, too_soon
        await msg.respond(_ANSWER.encode(answer))

    return await nc.subscribe(f"{RENEW_PREFIX}.*", cb=renew, pending_msgs_limit=PENDING)


def claims_of(creds_path: Path) -> jwt.ClaimsView:
    """The claims of the JWT in a credentials file (`exp` None: it never expires)."""
    return jwt.read_claims(jwt.jwt_of_creds(creds_path.read_text()))
