"""Turn TLS failures into one line of words a person can act on.

trio hides the real ``ssl`` error in ``__cause__``; OpenSSL names it in reason codes. Both are
unwrapped here so that every failed handshake is logged with its actual cause.
"""

from __future__ import annotations

import errno
import ssl

#: How a reset and a close read in every log line.
PEER_RESET_WORDS = "the peer reset the connection"
PEER_CLOSED_WORDS = "the peer closed the connection"

# Nothing listens yet (QEMU not started, wrong port).
REFUSED = "connection refused: nothing listens there yet"
# Said after REFUSED by a bridge that does not retry.
RECONNECT_HINT = " (with --reconnect SECONDS the bridge retries until something does)"

# A TLS server ended the connection right after the handshake, having said nothing: QEMU
# does this when the client certificate fails verification or tls-authz (it checks only
# after the handshake, and closes without an alert).
_QUICK_CLOSE = "the server closed the connection right after the handshake without a TLS alert"


def describe_quick_rejection(client_cert: str | None, creds_dir: str) -> str:
    """Why a TLS server probably closed right after the handshake, following what we sent:
    our client certificate ``client_cert`` (a path), or none from ``creds_dir``."""
    if client_cert is None:
        return (
            f"{_QUICK_CLOSE}: it probably requires a client certificate, and we sent none"
            f" ({creds_dir} has no client-cert.pem and client-key.pem)"
        )
    return (
        f"{_QUICK_CLOSE}: it probably rejected our client certificate {client_cert} (QEMU"
        " does this when the certificate fails verification or tls-authz)"
    )


def describe_plain_rejection(failure: str) -> str:
    """A plain-TCP peer that ``failure`` (reset or closed) right after our first bytes,
    having sent nothing: a TLS server meeting bytes that are not a TLS handshake does that."""
    return (
        f"{failure} right after our first bytes, having sent nothing: it may expect TLS"
        " (a QEMU chardev with tls-creds, a bridge with --tls-creds): give --tls-creds DIR"
    )


_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS: plain bytes or an unsupported protocol version",
    "HTTP_REQUEST": "not TLS: an HTTP request",
    "UNKNOWN_PROTOCOL": "not TLS 1.2/1.3: an SSLv2-style or unknown hello",
    "HTTPS_PROXY_REQUEST": "not TLS: an HTTP proxy request",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the peer",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer refused our TLS version (alert protocol_version)",
    "NO_SHARED_CIPHER": "no cipher in common with the peer",
    "NO_CIPHERS_AVAILABLE": "no cipher allowed by the policy",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer aborted the handshake (alert handshake_failure)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no client certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "the peer requires a client certificate and we have none (alert certificate_required)"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": "the peer rejected our certificate: unknown CA (alert unknown_ca)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate (alert bad_certificate)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "the peer rejected our certificate as expired (alert certificate_expired)"
    ),
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "the peer rejected our certificate as revoked (alert certificate_revoked)"
    ),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "the peer rejected our certificate (alert unsupported_certificate)"
    ),
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": (
        "the peer rejected our certificate (alert certificate_unknown)"
    ),
    "TLSV1_ALERT_ACCESS_DENIED": "the peer denied access (alert access_denied)",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer could not verify our handshake (alert decrypt_error)",
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the handshake",
    "RECORD_LAYER_FAILURE": "the peer sent a malformed TLS record",
    "PACKET_LENGTH_TOO_LONG": "not TLS: the peer sent an impossible record length",
    "TLSV1_ALERT_INTERNAL_ERROR": "the peer failed internally (alert internal_error)",
}

_VERIFY = {
    10: "its certificate has expired",
    9: "its certificate is not yet valid",
    18: "its certificate is self-signed and not trusted",
    19: "its certificate chain ends in a self-signed CA we do not trust",
    20: "its certificate is not signed by our CA (unknown CA)",
    21: "its certificate is not signed by our CA (unknown CA)",
    23: "its certificate is revoked",
    26: "its certificate is not meant for this purpose (extended key usage)",
}


def root_cause(exc: BaseException) -> BaseException:
    """Follow ``__cause__``/``__context__`` down to the ssl error or group of errors."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError | BaseExceptionGroup):
            return current
        nxt = current.__cause__ or current.__context__
        if nxt is None:
            break
        current = nxt
    return current


def is_peer_alert(exc: BaseException) -> bool:
    """Whether ``exc`` is the peer's TLS alert (it said why it ended the connection)."""
    cause = root_cause(exc)
    return isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or "")


def is_closed(cause: BaseException) -> bool:
    """Whether ``cause`` says the peer had closed the connection under our send."""
    return isinstance(cause, OSError) and cause.errno in (errno.EPIPE, errno.ECONNABORTED)


def describe_tls_error(exc: BaseException) -> str:
    """One line saying why a TLS connection failed, in words rather than OpenSSL codes."""
    cause = root_cause(exc)
    if isinstance(cause, BaseExceptionGroup):
        # trio's open_tcp_stream: one error per address tried.
        return "; ".join(dict.fromkeys(describe_tls_error(sub) for sub in cause.exceptions))
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = cause.verify_code
        if code in (62, 64):  # hostname / IP address mismatch
            # Typically --host 127.0.0.1 against a certificate for localhost: the name the
            # certificate carries is what --tls-hostname is for.
            mismatch = (cause.verify_message or "").rstrip(".")
            return (
                f"the peer's certificate does not match the expected name: {mismatch}; if it"
                " names this server otherwise (e.g. localhost for 127.0.0.1), give that name"
                " with --tls-hostname NAME (`creds check` on its directory lists its names)"
            )
        words = _VERIFY.get(code, cause.verify_message or "verification failed")
        return f"the peer's certificate was rejected: {words}"
    if isinstance(cause, ssl.SSLEOFError):
        return "the peer closed the connection during the handshake"
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or ""
        if reason in _REASONS:
            return _REASONS[reason]
        if reason:
            return reason.lower().replace("_", " ")
        return str(cause)
    if isinstance(cause, ConnectionResetError):
        return PEER_RESET_WORDS
    if is_closed(cause):
        return PEER_CLOSED_WORDS
    if isinstance(cause, ConnectionRefusedError):
        return REFUSED
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__
