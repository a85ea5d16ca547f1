"""The checks QEMU 7.2 makes when it reads a server's or client's private key, the CRL and the
DH parameters, with the warnings `creds check` adds (a key others can read, a stale CRL)."""

from __future__ import annotations

import datetime as dt
import os
import stat
import warnings

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chardev_bridge.qemu.credfiles import Finding, describe_unreadable


def parse_error(exc: Exception) -> str:
    """A short reason for a parse failure (cryptography's PEM errors carry a FAQ link)."""
    text = str(exc)
    if "Unable to load PEM file" in text:
        return "no valid PEM block (-----BEGIN ...-----) found"
    return text


def check_key(
    cert_path: str, key_path: str, cert: x509.Certificate | None, password: bytes | None
) -> list[Finding]:
    """The key's file mode, whether it loads (with ``password``), and whether it is the
    key of ``cert``."""
    # Imported here: key parsing is only for the checks, which run in a child process.
    from cryptography.hazmat.primitives import serialization

    findings: list[Finding] = []
    prefix = f"Cannot load certificate '{cert_path}' & key '{key_path}'"
    try:
        st = os.stat(key_path)
    except OSError:
        return findings
    if st.st_mode & 0o077:
        findings.append(
            Finding(
                "warning",
                f"Private key {key_path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it",
            )
        )
    try:
        with open(key_path, "rb") as f:
            data = f.read()
    except PermissionError as exc:
        findings.append(
            Finding("error", f"{prefix}: {exc.strerror}: {describe_unreadable(key_path)}")
        )
        return findings
    except OSError as exc:
        findings.append(Finding("error", f"{prefix}: {exc.strerror}"))
        return findings
    if password is not None and b"ENCRYPTED" not in data:
        # A password for a plain key: QEMU loads it all the same, and so do we.
        findings.append(
            Finding("warning", f"{key_path}: a password was given but the key is not encrypted")
        )
        password = None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        findings.append(
            Finding(
                "error",
                f"{prefix}: Decryption has failed."
                " (the key is encrypted and no password was given)",
            )
        )
        return findings
    except ValueError as exc:
        if b"ENCRYPTED" in data:
            findings.append(Finding("error", f"{prefix}: Decryption has failed. (wrong password?)"))
        else:
            findings.append(Finding("error", f"{prefix}: {parse_error(exc)}"))
        return findings
    except UnsupportedAlgorithm as exc:
        findings.append(Finding("error", f"{prefix}: {exc}"))
        return findings
    if cert is None:
        return findings
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        findings.append(
            Finding("error", f"{prefix}: The certificate and the given key do not match.")
        )
    return findings


def check_crl(
    path: str, cas: list[x509.Certificate], ca_path: str, now: dt.datetime
) -> list[Finding]:
    """Whether the CRL loads, is signed by one of ``cas`` and is current; what it revokes."""
    try:
        with open(path, "rb") as f:
            crl = x509.load_pem_x509_crl(f.read())
    except OSError as exc:
        return [Finding("error", f"Cannot load CRL '{path}': {exc.strerror}")]
    except ValueError as exc:
        return [Finding("error", f"Cannot load CRL '{path}': {parse_error(exc)}")]
    findings = []
    if not crl_signed_by_one_of(crl, cas):
        findings.append(
            Finding(
                "warning",
                f"CRL {path} is not signed by a CA in {ca_path}: QEMU ignores it, "
                "so it revokes nothing",
            )
        )
    next_update = crl.next_update_utc
    if next_update is not None and next_update < now:
        findings.append(
            Finding(
                "warning",
                f"CRL {path} is out of date (next update was due {next_update:%Y-%m-%d %H:%M} "
                "UTC): QEMU 7.2 still enforces it, OpenSSL-based servers refuse every client "
                "with it; re-sign it with `chardev-bridge creds revoke`",
            )
        )
    if crl.last_update_utc > now:
        findings.append(
            Finding(
                "warning",
                f"CRL {path} is not valid yet (issued {crl.last_update_utc:%Y-%m-%d %H:%M} UTC):"
                " QEMU 7.2 enforces it anyway, OpenSSL-based servers refuse every client with it",
            )
        )
    serials = ", ".join(f"{r.serial_number:x}" for r in crl)
    findings.append(
        Finding(
            "info",
            f"CRL {path} revokes {len(crl)} certificate(s){': ' if serials else ''}{serials}",
        )
    )
    return findings


def check_dh(path: str) -> list[Finding]:
    """Whether the DH parameters are a PKCS#3 block that loads (all gnutls reads)."""
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return [Finding("error", f"Unable to load DH parameters from {path}: {exc.strerror}")]
    # gnutls imports PKCS#3 only; OpenSSL 3 writes "X9.42 DH PARAMETERS" for named groups.
    if b"-----BEGIN DH PARAMETERS-----" not in data:
        return [
            Finding(
                "error",
                f"Unable to load DH parameters from {path}: no PKCS#3 'DH PARAMETERS' PEM block",
            )
        ]
    try:
        # Newer cryptography releases deprecate finite-field DH; QEMU still reads the
        # file, so we check it without a warning on the user's terminal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            serialization.load_pem_parameters(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        return [Finding("error", f"Unable to load DH parameters from {path}: {exc}")]
    return []


def crl_signed_by_one_of(crl: x509.CertificateRevocationList, cas: list[x509.Certificate]) -> bool:
    """Whether one of ``cas`` issued and signed ``crl`` (QEMU loads a CRL signed by another CA;
    it revokes nothing)."""
    return any(ca.subject == crl.issuer and _signed_by(crl, ca) for ca in cas)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return False
    try:
        return crl.is_signature_valid(key)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False
