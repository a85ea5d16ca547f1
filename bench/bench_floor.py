"""The floor of chardev-bridge's stack: trio and ``ssl.SSLObject`` over memory BIOs, nothing else.

A reference contestant for ``make bench``, not a product: per accepted local connection it opens
a TLS client connection to the far side and relays both ways with the fewest Python steps the
stack allows (the socket is tried first and trio's I/O wait used only on EAGAIN, reads as large
as the bridge's, no half-close, no accounting, no fairness, no error reporting). Whatever this
relay cannot reach, chardev-bridge cannot reach either without leaving that stack; the bench
shows both, so the gap to socat and stunnel can be split into "the stack" and "the bridge".

    python bench_floor.py LISTEN_PORT FAR_PORT CLIENT_CREDS_DIR
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Awaitable

import trio

READ = 256 * 1024  # as chardev-bridge's data path


async def recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(READ)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def to_remote(local: socket.socket, remote: socket.socket, tls: ssl.SSLObject,
                    outgoing: ssl.MemoryBIO) -> None:  # fmt: skip
    while data := await recv(local):
        tls.write(data)
        await send_all(remote, outgoing.read())


async def to_local(remote: socket.socket, local: socket.socket, tls: ssl.SSLObject,
                   incoming: ssl.MemoryBIO) -> None:  # fmt: skip
    while data := await recv(remote):
        incoming.write(data)
        while incoming.pending or tls.pending():  # every record that arrived, as the bridge
            try:
                plain = tls.read(READ)
            except ssl.SSLWantReadError:
                break
            await send_all(local, plain)


async def relay(stream: trio.SocketStream, far_port: int, context: ssl.SSLContext) -> None:
    far = await trio.open_tcp_stream("127.0.0.1", far_port)
    local, remote = stream.socket._sock, far.socket._sock  # type: ignore[attr-defined]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await send_all(remote, outgoing.read())
            incoming.write(await recv(remote))
    await send_all(remote, outgoing.read())
    async with far, trio.open_nursery() as nursery:

        async def then_stop(direction: Awaitable[None]) -> None:
            await direction
            nursery.cancel_scope.cancel()  # either side ending ends the relay: no half-close

        nursery.start_soon(then_stop, to_remote(local, remote, tls, outgoing))
        nursery.start_soon(then_stop, to_local(remote, local, tls, incoming))


async def main(listen_port: int, far_port: int, creds: str) -> None:
    context = ssl.create_default_context(cafile=f"{creds}/ca-cert.pem")
    context.load_cert_chain(f"{creds}/client-cert.pem", f"{creds}/client-key.pem")

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await relay(stream, far_port, context)
        except (OSError, ssl.SSLError, trio.BrokenResourceError):
            pass

    await trio.serve_tcp(handle, listen_port, host="127.0.0.1")


if __name__ == "__main__":
    # As chardev_bridge.bridge.datapath.keep_read_buffers_off_mmap: without it every 256 KiB read
    # buffer is an mmap of its own (measured: +55 µs per echo round trip).
    bytes(1 << 20)
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
