"""TLS policy: a QEMU ``tls-creds-x509`` directory becomes an ``ssl.SSLContext``.

No I/O beyond reading the credential files: what is verified, and how, is decided here and
tested without sockets.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from chardev_bridge.qemu._filechecks import crl_signed_by_one_of
from chardev_bridge.qemu.credfiles import CredentialError, describe_unreadable
from chardev_bridge.qemu.dn import qemu_dn
from chardev_bridge.qemu.priority import (
    DEFAULT_PRIORITY,
    TlsPriority,
    apply_priority,
    check_negotiated,
)
from chardev_bridge.tls.resumption import disable_resumption
from chardev_bridge.tls.setup import Endpoint, PeerCert, PeerRejected

if TYPE_CHECKING:
    from chardev_bridge.qemu.authz import AuthzList

log = logging.getLogger("chardev_bridge")


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
    except PermissionError as exc:
        raise CredentialError(
            f"Unable to access credentials {path}: {exc.strerror}: {describe_unreadable(path)}"
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
    # Which peer DNs may talk to us (QEMU tls-authz); None lets every verified peer in.
    authz: AuthzList | None = None
    priority: TlsPriority = DEFAULT_PRIORITY

    def __post_init__(self) -> None:
        if self.authz is not None and not self.verify_peer:
            # QEMU silently skips authz without verify-peer; an allow-list that allows
            # everyone is a trap, so refuse the combination.
            raise CredentialError("an allow-list (--tls-authz) needs peer verification on")

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
    # Before the key is loaded, so that a key too weak for the priority fails here.
    apply_priority(ctx, policy.priority)
    # TLS 1.2 renegotiation would need replies while we only read; QEMU never asks for it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_verify_locations(cafile=str(creds.ca_cert))
    except ssl.SSLError as exc:
        raise CredentialError(
            f"cannot load CA certificate {creds.ca_cert}: {_reason(exc)}"
        ) from None
    if creds.cert is not None and creds.key is not None:
        _load_cert_chain(ctx, creds.cert, creds.key, policy.key_password)
    if server:
        if not disable_resumption(ctx):
            log.debug("this Python cannot switch OpenSSL's server session cache off")
        if creds.dh_params is not None:
            _load_dh_params(ctx, creds.dh_params, policy.priority.text)
        # The CRL is checked after the handshake (check_peer), not by OpenSSL: only then is
        # the revoked certificate's subject and serial known for the log, and, as in QEMU, a
        # CRL past its next-update date still revokes instead of locking every client out.
        ctx.verify_mode = ssl.CERT_REQUIRED if policy.verify_peer else ssl.CERT_NONE
    else:
        ctx.check_hostname = policy.verify_peer
        ctx.verify_mode = ssl.CERT_REQUIRED if policy.verify_peer else ssl.CERT_NONE
    return ctx


def _load_dh_params(ctx: ssl.SSLContext, path: Path, priority: str) -> None:
    try:
        ctx.load_dh_params(str(path))
    except ssl.SSLError as exc:
        if exc.reason != "DH_KEY_TOO_SMALL":
            raise CredentialError(f"cannot load DH parameters {path}: {_reason(exc)}") from None
        # As gnutls does under such a priority: no DHE suites, ECDHE still works. The
        # 2048-bit groups that certtool and `creds init` write are below SECURE192/256.
        log.warning(
            "%s: too small for the priority %r; DHE suites are off (ECDHE is used)",
            path,
            priority,
        )


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


def describe_peer_cert(der: bytes | None) -> PeerCert | None:
    """Parse a DER certificate into its QEMU-format DN and serial (None when absent)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        # OpenSSL accepted it (perhaps unverified: --no-verify-peer); we only describe it.
        return PeerCert(dn="(certificate not parsable)", serial=-1)
    return PeerCert(dn=qemu_dn(cert.subject), serial=cert.serial_number)


def load_crl(creds: X509Creds) -> x509.CertificateRevocationList | None:
    """The CRL of a server credential dir, checked against its CA; None when there is none."""
    if creds.ca_crl is None:
        return None
    try:
        crl = x509.load_pem_x509_crl(creds.ca_crl.read_bytes())
    except ValueError as exc:
        raise CredentialError(f"cannot load CRL {creds.ca_crl}: {exc}") from None
    cas = x509.load_pem_x509_certificates(creds.ca_cert.read_bytes())
    if not crl_signed_by_one_of(crl, cas):
        # QEMU loads such a CRL and it revokes nothing; `creds check` warns about it.
        return None
    return crl


def check_peer(
    policy: TLSPolicy,
    crl: x509.CertificateRevocationList | None,
    *,
    cert_der: bytes | None,
    version: str | None,
    cipher: str | None,
) -> PeerCert | None:
    """Apply what the handshake itself cannot: revocation, the DN allow-list, TLS 1.3 suites.

    Returns the peer's certificate facts; raises :class:`PeerRejected` with the reason.
    """
    peer = describe_peer_cert(cert_der)
    problem = check_negotiated(policy.priority, version, cipher)
    if problem is not None:
        raise PeerRejected(problem)
    if not policy.verify_peer:
        return peer
    if crl is not None and peer is not None:
        revoked = crl.get_revoked_certificate_by_serial_number(peer.serial)
        if revoked is not None:
            when = revoked.revocation_date_utc.strftime("%Y-%m-%d %H:%M UTC")
            raise PeerRejected(
                f"certificate {peer.dn!r} serial {peer.serial:#x} is revoked"
                f" (since {when}, {policy.creds.ca_crl})"
            )
    if policy.authz is not None:
        decision = policy.authz.decide(peer.dn if peer else "")
        if not decision.allowed:
            raise PeerRejected(f"not allowed: {decision.describe()}")
    return peer


def server_hostname_for(policy: TLSPolicy, host: str) -> str | None:
    """The name a TLS client checks the server certificate against (None: don't check)."""
    if policy.endpoint != "client":
        return None
    return policy.hostname or host
