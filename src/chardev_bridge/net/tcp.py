"""A TCP connection's far end in words, and the socket options every remote connection gets."""

from __future__ import annotations

import socket
import struct

import trio

from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.net.socketstream import AnySocketStream


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


# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a __u64 at this offset since Linux 4.1.
_TCPI_BYTES_ACKED = 120


def bytes_acknowledged(sock: socket.socket | trio.socket.SocketType) -> int | None:
    """Bytes the peer's TCP has acknowledged on this connection in all, or None where the
    kernel does not say (closed socket, an older kernel)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
    return acked
