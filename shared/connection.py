"""Connecting to NATS the same way everywhere: retried at start-up up to a deadline, reconnecting
forever afterwards, with credentials and TLS when configured; on a client whose read loop survives
a cancelled flush (`Client`, see docs/decisions.md "A cancelled flush kills nats-py's read loop")."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
from fleet_agent import agent
from fleet_agent.agent import parse_servers
from nats.aio.client import Client as NATS

from shared.auth.authority import inbox_of_creds
from shared.config import Settings
from shared.errors import Unavailable

log = logging.getLogger(__name__)
DEFAULT_URL = agent.DEFAULT_URL


class Client(NATS):
    """nats-py's client with one fix: a PONG whose waiter was cancelled is counted, not fatal.

    nats-py keeps one future per PING in `_pongs` and resolves them in order as PONGs arrive. A
    `flush()` or `ping()` that times out, or whose caller is cancelled (a lease lost mid-work, a
    `wait_for` around it), cancels its future but leaves it in `_pongs`; the PONG that comes later
    makes `_process_pong` call `set_result` on it, `InvalidStateError` escapes into the read loop,
    and the loop ends: nothing more is read on the connection (nats-io/nats.py#624 family;
    `tests/integration/test_connection_pong.py` reproduces it on the stock client)."""

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():  # cancelled by its waiter: the PONG still answers its PING
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


async def connect_nats(settings: Settings, name: str, *, connect_for: float = 30.0,
                       on_error: Callable[[Exception], None] | None = None) -> NATS:
    """Connect, retrying for `connect_for` seconds; raise Unavailable with the URL if it fails.
    `on_error` sees the connection's asynchronous errors (e.g. a slow consumer's drops)."""
    url = settings.nats_url or DEFAULT_URL
    options: dict[str, Any] = {
        "servers": parse_servers(url),  # a cluster: every node's URL
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
        if on_error is not None:
            on_error(exc)
        log.debug("nats: %r", exc)

    # nats-py itself retries the first connection (every reconnect_time_wait) when reconnects are
    # unlimited, so the overall deadline is what bounds it.
    try:
        nc = Client()
        await asyncio.wait_for(nc.connect(**options, error_cb=_quiet), timeout=connect_for)
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(
            f"cannot reach NATS at {url} after {connect_for:.0f}s ({exc!r}); is `fleet up` "
            "running, or is FLEET_NATS_URL right?"
        ) from None
    return nc


async def settled(nc: NATS) -> None:
    """Return once the server has processed everything this connection sent before the call (a
    subscription is in place, a publish delivered to whoever listened). nats-py's `flush()` alone
    does not promise that: it writes its PING straight to the socket while the commands before
    it may still wait for the flusher task, so the PONG can come back before the server saw them
    (a message published in that gap to a fresh subscription was lost in ~3-7% of tries). The
    first flush lets the flusher write them; the second one's PING goes out behind them."""
    await nc.flush()
    await nc.flush()
