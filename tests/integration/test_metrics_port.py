"""A part's own metrics port (shared/metrics.py): plain HTTP on loopback, HTTPS with a certificate
(as on Kubernetes, where it leaves loopback), a plain client refused by the TLS port, and a
certificate without its key refused before anything listens."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shared import metrics
from shared.errors import Invalid
from shared.pki import loopback_pki
from tests import exposition


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return str(response.read().decode())


def test_plain_port_serves_the_exposition() -> None:
    metrics.APPEND_SECONDS.observe(0.002)
    port = metrics.serve("registry", 0)
    families = exposition.families(_get(f"http://127.0.0.1:{port}/metrics"))
    assert exposition.histogram_count(families["fleet_append_seconds"]) >= 1


def test_tls_port_serves_https_verified_by_the_ca_and_refuses_plain_http(tmp_path: Path) -> None:
    pki = loopback_pki(tmp_path / "pki")
    port = metrics.serve("drift", 0, certfile=str(pki.cert), keyfile=str(pki.key))
    context = ssl.create_default_context(cafile=str(pki.ca))
    assert "fleet_part_info" in exposition.families(_get(f"https://127.0.0.1:{port}/metrics", context))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA
        _get(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context())


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    pki = loopback_pki(tmp_path / "pki")
    with pytest.raises(Invalid) as refused:
        metrics.serve("rollout", 0, certfile=str(pki.cert))
    assert refused.value.field == "metrics_tls_key"
