"""A remote that has connected waits for its local end (QEMU's unix socket, a local client).

A listening local end may wait long for its client, and a socket local end may not be there
yet (QEMU restarting): the remote is kept waiting, retried with backoff, for a while. A
remote that leaves meanwhile must not hold the line: the kernel's TCP state says when it has
gone, and what it left (a one-shot command's bytes) waits a while for the local end.
"""

from __future__ import annotations

import logging
import socket

import trio

from chardev_bridge.bridge.datapath import STREAM_ERRORS
from chardev_bridge.bridge.line import LocalLine
from chardev_bridge.bridge.remote import RemoteSession
from chardev_bridge.common.backoff import REFUSED_INITIAL, Backoff, RepeatFilter
from chardev_bridge.net._fdqueue import unread_bytes
from chardev_bridge.net.socketstream import DirectSocketStream
from chardev_bridge.tls.stream import TLSStream

log = logging.getLogger("chardev_bridge")

# How long a listening bridge keeps a remote client waiting while its socket local end
# is not there, retrying with backoff.
LOCAL_WAIT_SECONDS = 30.0

# The longest delay between tries of a socket local end that is not there.
_LOCAL_RETRY_MAX = 1.0

# How often a remote that sent bytes while waiting for its local end is checked for having
# left; the states are Linux's (include/net/tcp_states.h), read from TCP_INFO.
_REMOTE_WATCH_SECONDS = 1.0
_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8


async def open_local_for(
    line: LocalLine, remote: RemoteSession, tcp: DirectSocketStream
) -> trio.abc.Stream | None:
    """The local stream for a remote that has connected, or None if the remote left first.
    Raises the local end's ``OSError`` once it has stayed away too long."""
    local_stream = None
    failure: OSError | None = None
    gave_up: str | None = None
    async with trio.open_nursery() as nursery:

        async def watch_remote() -> None:
            nonlocal gave_up
            while True:
                # A FIN or a reset makes the socket readable: no polling while all is quiet.
                await trio.lowlevel.wait_readable(tcp.socket)
                if _peer_gone(tcp.socket):
                    break
                # Readable with the peer still there: bytes wait for the local end. They
                # stay readable, so look again later instead.
                await trio.sleep(_REMOTE_WATCH_SECONDS)
            left = await _bytes_left(remote.stream, tcp.socket)
            local = line.describe()
            if left == 0:
                gave_up = f"it left before local end {local} was ready"
            else:
                # It left bytes (a one-shot command): they wait for the local client,
                # for as long as a waiting remote would, then free the line.
                await trio.sleep(LOCAL_WAIT_SECONDS)
                what = "bytes" if left is None else f"{left} bytes"
                gave_up = (
                    f"it left, and local end {local} had no client for"
                    f" {LOCAL_WAIT_SECONDS:g}s; the {what} it sent are dropped"
                )
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_remote)
        try:
            local_stream = await _open_with_retry(line)
        except OSError as exc:
            failure = exc  # raised below, not wrapped in the nursery's ExceptionGroup
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if local_stream is None and gave_up is not None:
        # Only now: a local client that came in the same instant still gets the bytes.
        log.warning("closing %s: %s", remote.peer, gave_up)
    return local_stream


async def _open_with_retry(line: LocalLine) -> trio.abc.Stream:
    """The local stream; a socket end that is not there yet is retried for a while."""
    # Often QEMU restarting: a unix socket that is not there costs nothing to try again,
    # and what the guest prints before we connect is lost.
    backoff = Backoff(REFUSED_INITIAL, _LOCAL_RETRY_MAX)
    repeats = RepeatFilter()
    deadline = trio.current_time() + LOCAL_WAIT_SECONDS
    while True:
        try:
            return await line.stream()
        except OSError as exc:
            if trio.current_time() >= deadline:
                raise
            delay = backoff.next_delay()
            why = str(exc.strerror or exc)
            log_it, count = repeats.should_log(why)
            log.log(
                logging.WARNING if log_it else logging.DEBUG,
                "local end %s not there (%s%s); retrying in %.1fs",
                line.describe(),
                why,
                f", {count} tries" if count > 1 else "",
                delay,
            )
            await trio.sleep(delay)


def _peer_gone(sock: trio.socket.SocketType) -> bool:
    """Whether the peer of a connection has sent its FIN or reset it (TCP_INFO state)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


async def _bytes_left(stream: trio.abc.Stream, sock: trio.socket.SocketType) -> int | None:
    """How many bytes a peer that is gone left for the local end (0: none; None: some, not
    counted). Those (a one-shot command) keep its session for a while, so that they are
    delivered once the local end is there."""
    if isinstance(stream, TLSStream):
        left = bytearray()
        try:
            with trio.move_on_after(_REMOTE_WATCH_SECONDS):
                while data := await stream.receive_some():
                    left += data
                return len(left)  # its end (EOF stays EOF for the session's own receive)
        except STREAM_ERRORS:
            return len(left)
        finally:
            stream.unreceive(bytes(left))
        return len(left) or None  # still decrypting after a second: assume something is there
    try:
        with trio.move_on_after(_REMOTE_WATCH_SECONDS):
            if await sock.recv(1, socket.MSG_PEEK) == b"":
                return 0
            return unread_bytes(sock.fileno())
    except OSError:
        return 0
    return None
