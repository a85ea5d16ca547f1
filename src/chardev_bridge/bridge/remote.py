"""The remote end: a TCP connection, made or accepted, with TLS on top when configured."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from chardev_bridge.net.socketstream import AnySocketStream
from chardev_bridge.net.tcp import bytes_acknowledged, peer_name, tune_socket
from chardev_bridge.tls.setup import PeerCert, PeerRejected, TLSSetup
from chardev_bridge.tls.stream import TLSHandshakeError, TLSSessionInfo, TLSStream


@dataclass
class RemoteSession:
    """A connected remote peer, ready to carry bytes."""

    stream: trio.abc.Stream
    peer: str
    tls: TLSSessionInfo | None = None
    peer_cert: PeerCert | None = None
    # How long the TLS handshake took: the yardstick for how soon a rejection would come.
    handshake_seconds: float = 0.0
    # What the server's silent close right after the handshake would mean (TLSSetup's).
    silent_rejection: str | None = None
    # The TCP connection under ``stream``, for what the kernel knows of it.
    tcp: AnySocketStream | None = None

    def describe(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384, peer CN=...`` or ``plain TCP``."""
        if self.tls is None:
            return "plain TCP"
        if self.peer_cert is None:
            return f"{self.tls.version} {self.tls.cipher}, no peer certificate"
        return f"{self.tls.version} {self.tls.cipher}, peer certificate {self.peer_cert.dn!r}"

    @property
    def rejectable(self) -> bool:
        """Whether the server may still reject us, silently, after the handshake: TLS 1.3
        lets a client finish before the server has judged its certificate."""
        return (
            self.silent_rejection is not None
            and self.tls is not None
            and self.tls.version == "TLSv1.3"
        )

    def bytes_acknowledged(self) -> int | None:
        """Bytes the peer's TCP has acknowledged on this connection, handshake included."""
        return None if self.tcp is None else bytes_acknowledged(self.tcp.socket)

    @property
    def ragged_eof(self) -> bool:
        """Whether the peer closed TCP without a TLS close_notify."""
        return isinstance(self.stream, TLSStream) and self.stream.ragged_eof


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
        return RemoteSession(tcp, peer, tcp=tcp)
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
    if tls.check_peer is None:
        return RemoteSession(stream, peer, info, handshake_seconds=took, tcp=tcp)
    try:
        cert = tls.check_peer(info)
    except PeerRejected:
        # Like QEMU: the handshake is over, so there is no alert to send; just close.
        await trio.aclose_forcefully(stream)
        raise
    return RemoteSession(
        stream,
        peer,
        info,
        cert,
        handshake_seconds=took,
        silent_rejection=tls.silent_rejection,
        tcp=tcp,
    )
