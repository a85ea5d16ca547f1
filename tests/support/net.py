"""Loopback networking for tests: free ports, TCP and TLS connections, and a TLS server.

The TLS peers are written with the standard library and ``trio.SSLStream``, independent of
the bridge's own TLS code, so what they see is what any TLS peer sees. Everything listens and
connects on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import pytest
import trio

from chardev_bridge.qemu.priority import apply_priority, parse_priority
from chardev_bridge.tls.stream import TLSStream

HOST = "127.0.0.1"

TlsStream = trio.SSLStream[trio.SocketStream]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def abort(sock: socket.socket | trio.socket.SocketType) -> None:
    """Close with a reset (SO_LINGER 0, no FIN, no close_notify), as a crashing peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def tcp_connect(port: int) -> tuple[trio.SocketStream, str]:
    """A plain TCP connection and our ``127.0.0.1:PORT`` as the bridge logs it."""
    tcp = await trio.open_tcp_stream(HOST, port)
    return tcp, "{}:{}".format(*tcp.socket.getsockname()[:2])


# -- TLS contexts ------------------------------------------------------------------------------


def client_context(
    creds: Path, *, with_cert: bool = True, cert_dir: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context trusting ``creds/ca-cert.pem``, with the client certificate of
    ``cert_dir`` (by default ``creds`` itself) unless ``with_cert`` is false."""
    ctx = ssl.create_default_context(cafile=str(creds / "ca-cert.pem"))
    cert_dir = cert_dir or creds
    cert, key = cert_dir / "client-cert.pem", cert_dir / "client-key.pem"
    if with_cert and cert.exists():
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def server_context(creds: Path, *, ask_client_cert: bool = True) -> ssl.SSLContext:
    """A TLS server context with ``creds/server-*.pem``, verifying client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(creds / "server-cert.pem"), str(creds / "server-key.pem"))
    ctx.load_verify_locations(cafile=str(creds / "ca-cert.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED if ask_client_cert else ssl.CERT_NONE
    return ctx


def priority_context(text: str, *, server: bool = False) -> ssl.SSLContext:
    """A bare context with the gnutls priority string ``text`` applied (no credentials)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    apply_priority(ctx, parse_priority(text, keywords={}))
    return ctx


# -- TLS peers ---------------------------------------------------------------------------------


async def tls_connect(
    port: int, ctx: ssl.SSLContext, *, server_hostname: str = HOST
) -> tuple[TlsStream, str]:
    """Connect and handshake; returns the stream and our own ``127.0.0.1:PORT`` (the name the
    bridge logs us by)."""
    tcp, me = await tcp_connect(port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream, me


async def tlsstream_connect(port: int, creds: Path, version: ssl.TLSVersion) -> TLSStream:
    """A handshaken client of the bridge's own TLS stream type (it can half-close, and a test
    can reach its engine), trusting ``creds`` and at most TLS ``version``."""
    ctx = client_context(creds)
    ctx.maximum_version = version
    tcp = await trio.open_tcp_stream(HOST, port)
    stream = TLSStream(tcp, ctx, server_side=False, server_hostname=HOST, split_last_byte=False)
    await stream.do_handshake()
    return stream


class TlsServer:
    """A TLS server a connecting bridge talks to; the test accepts sessions one by one.

    TCP connections are accepted at once (and queued), the TLS handshake only happens when the
    test calls :meth:`accept`, so a test decides when the bridge's next session starts.
    """

    def __init__(self, ctx: ssl.SSLContext, port: int = 0) -> None:
        self.ctx = ctx
        self.port = port
        self.connects: list[float] = []
        self._send, self._receive = trio.open_memory_channel[trio.SocketStream](1000)
        self._listener: trio.SocketListener | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=HOST)
        self._listener = listeners[0]
        self.port = self._listener.socket.getsockname()[1]
        nursery.start_soon(self._accept_loop)

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        async with self._listener:
            while True:
                tcp = await self._listener.accept()
                self.connects.append(trio.current_time())
                await self._send.send(tcp)

    async def next_tcp(self, timeout: float = 10) -> trio.SocketStream:
        """The next raw TCP connection (no handshake)."""
        with trio.fail_after(timeout):
            return await self._receive.receive()

    async def accept(self, timeout: float = 10) -> TlsStream:
        """The next connection, after a successful TLS handshake."""
        tcp = await self.next_tcp(timeout)
        stream = trio.SSLStream(tcp, self.ctx, server_side=True)
        with trio.fail_after(timeout):
            await stream.do_handshake()
        return stream


async def expect_failed_handshake(server: TlsServer) -> None:
    """Accept the bridge's connection on ``server``; its TLS handshake must fail."""
    with pytest.raises(trio.BrokenResourceError):
        await server.accept()


async def unix_client(path: Path, timeout: float = 10) -> trio.SocketStream:
    """Connect to the unix socket ``path`` as soon as something listens there."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await trio.open_unix_socket(str(path))
            except OSError:
                await trio.sleep(0.02)
