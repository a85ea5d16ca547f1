"""TLS policy: a QEMU ``tls-creds-x509`` directory becomes an ``ssl.SSLContext``.

No I/O beyond reading the credential files: what is verified, and how, is decided here and
tested without sockets.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509

from chardev_bridge.authz import qemu_dn

Endpoint = Literal["server", "client"]


class CredentialError(Exception):
    """A credential directory or file cannot be used; the message names the file."""


class PeerRejected(Exception):
    """The peer completed a handshake but our policy refuses it."""


@dataclass(frozen=True)
class X509Creds:
    """The files of a QEMU x509 credential directory that apply to one endpoint."""

    directory: Path
    endpoint: Endpoint
    ca_cert: Path
    cert: Path | None
    key: Path | None
    ca_crl: Path | None = None
    dh_params: Path | None = None


def _readable(path: Path) -> Path:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise CredentialError(
            f"Unable to access credentials {path}: No such file or directory"
        ) from None
    except OSError as exc:
        raise CredentialError(f"Unable to access credentials {path}: {exc.strerror}") from None
    return path


def _optional(path: Path) -> Path | None:
    return _readable(path) if path.exists() else None


def load_x509_creds(directory: str | os.PathLike[str], endpoint: Endpoint) -> X509Creds:
    """Find the files QEMU would use from ``directory`` for ``endpoint``.

    As QEMU 7.2: ``ca-cert.pem`` is required for both endpoints, ``server-cert.pem`` and
    ``server-key.pem`` for a server, ``client-cert.pem``/``client-key.pem`` are optional for a
    client (used when both exist), ``ca-crl.pem`` and ``dh-params.pem`` are server-only and
    optional. A missing required file raises :class:`CredentialError` in QEMU's words.
    """
    base = Path(directory)
    if not base.is_dir():
        raise CredentialError(f"Unable to access credentials {base}: No such directory")
    ca_cert = _readable(base / "ca-cert.pem")
    if endpoint == "server":
        return X509Creds(
            directory=base,
            endpoint=endpoint,
            ca_cert=ca_cert,
            cert=_readable(base / "server-cert.pem"),
            key=_readable(base / "server-key.pem"),
            ca_crl=_optional(base / "ca-crl.pem"),
            dh_params=_optional(base / "dh-params.pem"),
        )
    cert = _optional(base / "client-cert.pem")
    key = _optional(base / "client-key.pem")
    if (cert is None) != (key is None):
        missing = "client-key.pem" if key is None else "client-cert.pem"
        raise CredentialError(
            f"Unable to access credentials {base / missing}: No such file or directory"
            f" (needed beside {(cert or key)})"
        )
    return X509Creds(directory=base, endpoint=endpoint, ca_cert=ca_cert, cert=cert, key=key)


@dataclass(frozen=True)
class TLSPolicy:
    """Everything that decides how one side of the bridge does TLS."""

    creds: X509Creds
    verify_peer: bool = True
    # The name the server certificate must carry (client endpoint only). An IP address
    # needs an IP SAN, as for QEMU.
    hostname: str | None = None
    key_password: bytes | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        """``server`` or ``client``: the TLS role, independent of who listens on TCP."""
        return self.creds.endpoint


def _no_password() -> bytes:
    raise CredentialError("the private key is encrypted: give its password file")


def make_ssl_context(policy: TLSPolicy) -> ssl.SSLContext:
    """Build the ``SSLContext`` for ``policy``; raises :class:`CredentialError` on bad files."""
    creds = policy.creds
    server = policy.endpoint == "server"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(creds.ca_cert))
    except ssl.SSLError as exc:
        raise CredentialError(
            f"cannot load CA certificate {creds.ca_cert}: {_reason(exc)}"
        ) from None
    if creds.cert is not None and creds.key is not None:
        _load_cert_chain(ctx, creds.cert, creds.key, policy.key_password)
    if server:
        # QEMU sends no session tickets; neither do we: no resumption to support, and each
        # ticket costs the handshake time.
        ctx.num_tickets = 0
        if creds.dh_params is not None:
            ctx.load_dh_params(str(creds.dh_params))
        ctx.verify_mode = ssl.CERT_REQUIRED if policy.verify_peer else ssl.CERT_NONE
        if policy.verify_peer and creds.ca_crl is not None:
            try:
                ctx.load_verify_locations(cafile=str(creds.ca_crl))
            except ssl.SSLError as exc:
                raise CredentialError(f"cannot load CRL {creds.ca_crl}: {_reason(exc)}") from None
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    else:
        ctx.check_hostname = policy.verify_peer
        ctx.verify_mode = ssl.CERT_REQUIRED if policy.verify_peer else ssl.CERT_NONE
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert: Path, key: Path, password: bytes | None) -> None:
    pw: Callable[[], bytes] | bytes = password if password is not None else _no_password
    try:
        ctx.load_cert_chain(str(cert), str(key), password=pw)
    except CredentialError as exc:
        raise CredentialError(f"{key}: {exc}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise CredentialError(f"{key} does not match {cert}") from None
        if "BAD_DECRYPT" in str(exc) and password is not None:
            raise CredentialError(f"{key}: wrong password") from None
        raise CredentialError(f"cannot load {cert} / {key}: {_reason(exc)}") from None


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or str(exc)


@dataclass(frozen=True)
class PeerCert:
    """The facts about a peer certificate that logs and allow-lists use."""

    dn: str
    serial: int


def describe_peer_cert(der: bytes | None) -> PeerCert | None:
    """Parse a DER certificate into its QEMU-format DN and serial (None when absent)."""
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return PeerCert(dn=qemu_dn(cert.subject), serial=cert.serial_number)


def server_hostname_for(policy: TLSPolicy, host: str) -> str | None:
    """The name a TLS client checks the server certificate against (None: don't check)."""
    if policy.endpoint != "client":
        return None
    return policy.hostname or host
