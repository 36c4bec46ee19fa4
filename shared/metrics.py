"""Prometheus metrics of this process (DESIGN §16, docs/monitoring.md): every instrument a part
records is declared here, once, through `prometheus_client` (HELP, TYPE, histograms with buckets),
and `serve` exposes them on the part's own port (`FLEET_METRICS_PORT`).

Label names never clash with Prometheus's target labels (`instance`, `job`): the scraper adds
those. No rates are precomputed: counters only go up and PromQL's `rate()` derives the rest.
The fleet-state gauges are not here: the query API builds them from the read models per scrape
(projections/api/fleet_metrics.py)."""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import Metric

from shared.errors import Invalid

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double every counter

log = logging.getLogger(__name__)

# Seconds: a fsync'd append on a quiet server takes ~1 ms, a batch of 1,000 or a loaded machine
# tens to hundreds; a command includes its appends; a query includes PostgreSQL.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PART = Gauge("fleet_part_info", "The Fleetplane part this process runs (always 1).", ["part"])
APPEND_SECONDS = Histogram("fleet_append_seconds", "Latency of one event-log append (a batch counts once).",
                           buckets=LATENCY_BUCKETS)
APPEND_BATCH_EVENTS = Histogram("fleet_append_batch_events", "Events per event-log append.",
                                buckets=(1, 2, 5, 10, 50, 100, 500, 1000))
COMMANDS = Counter("fleet_commands", "Commands answered, by service, command and result.",
                   ["service", "command", "result"])
COMMAND_SECONDS = Histogram("fleet_command_seconds", "Latency of a command, from request to reply.",
                            ["service", "command"], buckets=LATENCY_BUCKETS)
QUERY_SECONDS = Histogram("fleet_query_seconds", "Latency of a query API request, by route and status.",
                          ["route", "status"], buckets=LATENCY_BUCKETS)
ROLLOUT_ASSIGNMENTS = Counter("fleet_rollout_assignments", "Devices assigned or restored by rollouts.")
ROLLOUT_TICK_ERRORS = Counter("fleet_rollout_tick_errors", "Rollout ticks that raised (logged, retried).",
                              ["rollout"])
LEASE_HELD = Gauge("fleet_lease_held", "1 while this process holds the lease, else 0.", ["lease"])
LEASE_TAKEOVERS = Counter("fleet_lease_takeovers", "Times this process gained the lease.", ["lease"])
REVOCATIONS = Counter("fleet_identity_revocations", "Device identities revoked (retired devices).")
RENEWALS = Counter("fleet_identity_renewals", "Device credential renewals answered, by result.", ["result"])
AUDIT_SQUATTED = Counter("fleet_audit_checkpoints_squatted",
                         "Checkpoint numbers found taken by a message that is no checkpoint of this writer.")



class Readings:
    """Counters a part already keeps as plain numbers on a hot path (a heartbeat must not pay a
    lock and a label lookup), read when Prometheus scrapes: the families of every live source,
    summed sample by sample (several instances in one process add up)."""

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, source: Any) -> None:
        """Read `source.readings()` (a list of metric families) at every scrape while it lives."""
        self._sources.add(source)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for source in list(self._sources):
            for family in source.readings():
                families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    values[key] = values.get(key, 0.0) + sample.value
        for (family_name, sample_name, labels), value in values.items():
            families[family_name].add_sample(sample_name, dict(labels), value)
        yield from families.values()


READINGS = Readings()
REGISTRY.register(READINGS)

_served: dict[int, Any] = {}  # port -> its server (kept referenced for the process's life)


def serve(part: str, port: int, host: str = "127.0.0.1", *, certfile: str | None = None,
          keyfile: str | None = None) -> int:
    """Serve this process's metrics at `http(s)://host:port/metrics` (port 0: a free one; HTTPS
    with a certificate and key); the port."""
    if bool(certfile) != bool(keyfile):
        raise Invalid("the metrics port's TLS needs both a certificate and its key", field="metrics_tls_key")
    server, _thread = start_http_server(port, addr=host, certfile=certfile, keyfile=keyfile,
                                        tls_min_version=ssl.TLSVersion.TLSv1_2)
    bound = int(server.server_port)
    _served[bound] = server
    log.info("metrics of %s on %s://%s:%d/metrics", part, "https" if certfile else "http", host, bound)
    return bound


def samples(prefix: str = "fleet_") -> list[tuple[str, dict[str, str], float]]:
    """This process's own samples as (name, labels, value), for `$SRV.STATS` (a histogram by its
    count and sum: the buckets are for Prometheus)."""
    out: list[tuple[str, dict[str, str], float]] = []
    for family in REGISTRY.collect():
        if family.name.startswith(prefix):
            out += [(s.name, dict(s.labels), float(s.value)) for s in family.samples
                    if not s.name.endswith(("_created", "_bucket"))]
    return out
