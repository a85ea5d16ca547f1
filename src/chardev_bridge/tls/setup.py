"""What a remote connection's TLS is run with, whoever built it (x509 or PSK credentials)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import ssl

    from chardev_bridge.tls.stream import TLSSessionInfo

#: A TLS role, independent of who listens on TCP (QEMU's ``endpoint=``).
Endpoint = Literal["server", "client"]


@dataclass(frozen=True)
class PeerCert:
    """The facts about a peer certificate that logs and allow-lists use."""

    dn: str
    serial: int


class PeerRejected(Exception):
    """The peer completed a handshake but our policy refuses it."""


@dataclass(frozen=True)
class TLSSetup:
    """How TLS is run on remote connections (role independent of who listens on TCP)."""

    context: ssl.SSLContext
    server_side: bool
    # The name the server certificate must carry (TLS client only; None for a TLS server).
    server_hostname: str | None
    # Judges the peer after the handshake (revocation, allow-list); raises PeerRejected.
    # None: no certificates (PSK).
    check_peer: Callable[[TLSSessionInfo], PeerCert | None] | None = None
    # What a TLS 1.3 server's silent close right after our handshake means (it judged our
    # certificate after the handshake); None where no server can reject us that way.
    silent_rejection: str | None = None
    # Called once per connection on the new SSLObject before the handshake (PSK set-up).
    prepare: Callable[[ssl.SSLObject], None] | None = None
    # The QEMU 7.2 input-stall workaround (see TLSEngine.write_plaintext).
    split_last_byte: bool = True
    # When our own certificate expires (unix time; None: no certificate).
    cert_not_after: float | None = None


#: Gives the TLS setup for the next handshake (None: plain TCP); a reload swaps what it gives.
TLSProvider = Callable[[], TLSSetup | None]
