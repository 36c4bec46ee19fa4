"""The query API off loopback (DESIGN §15): with an https FLEET_API_URL it serves TLS with the
certificate it is given, refuses to start without one, and a client verifying the server's CA
gets its answers while a plain-HTTP client gets none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from pathlib import Path

import httpx
import msgspec
import pytest

from projections.api.main import run
from shared.config import Settings
from shared.embedded import EmbeddedNats, free_port
from shared.errors import Invalid
from shared.pki import loopback_pki


async def _wait_healthy(url: str, ca: Path) -> httpx.Response:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                return await client.get(f"{url}/healthz")
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


async def test_the_api_serves_https_with_its_certificate(nats_server: EmbeddedNats, database_url: str,
                                                         tmp_path: Path) -> None:
    pki = loopback_pki(tmp_path / "tls")
    url = f"https://127.0.0.1:{free_port()}"
    settings = Settings(data_dir=str(tmp_path), nats_url=nats_server.url, nats_creds=os.environ["FLEET_NATS_CREDS"],
                        database_url=database_url, api_url=url, api_tls_cert=str(pki.cert), api_tls_key=str(pki.key))
    serving = asyncio.create_task(run(settings))
    try:
        response = await _wait_healthy(url, pki.ca)
        assert response.status_code == 200
        async with httpx.AsyncClient() as plain:  # the same port in clear text: no answer
            with pytest.raises(httpx.TransportError):
                await plain.get(url.replace("https://", "http://") + "/healthz")
        async with httpx.AsyncClient() as untrusting:  # a client that does not trust the CA
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get(f"{url}/healthz")
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@pytest.mark.parametrize("missing", ["api_tls_cert", "api_tls_key"])
async def test_an_https_url_without_its_files_is_refused(missing: str, nats_server: EmbeddedNats,
                                                         database_url: str, tmp_path: Path) -> None:
    pki = loopback_pki(tmp_path / "tls")
    settings = msgspec.structs.replace(
        Settings(data_dir=str(tmp_path), nats_url=nats_server.url, database_url=database_url,
                 api_url=f"https://127.0.0.1:{free_port()}", api_tls_cert=str(pki.cert), api_tls_key=str(pki.key)),
        **{missing: str(tmp_path / "absent.pem")})
    with pytest.raises(Invalid, match=f"FLEET_{missing.upper()}") as refused:
        await run(settings)
    assert refused.value.field == missing
