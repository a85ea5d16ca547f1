"""The remote end: a TCP connection, made or accepted, with TLS on top when configured."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import trio
from cryptography import x509

from chardev_bridge.hostport import format_hostport
from chardev_bridge.socketstream import AnySocketStream
from chardev_bridge.tlspolicy import PeerCert, PeerRejected, TLSPolicy, check_peer
from chardev_bridge.tlsstream import TLSHandshakeError, TLSSessionInfo, TLSStream


@dataclass(frozen=True)
class TLSSetup:
    """How TLS is run on remote connections (role independent of who listens on TCP)."""

    context: ssl.SSLContext
    server_side: bool
    # The name the server certificate must carry (TLS client only; None for a TLS server).
    server_hostname: str | None
    # Certificate policy applied after the handshake (None: PSK, no certificates).
    policy: TLSPolicy | None = None
    crl: x509.CertificateRevocationList | None = None
    # Called once per connection on the new SSLObject before the handshake (PSK set-up).
    prepare: Callable[[ssl.SSLObject], None] | None = None
    # The QEMU 7.2 input-stall workaround (see TLSEngine.write_plaintext).
    split_last_byte: bool = True


@dataclass
class RemoteSession:
    """A connected remote peer, ready to carry bytes."""

    stream: trio.abc.Stream
    peer: str
    tls: TLSSessionInfo | None = None
    peer_cert: PeerCert | None = None
    # How long the TLS handshake took: the yardstick for how soon a rejection would come.
    handshake_seconds: float = 0.0

    def describe(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384, peer CN=...`` or ``plain TCP``."""
        if self.tls is None:
            return "plain TCP"
        if self.peer_cert is None:
            return f"{self.tls.version} {self.tls.cipher}, no peer certificate"
        return f"{self.tls.version} {self.tls.cipher}, peer certificate {self.peer_cert.dn!r}"

    @property
    def ragged_eof(self) -> bool:
        """Whether the peer closed TCP without a TLS close_notify."""
        return isinstance(self.stream, TLSStream) and self.stream.ragged_eof


def peer_name(stream: AnySocketStream) -> str:
    """``host:port`` of the far end of a TCP stream (``[v6]:port`` for IPv6)."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return format_hostport(addr[0], addr[1])


# TCP keepalive: first probe after 60 s of silence, then every 10 s, give up after 6 unanswered:
# a peer that vanished (power cut, cable pulled) is noticed within about two minutes instead
# of the kernel's default two hours.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 6


def tune_socket(stream: AnySocketStream) -> None:
    """Keepalive so that a vanished peer is noticed; no Nagle delay for interactive bytes."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def start_session(
    tcp: AnySocketStream, tls: TLSSetup | None, *, handshake_timeout: float
) -> RemoteSession:
    """Run the TLS handshake (if any) on a fresh TCP connection.

    Raises :class:`TLSHandshakeError` (cause attached), ``trio.TooSlowError``, or
    :class:`PeerRejected` when the peer passed the handshake but not our policy (revoked, not
    on the allow-list); the connection is closed in each case.
    """
    tune_socket(tcp)
    peer = peer_name(tcp)
    if tls is None:
        return RemoteSession(tcp, peer)
    stream = TLSStream(
        tcp,
        tls.context,
        server_side=tls.server_side,
        server_hostname=tls.server_hostname,
        prepare=tls.prepare,
        split_last_byte=tls.split_last_byte,
    )
    began = trio.current_time()
    try:
        with trio.fail_after(handshake_timeout):
            info = await stream.do_handshake()
    except (TLSHandshakeError, trio.TooSlowError):
        await trio.aclose_forcefully(tcp)
        raise
    took = trio.current_time() - began
    if tls.policy is None:
        return RemoteSession(stream, peer, info, handshake_seconds=took)
    try:
        cert = check_peer(
            tls.policy,
            tls.crl,
            cert_der=info.peer_cert_der,
            version=info.version,
            cipher=info.cipher,
        )
    except PeerRejected:
        # Like QEMU: the handshake is over, so there is no alert to send; just close.
        await trio.aclose_forcefully(stream)
        raise
    return RemoteSession(stream, peer, info, cert, handshake_seconds=took)
