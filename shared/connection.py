"""Connecting to NATS the same way everywhere: retried at start-up up to a deadline, reconnecting
forever afterwards, with credentials and TLS when configured."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from shared.auth.authority import inbox_of_creds
from shared.config import Settings
from shared.errors import Unavailable

log = logging.getLogger(__name__)
DEFAULT_URL = "nats://127.0.0.1:4222"


async def connect_nats(settings: Settings, name: str, *, connect_for: float = 30.0) -> NATS:
    """Connect, retrying for `connect_for` seconds; raise Unavailable with the URL if it fails."""
    url = settings.nats_url or DEFAULT_URL
    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],  # a cluster: every node's URL
        "name": f"fleet-{name}",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
    }
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
        prefix = inbox_of_creds(settings.nats_creds)  # an identity may read only its own inbox
        if prefix is not None:
            options["inbox_prefix"] = prefix
    if settings.nats_tls_ca:
        options["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)

    async def _quiet(exc: Exception) -> None:  # nats-py logs every failed attempt otherwise
        log.debug("nats: %r", exc)

    # nats-py itself retries the first connection (every reconnect_time_wait) when reconnects are
    # unlimited, so the overall deadline is what bounds it.
    try:
        nc: NATS = await asyncio.wait_for(
            nats.connect(**options, error_cb=_quiet),
            timeout=connect_for,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(
            f"cannot reach NATS at {url} after {connect_for:.0f}s ({exc!r}); is `fleet up` "
            "running, or is FLEET_NATS_URL right?"
        ) from None
    return nc
