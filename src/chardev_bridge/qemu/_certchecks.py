"""The checks QEMU 7.2 makes on a certificate it has loaded (qcrypto_tls_creds_check_cert and
the chain check), and the description of the leaf that `creds check` adds."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.qemu.credfiles import Finding
from chardev_bridge.qemu.dn import qemu_dn
from chardev_bridge.tls.setup import Endpoint

EXPIRY_WARNING = dt.timedelta(days=30)
_NO_ISSUER = "The certificate hasn't got a known issuer"


def check_cert(
    cert: x509.Certificate, path: str, *, is_ca: bool, endpoint: Endpoint, now: dt.datetime
) -> list[Finding]:
    """Validity times, basic constraints, key usage and (for a leaf) purpose of ``cert``."""
    findings = _check_times(cert, path, is_ca, endpoint, now)
    findings += _check_basic_constraints(cert, path, is_ca, endpoint)
    findings += _check_key_usage(cert, path, is_ca)
    if not is_ca:
        findings += _check_purpose(cert, path, endpoint)
    return findings


def _check_times(
    cert: x509.Certificate, path: str, is_ca: bool, endpoint: Endpoint, now: dt.datetime
) -> list[Finding]:
    findings = []
    what = "CA" if is_ca else endpoint
    if cert.not_valid_after_utc < now:
        findings.append(Finding("error", f"The {what} certificate {path} has expired"))
    elif cert.not_valid_after_utc - now < EXPIRY_WARNING:
        days = (cert.not_valid_after_utc - now).days
        findings.append(
            Finding(
                "warning",
                f"The {what} certificate {path} expires in {days} days "
                f"({cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
            )
        )
    if cert.not_valid_before_utc > now:
        findings.append(Finding("error", f"The {what} certificate {path} is not yet active"))
    return findings


def _check_basic_constraints(
    cert: x509.Certificate, path: str, is_ca: bool, endpoint: Endpoint
) -> list[Finding]:
    try:
        ca_flag = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        if is_ca:
            return [
                Finding("error", f"The certificate {path} is missing basic constraints for a CA")
            ]
        return []
    if ca_flag and not is_ca:
        return [
            Finding(
                "error",
                f"The certificate {path} basic constraints show a CA, "
                f"but we need one for a {endpoint}",
            )
        ]
    if not ca_flag and is_ca:
        return [Finding("error", f"The certificate {path} basic constraints do not show a CA")]
    return []


def _check_key_usage(cert: x509.Certificate, path: str, is_ca: bool) -> list[Finding]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return []  # QEMU assumes the usage it needs
    if not ext.critical:
        return []  # QEMU only enforces a critical keyUsage
    usage = ext.value
    if is_ca:
        if not usage.key_cert_sign:
            return [
                Finding("error", f"Certificate {path} usage does not permit certificate signing")
            ]
        return []
    findings = []
    if not usage.digital_signature:
        findings.append(
            Finding("error", f"Certificate {path} usage does not permit digital signature")
        )
    if not usage.key_encipherment:
        findings.append(
            Finding(
                "warning",
                f"Certificate {path} usage does not permit key encipherment: Debian's QEMU 7.2 "
                "accepts that, upstream QEMU 7.2.0 refuses to load it",
            )
        )
    return findings


def _check_purpose(cert: x509.Certificate, path: str, endpoint: Endpoint) -> list[Finding]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return []  # no extendedKeyUsage: any purpose
    purposes = set(ext.value)
    wanted = (
        ExtendedKeyUsageOID.SERVER_AUTH if endpoint == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    if wanted in purposes or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in purposes:
        return []
    if ext.critical:
        return [
            Finding("error", f"Certificate {path} purpose does not allow use with a TLS {endpoint}")
        ]
    # OpenSSL checks the purpose whether the extension is critical or not.
    return [
        Finding(
            "warning",
            f"Certificate {path} purpose does not allow use with a TLS {endpoint}: "
            "QEMU ignores a non-critical extendedKeyUsage, OpenSSL-based peers refuse it",
        )
    ]


def check_pair(
    cert: x509.Certificate, path: str, cas: list[x509.Certificate], ca_path: str
) -> list[Finding]:
    """Whether one of ``cas`` issued ``cert`` (or is ``cert``), as QEMU checks its own."""
    for ca in cas:
        if ca == cert:
            return []  # a certificate in the trusted list is trusted as it is
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return []
    return [
        Finding(
            "error",
            f"Our own certificate {path} failed validation against {ca_path}: {_NO_ISSUER}",
        )
    ]


def describe_leaf(cert: x509.Certificate, path: str, endpoint: Endpoint) -> list[Finding]:
    """The leaf's DN as tls-authz matches it, its serial and expiry, and a server
    certificate's names (a warning when it has none)."""
    findings = [
        Finding(
            "info",
            f"The {endpoint} certificate {path}: DN '{qemu_dn(cert.subject)}' "
            f"(as tls-authz matches it), serial {cert.serial_number:x}, "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d} UTC",
        )
    ]
    if endpoint != "server":
        return findings
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] if san else []
    names += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)] if san else []
    if names:
        findings.append(
            Finding("info", f"The server certificate {path} is valid for {', '.join(names)}")
        )
    else:
        findings.append(
            Finding(
                "warning",
                f"The server certificate {path} has no subjectAltName: QEMU clients fall back "
                "to its CN, OpenSSL-based clients (and so the bridge) match no name",
            )
        )
    return findings
