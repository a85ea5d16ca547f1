"""Check a QEMU x509 credentials directory the way QEMU 7.2 checks it when it loads it.

:func:`check_creds` repeats the checks of QEMU's ``tls-creds-x509`` object (crypto/tlscreds.c and
crypto/tlscredsx509.c) and words its errors the same way, so a directory that passes here loads
in QEMU and one that fails names the same problem QEMU would. Unlike QEMU, which stops at the
first problem, every problem is reported. Warnings and info lines add what QEMU does not say.

Measured against Debian 12's QEMU 7.2 (gnutls 3.7.9), beyond what its source shows:

* only the first 16 certificates of ``ca-cert.pem`` count; a leaf issued by a later one fails
  with "hasn't got a known issuer";
* a leaf whose critical keyUsage lacks keyEncipherment loads (upstream 7.2.0 refused it);
* a CRL past its next update, or not yet valid, still revokes, and good clients still connect;
  a CRL signed by another CA loads but revokes nothing;
* any chain failure, including a CA with the right name but the wrong key, is reported as
  "The certificate hasn't got a known issuer".
"""

from __future__ import annotations

import datetime as dt
import os

from cryptography import x509

from chardev_bridge.qemu._certchecks import check_cert, check_pair, describe_leaf
from chardev_bridge.qemu._filechecks import check_crl, check_dh, check_key, parse_error
from chardev_bridge.qemu.credfiles import Finding, Level
from chardev_bridge.tls.setup import Endpoint

# QEMU's gnutls_x509_crt_list_import() into a 16-entry array (MAX_CERTS in tlscredsx509.c).
MAX_CA_CERTS = 16


class _Checker:
    """One directory's check: which files QEMU looks for, loading them, and the order of the
    checks (qcrypto_tls_creds_x509_load)."""

    def __init__(self, base: str, endpoint: Endpoint, password: bytes | None, now: dt.datetime):
        self.base = base
        self.endpoint: Endpoint = endpoint
        self.password = password
        self.now = now
        self.findings: list[Finding] = []
        # The endpoint's own certificate, once run() has loaded it.
        self.leaf: x509.Certificate | None = None

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))

    def path(self, name: str) -> str:
        # QEMU builds paths with "%s/%s" from the dir property as given.
        return f"{self.base}/{name}"

    def locate(self, name: str, required: bool) -> str | None:
        """The file's path when it exists (qcrypto_tls_creds_get_path)."""
        path = self.path(name)
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == 2 and not required:  # ENOENT on an optional file: simply absent
                return None
            self.add("error", f"Unable to access credentials {path}: {os.strerror(exc.errno or 0)}")
            return None
        return path

    def load_leaf(self, path: str) -> x509.Certificate | None:
        try:
            with open(path, "rb") as f:
                certs = x509.load_pem_x509_certificates(f.read())
        except OSError as exc:
            self.add("error", f"Cannot load CA cert list {path}: {exc.strerror}")
            return None
        except ValueError as exc:
            self.add(
                "error", f"Unable to import {self.endpoint} certificate {path}: {parse_error(exc)}"
            )
            return None
        return certs[0]  # gnutls_x509_crt_import() takes the first PEM block

    def load_ca_list(self, path: str) -> list[x509.Certificate]:
        try:
            with open(path, "rb") as f:
                certs = x509.load_pem_x509_certificates(f.read())
        except OSError as exc:
            self.add("error", f"Cannot load CA cert list {path}: {exc.strerror}")
            return []
        except ValueError:
            self.add("error", f"Unable to import CA certificate list {path}")
            return []
        if len(certs) > MAX_CA_CERTS:
            self.add(
                "warning",
                f"{path} holds {len(certs)} certificates: QEMU 7.2 reads only the first "
                f"{MAX_CA_CERTS} when checking its own certificate",
            )
        return certs[:MAX_CA_CERTS]

    def run(self) -> list[Finding]:
        server = self.endpoint == "server"
        ca_path = self.locate("ca-cert.pem", required=True)
        crl_path = self.locate("ca-crl.pem", required=False) if server else None
        cert_path = self.locate(f"{self.endpoint}-cert.pem", required=server)
        key_path = self.locate(f"{self.endpoint}-key.pem", required=server)
        dh_path = self.locate("dh-params.pem", required=False) if server else None

        if not server:
            if os.path.exists(self.path("ca-crl.pem")):
                self.add("info", f"{self.path('ca-crl.pem')} is not loaded for a client endpoint")
            if (cert_path is None) != (key_path is None):
                have = cert_path or key_path
                self.add(
                    "warning",
                    f"{have} has no partner (client-cert.pem and client-key.pem go together): "
                    "QEMU will send no client certificate",
                )

        # The sanity check reads only files it can read (access(R_OK)).
        cert = None
        if cert_path and os.access(cert_path, os.R_OK):
            cert = self.leaf = self.load_leaf(cert_path)
        cas: list[x509.Certificate] = []
        if ca_path and os.access(ca_path, os.R_OK):
            cas = self.load_ca_list(ca_path)
        if cert is not None and cert_path:
            self.findings += check_cert(
                cert, cert_path, is_ca=False, endpoint=self.endpoint, now=self.now
            )
        for ca in cas:
            self.findings += check_cert(
                ca, ca_path or "", is_ca=True, endpoint=self.endpoint, now=self.now
            )
        if cert is not None and cert_path and cas and ca_path:
            self.findings += check_pair(cert, cert_path, cas, ca_path)

        if cert_path and key_path:
            self.findings += check_key(cert_path, key_path, cert, self.password)
        if crl_path and ca_path:
            self.findings += check_crl(crl_path, cas, ca_path, self.now)
        if server:
            if dh_path:
                self.findings += check_dh(dh_path)
            elif ca_path:
                self.add(
                    "info",
                    f"No {self.path('dh-params.pem')}: QEMU generates 2048-bit DH parameters "
                    "at every start (up to a few seconds)",
                )
        if cert is not None and cert_path:
            self.findings += describe_leaf(cert, cert_path, self.endpoint)
        return self.findings


def check_creds(
    directory: str | os.PathLike[str],
    endpoint: Endpoint,
    *,
    password: bytes | None = None,
    now: dt.datetime | None = None,
) -> list[Finding]:
    """Run QEMU 7.2's load-time checks on a credentials directory, plus a few of our own.

    ``endpoint`` is QEMU's ``endpoint=`` (which files are required). ``password`` decrypts an
    encrypted key (QEMU's ``passwordid``). Errors use QEMU's wording where it has one and mean
    QEMU would refuse the directory; warnings flag what works in QEMU but will bite (keys
    readable by others, expiry within 30 days, peers that check more than QEMU); info lines
    show the leaf's DN and serial and the server certificate's names.
    """
    when = now or dt.datetime.now(dt.UTC)
    return _Checker(os.fspath(directory), endpoint, password, when).run()


def check_creds_and_expiry(
    directory: str | os.PathLike[str], endpoint: Endpoint, *, password: bytes | None = None
) -> tuple[list[Finding], float | None]:
    """:func:`check_creds`, and when the certificate it checked expires (unix time; None
    without a loadable one), read from the one load of it."""
    checker = _Checker(os.fspath(directory), endpoint, password, dt.datetime.now(dt.UTC))
    findings = checker.run()
    leaf = checker.leaf
    return findings, leaf.not_valid_after_utc.timestamp() if leaf is not None else None
