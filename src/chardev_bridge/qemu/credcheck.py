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
import stat
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.qemu.authz import qemu_dn
from chardev_bridge.qemu.credfiles import (
    Finding,
    Level,
    describe_unreadable,
)
from chardev_bridge.qemu.policy import crl_signed_by
from chardev_bridge.tls.setup import Endpoint

# QEMU's gnutls_x509_crt_list_import() into a 16-entry array (MAX_CERTS in tlscredsx509.c).
MAX_CA_CERTS = 16
EXPIRY_WARNING = dt.timedelta(days=30)
_NO_ISSUER = "The certificate hasn't got a known issuer"


class _Checker:
    def __init__(self, base: str, endpoint: Endpoint, password: bytes | None, now: dt.datetime):
        self.base = base
        self.endpoint: Endpoint = endpoint
        self.password = password
        self.now = now
        self.findings: list[Finding] = []

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))

    def path(self, name: str) -> str:
        # QEMU builds paths with "%s/%s" from the dir property as given.
        return f"{self.base}/{name}"

    # -- files present (qcrypto_tls_creds_get_path) --------------------------------------------

    def locate(self, name: str, required: bool) -> str | None:
        path = self.path(name)
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == 2 and not required:  # ENOENT on an optional file: simply absent
                return None
            self.add("error", f"Unable to access credentials {path}: {os.strerror(exc.errno or 0)}")
            return None
        return path

    # -- certificate checks (qcrypto_tls_creds_check_cert) -------------------------------------

    def check_times(self, cert: x509.Certificate, path: str, is_ca: bool) -> None:
        what = "CA" if is_ca else self.endpoint
        if cert.not_valid_after_utc < self.now:
            self.add("error", f"The {what} certificate {path} has expired")
        elif cert.not_valid_after_utc - self.now < EXPIRY_WARNING:
            days = (cert.not_valid_after_utc - self.now).days
            self.add(
                "warning",
                f"The {what} certificate {path} expires in {days} days "
                f"({cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
            )
        if cert.not_valid_before_utc > self.now:
            self.add("error", f"The {what} certificate {path} is not yet active")

    def check_basic_constraints(self, cert: x509.Certificate, path: str, is_ca: bool) -> None:
        try:
            ca_flag = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            if is_ca:
                self.add("error", f"The certificate {path} is missing basic constraints for a CA")
            return
        if ca_flag and not is_ca:
            self.add(
                "error",
                f"The certificate {path} basic constraints show a CA, "
                f"but we need one for a {self.endpoint}",
            )
        elif not ca_flag and is_ca:
            self.add("error", f"The certificate {path} basic constraints do not show a CA")

    def check_key_usage(self, cert: x509.Certificate, path: str, is_ca: bool) -> None:
        try:
            ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
        except x509.ExtensionNotFound:
            return  # QEMU assumes the usage it needs
        if not ext.critical:
            return  # QEMU only enforces a critical keyUsage
        usage = ext.value
        if is_ca:
            if not usage.key_cert_sign:
                self.add("error", f"Certificate {path} usage does not permit certificate signing")
            return
        if not usage.digital_signature:
            self.add("error", f"Certificate {path} usage does not permit digital signature")
        if not usage.key_encipherment:
            self.add(
                "warning",
                f"Certificate {path} usage does not permit key encipherment: Debian's QEMU 7.2 "
                "accepts that, upstream QEMU 7.2.0 refuses to load it",
            )

    def check_purpose(self, cert: x509.Certificate, path: str) -> None:
        try:
            ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        except x509.ExtensionNotFound:
            return  # no extendedKeyUsage: any purpose
        purposes = set(ext.value)
        wanted = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if self.endpoint == "server"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        if wanted in purposes or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in purposes:
            return
        if ext.critical:
            self.add(
                "error",
                f"Certificate {path} purpose does not allow use with a TLS {self.endpoint}",
            )
        else:
            # OpenSSL checks the purpose whether the extension is critical or not.
            self.add(
                "warning",
                f"Certificate {path} purpose does not allow use with a TLS {self.endpoint}: "
                "QEMU ignores a non-critical extendedKeyUsage, OpenSSL-based peers refuse it",
            )

    def check_cert(self, cert: x509.Certificate, path: str, is_ca: bool) -> None:
        self.check_times(cert, path, is_ca)
        self.check_basic_constraints(cert, path, is_ca)
        self.check_key_usage(cert, path, is_ca)
        if not is_ca:
            self.check_purpose(cert, path)

    def check_pair(
        self, cert: x509.Certificate, path: str, cas: list[x509.Certificate], ca_path: str
    ) -> None:
        for ca in cas:
            if ca == cert:
                return  # a certificate in the trusted list is trusted as it is
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return
        self.add(
            "error",
            f"Our own certificate {path} failed validation against {ca_path}: {_NO_ISSUER}",
        )

    # -- loading files -------------------------------------------------------------------------

    def load_leaf(self, path: str) -> x509.Certificate | None:
        try:
            with open(path, "rb") as f:
                certs = x509.load_pem_x509_certificates(f.read())
        except OSError as exc:
            self.add("error", f"Cannot load CA cert list {path}: {exc.strerror}")
            return None
        except ValueError as exc:
            self.add(
                "error", f"Unable to import {self.endpoint} certificate {path}: {_reason(exc)}"
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

    def check_key(self, cert_path: str, key_path: str, cert: x509.Certificate | None) -> None:
        # Imported here: key parsing is only for the checks, which run in a child process.
        from cryptography.hazmat.primitives import serialization

        prefix = f"Cannot load certificate '{cert_path}' & key '{key_path}'"
        try:
            st = os.stat(key_path)
        except OSError:
            return
        if st.st_mode & 0o077:
            self.add(
                "warning",
                f"Private key {key_path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it",
            )
        try:
            with open(key_path, "rb") as f:
                data = f.read()
        except PermissionError as exc:
            self.add("error", f"{prefix}: {exc.strerror}: {describe_unreadable(key_path)}")
            return
        except OSError as exc:
            self.add("error", f"{prefix}: {exc.strerror}")
            return
        password = self.password
        if password is not None and b"ENCRYPTED" not in data:
            # A password for a plain key: QEMU loads it all the same, and so do we.
            self.add("warning", f"{key_path}: a password was given but the key is not encrypted")
            password = None
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError:
            self.add(
                "error",
                f"{prefix}: Decryption has failed."
                " (the key is encrypted and no password was given)",
            )
            return
        except ValueError as exc:
            if b"ENCRYPTED" in data:
                self.add("error", f"{prefix}: Decryption has failed. (wrong password?)")
            else:
                self.add("error", f"{prefix}: {_reason(exc)}")
            return
        except UnsupportedAlgorithm as exc:
            self.add("error", f"{prefix}: {exc}")
            return
        if cert is None:
            return
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            self.add("error", f"{prefix}: The certificate and the given key do not match.")

    def check_crl(self, path: str, cas: list[x509.Certificate], ca_path: str) -> None:
        try:
            with open(path, "rb") as f:
                crl = x509.load_pem_x509_crl(f.read())
        except OSError as exc:
            self.add("error", f"Cannot load CRL '{path}': {exc.strerror}")
            return
        except ValueError as exc:
            self.add("error", f"Cannot load CRL '{path}': {_reason(exc)}")
            return
        if not any(ca.subject == crl.issuer and crl_signed_by(crl, ca) for ca in cas):
            self.add(
                "warning",
                f"CRL {path} is not signed by a CA in {ca_path}: QEMU ignores it, "
                "so it revokes nothing",
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update < self.now:
            self.add(
                "warning",
                f"CRL {path} is out of date (next update was due {next_update:%Y-%m-%d %H:%M} "
                "UTC): QEMU 7.2 still enforces it, OpenSSL-based servers refuse every client "
                "with it; re-sign it with `chardev-bridge creds revoke`",
            )
        if crl.last_update_utc > self.now:
            self.add(
                "warning",
                f"CRL {path} is not valid yet (issued {crl.last_update_utc:%Y-%m-%d %H:%M} UTC): "
                "QEMU 7.2 enforces it anyway, OpenSSL-based servers refuse every client with it",
            )
        serials = ", ".join(f"{r.serial_number:x}" for r in crl)
        self.add(
            "info",
            f"CRL {path} revokes {len(crl)} certificate(s){': ' if serials else ''}{serials}",
        )

    def check_dh(self, path: str) -> None:
        from cryptography.hazmat.primitives import serialization

        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.add("error", f"Unable to load DH parameters from {path}: {exc.strerror}")
            return
        # gnutls imports PKCS#3 only; OpenSSL 3 writes "X9.42 DH PARAMETERS" for named groups.
        if b"-----BEGIN DH PARAMETERS-----" not in data:
            self.add(
                "error",
                f"Unable to load DH parameters from {path}: no PKCS#3 'DH PARAMETERS' PEM block",
            )
            return
        try:
            # Newer cryptography releases deprecate finite-field DH; QEMU still reads the
            # file, so we check it without a warning on the user's terminal.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                serialization.load_pem_parameters(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            self.add("error", f"Unable to load DH parameters from {path}: {exc}")

    def describe_leaf(self, cert: x509.Certificate, path: str) -> None:
        self.add(
            "info",
            f"The {self.endpoint} certificate {path}: DN '{qemu_dn(cert.subject)}' "
            f"(as tls-authz matches it), serial {cert.serial_number:x}, "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d} UTC",
        )
        if self.endpoint != "server":
            return
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] if san else []
        names += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)] if san else []
        if names:
            self.add("info", f"The server certificate {path} is valid for {', '.join(names)}")
        else:
            self.add(
                "warning",
                f"The server certificate {path} has no subjectAltName: QEMU clients fall back "
                "to its CN, OpenSSL-based clients (and so the bridge) match no name",
            )

    # -- the whole directory (qcrypto_tls_creds_x509_load) -------------------------------------

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
            cert = self.load_leaf(cert_path)
        cas: list[x509.Certificate] = []
        if ca_path and os.access(ca_path, os.R_OK):
            cas = self.load_ca_list(ca_path)
        if cert is not None and cert_path:
            self.check_cert(cert, cert_path, is_ca=False)
        for ca in cas:
            self.check_cert(ca, ca_path or "", is_ca=True)
        if cert is not None and cert_path and cas and ca_path:
            self.check_pair(cert, cert_path, cas, ca_path)

        if cert_path and key_path:
            self.check_key(cert_path, key_path, cert)
        if crl_path and ca_path:
            self.check_crl(crl_path, cas, ca_path)
        if server:
            if dh_path:
                self.check_dh(dh_path)
            elif ca_path:
                self.add(
                    "info",
                    f"No {self.path('dh-params.pem')}: QEMU generates 2048-bit DH parameters "
                    "at every start (up to a few seconds)",
                )
        if cert is not None and cert_path:
            self.describe_leaf(cert, cert_path)
        return self.findings


def _reason(exc: Exception) -> str:
    """A short reason for a parse failure (cryptography's PEM errors carry a FAQ link)."""
    text = str(exc)
    if "Unable to load PEM file" in text:
        return "no valid PEM block (-----BEGIN ...-----) found"
    return text


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
