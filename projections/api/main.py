"""`fleet service api`: serve the query API with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from urllib.parse import urlparse

import uvicorn

from projections.api.app import create_app
from projections.api.auth import AuthPolicy, default_allowed_hosts
from projections.api.picture import PictureWatch
from projections.api.queries import ReadModels
from projections.runner import create_pool
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog
from shared.liveness import keep_alive, serve_vitals
from shared.tokens import TokenVerifier

DEFAULT_API_URL = "http://127.0.0.1:8080"

log = logging.getLogger("fleet.api")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `fleet service` cancels us on SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tls_files(settings: Settings, api_url: str) -> tuple[str | None, str | None]:
    """The certificate and key uvicorn serves `api_url` with: an https URL needs a certificate and key; plain HTTP
    is for loopback (or behind a proxy that terminates TLS), and off loopback it is logged."""
    url = urlparse(api_url)
    if url.scheme == "https":
        for name in ("api_tls_cert", "api_tls_key"):
            path = getattr(settings, name)
            if not path or not os.path.isfile(path):
                raise Invalid(f"{api_url} is https: FLEET_{name.upper()} must name a PEM file "
                              f"({path or 'not set'})", field=name)
        return settings.api_tls_cert, settings.api_tls_key
    if url.scheme != "http":
        raise Invalid(f"FLEET_API_URL {api_url}: the scheme is http or https", field="api_url")
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the API serves plain HTTP on %s: set FLEET_API_URL=https://... with FLEET_API_TLS_CERT "
                    "and FLEET_API_TLS_KEY unless a proxy in front terminates TLS", url.netloc)
    return None, None


async def run(settings: Settings) -> None:
    """Serve until cancelled on the host/port of `settings.api_url` (default 127.0.0.1:8080)."""
    if not settings.database_url:
        raise Invalid("no database: set FLEET_DATABASE_URL or run `fleet up`", field="database_url")
    api_url = settings.api_url or os.environ.get("FLEET_API_URL") or DEFAULT_API_URL
    url = urlparse(api_url)
    cert, key = tls_files(settings, api_url)
    nc = await connect_nats(settings, "api")
    pool = await create_pool(settings.database_url, min_size=1, max_size=8)
    picture: PictureWatch | None = None
    try:
        await serve_vitals(nc, "api", settings)
        auth = AuthPolicy(TokenVerifier(nc), default_allowed_hosts(api_url, settings.api_allowed_hosts),
                          metrics_public=settings.metrics_public)
        picture = PictureWatch(nc, heartbeat_interval=settings.heartbeat_interval)
        picture.start()
        # direct gets only: the API replays bounded ranges and may create no consumer (docs/security.md)
        app = create_app(ReadModels(pool, EventLog(nc, consumers=False), picture=picture), auth)
        config = uvicorn.Config(app, host=url.hostname or "127.0.0.1", port=url.port or 8080,
                                log_level=settings.log_level.lower(), access_log=False,
                                ssl_certfile=cert, ssl_keyfile=key,
                                log_config=None)  # uvicorn's loggers go through ours (shared/logs.py)
        server = _Server(config)
        serving = asyncio.ensure_future(server.serve())
        alive = asyncio.ensure_future(keep_alive(nc))  # a broken connection ends the API (non-zero)
        try:
            await asyncio.wait([serving, alive], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not serving.done():
                server.should_exit = True  # finish in-flight requests, then stop
                await serving
            alive.cancel()
        if alive.done() and not alive.cancelled():
            alive.result()  # raises PartStopped
        serving.result()
    finally:
        if picture is not None:
            await picture.stop()
        await pool.close()
        await nc.close()
