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
from pathlib import Path

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


async def serve_renewals(nc: NATS, authority: Authority, lifetime: float = DEFAULT_LIFETIME) -> Subscription:
    """Answer `fleet.renew.*` with a fresh JWT of `lifetime` seconds for every device not revoked."""
    from shared import metrics  # here, not at the top: the agent imports this module, not the server's metrics

    async def renew(msg: Msg) -> None:
        device = msg.subject.rsplit(".", 1)[-1]
        key = jwt.public(authority.device_key(device))
        if key in authority.state.revocations:
            answer = Renewed(error="revoked")
        else:
            answer = Renewed(jwt=jwt.jwt_of_creds(authority.issue_device(device, expires_in=lifetime)))
        metrics.RENEWALS.labels("refused" if answer.error else "renewed").inc()
        if msg.reply:
            await msg.respond(_ANSWER.encode(answer))

    return await nc.subscribe(f"{RENEW_PREFIX}.*", cb=renew)


def claims_of(creds_path: Path) -> jwt.ClaimsView:
    """The claims of the JWT in a credentials file (`exp` None: it never expires)."""
    return jwt.read_claims(jwt.jwt_of_creds(creds_path.read_text()))
