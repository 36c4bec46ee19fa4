"""The one decision of what is transient: the NATS and PostgreSQL errors after which the same call
may succeed later (a reconnect, a leader election, a restart), and their one translation into
`Unavailable`. Every retry loop and every `except` that waits out an outage uses these sets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg
import nats.errors
import nats.js.errors

from shared.errors import Unavailable

NATS_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,  # 503: JetStream not ready (a restart, a cluster settling)
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,  # no stream leader yet: an election on a cluster
    TimeoutError,  # asyncio's
)

PG_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InternalClientError,  # how asyncpg may report a connection lost mid-operation
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


@contextlib.contextmanager
def reachable(what: str) -> Iterator[None]:
    """Raise a transient NATS error inside as `Unavailable`, naming `what` (the query API answers a
    transient PostgreSQL error with the same 503, projections.api.app)."""
    try:
        yield
    except NATS_TRANSIENT as exc:
        raise Unavailable(f"{what} not reachable: {exc!r}") from exc
