"""A certificate authority of its own for servers on loopback: `fleet up --cluster 3`, the cluster
tests and benchmarks run `deploy/nats/fleet-node.conf` verbatim, TLS on the client and route
listeners included, so they need a CA and a node certificate. Real deployments bring their own
(cert-manager on Kubernetes, files on hosts: docs/operations.md, "TLS").

The CA key never leaves the directory it is made in (0700, files 0600); the node certificate
names 127.0.0.1 and localhost and serves both as a server and, for routes, as a client.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from shared.secretfiles import write_private

CA_FILE = "ca.crt"
CERT_FILE = "node.crt"
KEY_FILE = "node.key"


@dataclass(frozen=True)
class LoopbackPki:
    """Paths of the CA certificate and of the node's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def loopback_pki(directory: Path, *, days: int = 3650) -> LoopbackPki:
    """The CA and node certificate in `directory`, made on first use and reused after."""
    pki = LoopbackPki(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
    if pki.ca.exists() and pki.cert.exists() and pki.key.exists():
        return pki
    # Imported here: only `fleet up --cluster` and the tests need it (the `embedded` extra).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetplane loopback CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-nats")]))
            .issuer_name(ca_name).public_key(node_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(directory / "ca.key", ca_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    write_private(pki.key, node_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    write_private(pki.cert, node.public_bytes(pem).decode())
    write_private(pki.ca, ca.public_bytes(pem).decode())  # last: its presence says the set is whole
    return pki
