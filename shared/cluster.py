"""Replication on a NATS cluster (DESIGN §13): how many replicas the log and the buckets get, and
the one start-up call every process makes to create or check them.

`FLEET_REPLICAS` (Settings.replicas) says how many; 0, the default, means 3 when the server this
process is connected to is in a cluster of 3 or more servers, else 1 (the embedded single server).
An existing stream with fewer replicas than asked is refused at start-up with a message naming the
setting, like every other weaker setting (Fleetplane never changes an existing stream).
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from shared.checkpoint import ensure_buckets
from shared.config import Settings
from shared.desired import ensure_bucket
from shared.eventlog import EventLog
from shared.jetstream import IDENTITY, TOKENS, ensure
from shared.lease import lease_bucket

CLUSTER_REPLICAS = 3


def cluster_size(nc: NATS) -> int:
    """How many servers the connected server's cluster has, as its INFO tells clients (the
    `connect_urls` it gossips, one per server that accepts clients; 1 outside a cluster)."""
    info = nc._server_info or {}  # the INFO of the current server; nats-py has no public getter
    urls = set(info.get("connect_urls") or [])
    return max(1, len(urls))


def replicas_for(settings: Settings, nc: NATS) -> int:
    """Replicas of FLEET_EVENTS and the buckets: the setting, or 3 on a 3+ server cluster, else 1."""
    if settings.replicas > 0:
        return settings.replicas
    return CLUSTER_REPLICAS if cluster_size(nc) >= CLUSTER_REPLICAS else 1


async def ensure_log(nc: NATS, settings: Settings, eventlog: EventLog | None = None) -> int:
    """Create or check FLEET_EVENTS, the desired-state bucket and the leases bucket with the
    replicas asked; returns the replicas. (`fleet up` calls it first, so with per-service
    permissions the buckets already exist when a service that may not create streams starts.)"""
    replicas = replicas_for(settings, nc)
    await (eventlog or EventLog(nc)).ensure_stream(replicas)
    await ensure_bucket(nc, replicas)
    await lease_bucket(nc, settings.lease_ttl, replicas)
    return replicas


async def ensure_all(nc: NATS, settings: Settings) -> tuple[int, list[str]]:
    """What `fleet up` and `fleet init` (admin) create or check before any part starts: the log
    and every bucket (shared.jetstream's table). Returns the replicas and the checkpoint buckets
    that could not be created (this identity is not admin)."""
    replicas = await ensure_log(nc, settings)
    missing = await ensure_buckets(nc, replicas)
    if not missing:  # admin: the authority part's revocation state and the HTTP API tokens
        await ensure(nc, IDENTITY, replicas)
        await ensure(nc, TOKENS, replicas)
    return replicas, missing
