"""Credential dirs, good and bad, each with the error QEMU 7.2 gives when it loads it.

:data:`CASES` are server dirs (``None``: QEMU loads it), :data:`CLIENT_CASES` client dirs; the
unit tests check credcheck's words against these, the interop tests against QEMU itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.credfiles import Finding
from tests.support.certs import DAY, NOW, craft, write_dir

SERVER_EKU = [ExtendedKeyUsageOID.SERVER_AUTH]
CLIENT_EKU = [ExtendedKeyUsageOID.CLIENT_AUTH]

CA = pki.make_ca("O=Tests,CN=Test CA")
OTHER_CA = pki.make_ca("O=Tests,CN=Other CA")
SAME_NAME_CA = pki.make_ca("O=Tests,CN=Test CA")  # same DN as CA, different key
GOOD_SERVER = pki.issue_leaf(CA, "server", hostnames=["localhost"], ips=["127.0.0.1"])
GOOD_CLIENT = pki.issue_leaf(CA, "client")


def errors(findings: list[Finding]) -> list[str]:
    """The messages of the error findings."""
    return [f.message for f in findings if f.level == "error"]


def warnings(findings: list[Finding]) -> list[str]:
    """The messages of the warning findings."""
    return [f.message for f in findings if f.level == "warning"]


def weird_ca(**kwargs: object) -> pki.Issued:
    defaults: dict[str, object] = {
        "dn": "CN=Weird CA",
        "ca": True,
        "ku": ("key_cert_sign", "crl_sign"),
        "san": (),
    }
    defaults.update(kwargs)
    return craft(**defaults)  # type: ignore[arg-type]


def leaf_of(ca: pki.Issued) -> pki.Issued:
    return craft(issuer=ca, eku=SERVER_EKU)


Case = Callable[[Path], Path]


def _server(leaf: pki.Issued, cas: list[x509.Certificate] | None = None, **kw: object) -> Case:
    return lambda d: write_dir(d, "server", leaf, cas or [CA.cert], **kw)  # type: ignore[arg-type]


def _without(directory: Path, name: str) -> Path:
    (directory / name).unlink()
    return directory


_EXPIRED_CA = weird_ca(not_before=NOW - 10 * DAY, not_after=NOW - DAY)
_CA_FALSE = weird_ca(ca=False)
_CA_NO_BC = weird_ca(ca=None)
_CA_NO_SIGN = weird_ca(ku=("crl_sign",))

# name -> (builder of a server dir, the QEMU error it must produce or None when QEMU loads it)
CASES: dict[str, tuple[Case, str | None]] = {
    "good": (_server(GOOD_SERVER), None),
    "expired": (
        _server(craft(issuer=CA, eku=SERVER_EKU, not_before=NOW - 9 * DAY, not_after=NOW - DAY)),
        "The server certificate {d}/server-cert.pem has expired",
    ),
    "not-yet-active": (
        _server(craft(issuer=CA, eku=SERVER_EKU, not_before=NOW + DAY)),
        "The server certificate {d}/server-cert.pem is not yet active",
    ),
    "ca-expired": (
        _server(leaf_of(_EXPIRED_CA), [_EXPIRED_CA.cert]),
        "The CA certificate {d}/ca-cert.pem has expired",
    ),
    "ca-false": (
        _server(leaf_of(_CA_FALSE), [_CA_FALSE.cert]),
        "The certificate {d}/ca-cert.pem basic constraints do not show a CA",
    ),
    "ca-no-basic-constraints": (
        _server(leaf_of(_CA_NO_BC), [_CA_NO_BC.cert]),
        "The certificate {d}/ca-cert.pem is missing basic constraints for a CA",
    ),
    "ca-cannot-sign": (
        _server(leaf_of(_CA_NO_SIGN), [_CA_NO_SIGN.cert]),
        "Certificate {d}/ca-cert.pem usage does not permit certificate signing",
    ),
    "leaf-is-ca": (
        _server(craft(issuer=CA, ca=True, eku=SERVER_EKU)),
        "The certificate {d}/server-cert.pem basic constraints show a CA, "
        "but we need one for a server",
    ),
    "no-digital-signature": (
        _server(craft(issuer=CA, ku=("key_encipherment",), eku=SERVER_EKU)),
        "Certificate {d}/server-cert.pem usage does not permit digital signature",
    ),
    "client-purpose-on-server": (
        _server(craft(issuer=CA, eku=CLIENT_EKU)),
        "Certificate {d}/server-cert.pem purpose does not allow use with a TLS server",
    ),
    "unknown-issuer": (
        _server(GOOD_SERVER, [OTHER_CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    "same-name-other-key-ca": (
        _server(GOOD_SERVER, [SAME_NAME_CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    "key-mismatch": (
        _server(GOOD_SERVER, key=pki.generate_key()),
        "Cannot load certificate '{d}/server-cert.pem' & key '{d}/server-key.pem': "
        "The certificate and the given key do not match.",
    ),
    "encrypted-key-without-password": (
        _server(GOOD_SERVER, password=b"pw"),
        "Cannot load certificate '{d}/server-cert.pem' & key '{d}/server-key.pem': "
        "Decryption has failed.",
    ),
    "missing-server-key": (
        lambda d: _without(write_dir(d, "server", GOOD_SERVER, [CA.cert]), "server-key.pem"),
        "Unable to access credentials {d}/server-key.pem: No such file or directory",
    ),
    "missing-ca": (
        lambda d: _without(write_dir(d, "server", GOOD_SERVER, [CA.cert]), "ca-cert.pem"),
        "Unable to access credentials {d}/ca-cert.pem: No such file or directory",
    ),
    "seventeen-cas": (
        _server(GOOD_SERVER, [pki.make_ca().cert for _ in range(16)] + [CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    # QEMU loads these; credcheck may warn but must not call them errors.
    "no-key-encipherment": (
        _server(craft(issuer=CA, ku=("digital_signature",), eku=SERVER_EKU)),
        None,
    ),
    "client-purpose-not-critical": (
        _server(craft(issuer=CA, eku=CLIENT_EKU, eku_critical=False)),
        None,
    ),
    "leaf-without-basic-constraints": (_server(craft(issuer=CA, ca=None, eku=SERVER_EKU)), None),
    "crl-out-of-date": (
        _server(GOOD_SERVER, crl=pki.make_crl(CA, [5], now=NOW - 40 * DAY, days=30)),
        None,
    ),
    "crl-from-other-ca": (_server(GOOD_SERVER, crl=pki.make_crl(OTHER_CA, [5])), None),
}


def _client(leaf: pki.Issued | None, cas: list[x509.Certificate] | None = None) -> Case:
    return lambda d: write_dir(d, "client", leaf, cas or [CA.cert])


# The client endpoint: QEMU's checks differ (the certificate is optional, the purpose is
# clientAuth). Compared with QEMU 7.2 loading each dir as endpoint=client.
CLIENT_CASES: dict[str, Case] = {
    "good": _client(GOOD_CLIENT),
    "no-certificate": _client(None),
    "expired": _client(
        craft(issuer=CA, eku=CLIENT_EKU, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    ),
    "server-purpose-on-client": _client(craft(issuer=CA, eku=SERVER_EKU)),
    "unknown-issuer": _client(GOOD_CLIENT, [OTHER_CA.cert]),
    "leaf-is-ca": _client(craft(issuer=CA, ca=True, eku=CLIENT_EKU)),
    "missing-key": lambda d: _without(
        write_dir(d, "client", GOOD_CLIENT, [CA.cert]), "client-key.pem"
    ),
    "missing-ca": lambda d: _without(write_dir(d, "client", GOOD_CLIENT, [CA.cert]), "ca-cert.pem"),
}
