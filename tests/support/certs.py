"""Certificates and credential files for tests: throw-away PKIs from trustme laid out as QEMU
credential directories, `creds init` layouts, deliberately odd certificates crafted extension by
extension, and authz-list files."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ObjectIdentifier

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.dn import qemu_dn

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


# -- trustme PKIs in QEMU's tls-creds-x509 layout -----------------------------------------------


@dataclass(frozen=True)
class PKI:
    """A CA with a server dir and a client dir in QEMU's tls-creds-x509 layout."""

    ca: trustme.CA
    server_dir: Path
    client_dir: Path


def write_creds_dir(
    directory: Path, ca: trustme.CA, endpoint: str, cert: trustme.LeafCert | None
) -> Path:
    """Write ``ca-cert.pem`` plus ``{endpoint}-cert.pem``/``-key.pem`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(directory / "ca-cert.pem"))
    if cert is not None:
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        (directory / f"{endpoint}-cert.pem").write_bytes(chain)
        key = directory / f"{endpoint}-key.pem"
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    return directory


def make_pki(
    root: Path,
    *,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    client_cn: str = "client.example.com",
) -> PKI:
    """A fresh CA, a server certificate for ``server_names`` and a client certificate."""
    ca = trustme.CA(organization_name="chardev-bridge tests")
    server = ca.issue_cert(*server_names, common_name="server.example.com")
    client = ca.issue_cert(
        "client.example.com", common_name=client_cn, organization_unit_name="clients"
    )
    return PKI(
        ca=ca,
        server_dir=write_creds_dir(root / "server", ca, "server", server),
        client_dir=write_creds_dir(root / "client", ca, "client", client),
    )


# -- `creds init` layouts ----------------------------------------------------------------------

# What init_pki gives the server certificate.
SERVER_DN = "CN=localhost"


@dataclass(frozen=True)
class Creds:
    """``init_pki`` output plus a second client from the same CA (``other``)."""

    root: Path
    ca: Path
    server: Path
    client: Path
    other: Path
    other_leaf: pki.Issued


def make_creds(tmp_path: Path, other_dn: str = "O=chardev-bridge,CN=revoked", **init: Any) -> Creds:
    """``creds init`` in ``tmp_path/pki`` (``init``: its options), and a client ``other``."""
    root = tmp_path / "pki"
    layout = pki.init_pki(root, **init)
    other = root / "other"
    leaf = pki.issue_into(layout.ca_dir, other, "client", dn=other_dn)
    return Creds(root, layout.ca_dir, layout.server_dir, layout.client_dir, other, leaf)


def write_authz_file(directory: Path, content: object) -> Path:
    """``directory/authz.json``: ``content`` as it is (a str) or as JSON."""
    path = directory / "authz.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def subject_dn(cert_pem: Path) -> str:
    """The DN of a certificate file as the bridge logs it (QEMU's tls-authz format)."""
    return qemu_dn(x509.load_pem_x509_certificate(cert_pem.read_bytes()).subject)


# -- certificates with exactly the extensions a test asks for ----------------------------------


def key_usage(*flags: str) -> x509.KeyUsage:
    """A KeyUsage with the named flags set (``digital_signature``, ``key_cert_sign`` ...)."""
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{n: n in flags for n in names})


def craft(
    *,
    issuer: pki.Issued | None = None,
    dn: str = "CN=localhost",
    ca: bool | None = False,
    ku: Sequence[str] | None = ("digital_signature", "key_encipherment"),
    ku_critical: bool = True,
    eku: Sequence[ObjectIdentifier] | None = None,
    eku_critical: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    san: Sequence[str] = ("localhost",),
) -> pki.Issued:
    """A certificate with exactly the given extensions, self-signed when ``issuer`` is None."""
    key = pki.generate_key()
    name = pki.parse_dn(dn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if ku is not None:
        builder = builder.add_extension(key_usage(*ku), critical=ku_critical)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=eku_critical)
    if ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in san]), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return pki.Issued(cert, key)


def write_dir(
    directory: Path,
    role: str,
    leaf: pki.Issued | None,
    ca_certs: Sequence[x509.Certificate],
    *,
    key: pki.PrivateKey | None = None,
    password: bytes | None = None,
    crl: x509.CertificateRevocationList | None = None,
    dh: bool = True,
) -> Path:
    """Write a QEMU credentials dir: ca-cert.pem (all of ``ca_certs``), leaf, key, CRL."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(b"".join(pki.cert_pem(c) for c in ca_certs))
    if leaf is not None:
        (directory / f"{role}-cert.pem").write_bytes(pki.cert_pem(leaf.cert))
        key_path = directory / f"{role}-key.pem"
        key_path.write_bytes(pki.key_pem(key or leaf.key, password))
        key_path.chmod(0o600)
    if crl is not None:
        (directory / "ca-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    if dh and role == "server":
        (directory / "dh-params.pem").write_bytes(pki.dh_params_pem())
    return directory
