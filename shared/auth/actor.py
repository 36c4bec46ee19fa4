"""Who sent a command: the actor recorded in the events it causes (DESIGN §11).

The actor comes from the server, never from the body:
- A request from the OPS account crosses FLEET's `share: true` service import, so nats-server
  stamps `Nats-Request-Info` on it (and replaces any such header the client wrote) with the
  requester's user JWT name and tags. The actor is `<role>:<name>`, e.g. `operator:alice`.
- A request without that stamp was published inside FLEET, where the server lets only the
  forwarders publish on `fleet.cmd.>` (admin, the HTTP API, the drift service's partition hand-
  over and the test-only simulator: shared.auth.roles.FORWARDERS). They act for someone else and
  say so in `Fleet-On-Behalf-Of` (the API: its caller's principal; drift: the original actor).
  Without that header the actor is `internal`.
A `Fleet-On-Behalf-Of` on a stamped request is ignored: an operator cannot speak for another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from shared.auth.roles import ROLE_TAG

REQUEST_INFO = "Nats-Request-Info"
ON_BEHALF_OF = "Fleet-On-Behalf-Of"
INTERNAL = "internal"
_PRINCIPAL = re.compile(r"^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


class _RequestInfo(msgspec.Struct):
    acc: str = ""
    name_tag: str = ""
    tags: list[str] = []


_INFO = msgspec.json.Decoder(_RequestInfo)


def is_principal(value: str) -> bool:
    """`role:name`, bounded, no control characters or spaces."""
    return bool(_PRINCIPAL.match(value))


def actor_of(headers: Mapping[str, str]) -> str:
    """The actor of a request, from the server's stamp or a forwarder's hand-over."""
    stamped = headers.get(REQUEST_INFO)
    if stamped is not None:
        try:
            info = _INFO.decode(stamped)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return INTERNAL
        role = next((t[len(ROLE_TAG):] for t in info.tags if t.startswith(ROLE_TAG)), "user")
        # service users carry their whole actor in the tag (`service:registry`)
        principal = role if ":" in role else f"{role}:{info.name_tag}"
        return principal if is_principal(principal) else INTERNAL
    claimed = headers.get(ON_BEHALF_OF, "")
    return claimed if is_principal(claimed) else INTERNAL
