"""A trio stream over a connected socket that waits only when the socket makes it wait.

``trio.SocketStream`` passes through trio's scheduler on every call, even when the kernel
took or gave the bytes at once, and it wraps each call in two context managers. On the 1-byte
echo path of an interactive console that was most of the bridge's added latency: a plain
forwarder over ``trio.SocketStream`` added 75 µs per round trip on the bench machine, one that
calls the socket directly and yields only to wait added 22 µs, as much as socat (measured with
a throw-away forwarder pair before this module was written).

So :class:`DirectSocketStream` tries the system call first and parks the task in trio's
I/O wait only on ``EAGAIN``. It still checks for cancellation on every call, and after
:data:`YIELD_EVERY` calls in a row that did not wait it yields once, so that a bulk transfer
that never waits cannot starve the other direction, timers or signal handling.
"""

from __future__ import annotations

import errno
import operator
import socket

import trio

from chardev_bridge.net._streamguard import OneAtATime

# Bytes asked of the kernel per receive when the caller gives no size (trio's default).
DEFAULT_RECEIVE_SIZE = 65536

# Calls that completed without waiting, after which the task yields to the scheduler anyway.
YIELD_EVERY = 8

_CLOSED_ERRNOS = (errno.EBADF, errno.ENOTSOCK)


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """The trio stream error for a failed socket call (as ``trio.SocketStream`` maps them)."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A :class:`trio.abc.HalfCloseableStream` over a connected, non-blocking socket.

    ``socket`` is the trio socket object, for options and addresses, as on
    ``trio.SocketStream``.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.socket = trio.socket.from_stdlib_socket(sock)
        self._receiving = OneAtATime("receiving")
        self._sending = OneAtATime("sending")
        self._eof_sent = False
        self._unyielded = 0
        # The last receive got less than it asked for, so the kernel had no more: the next
        # one waits for readiness at once instead of first failing a recv() (EAGAIN).
        self._drained = False
        #: Calls without a wait after which one yields (1: every call, as trio's streams).
        self.yield_every = YIELD_EVERY

    @classmethod
    def adopt(cls, stream: trio.SocketStream) -> DirectSocketStream:
        """Take over the socket of a freshly opened or accepted ``trio.SocketStream``."""
        trio_sock = stream.socket
        family, kind, proto = trio_sock.family, trio_sock.type, trio_sock.proto
        return cls(socket.socket(family, kind, proto, fileno=trio_sock.detach()))

    async def _yield_now(self) -> None:
        self._unyielded = 0
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes the socket has (at most ``max_bytes``), ``b""`` at EOF."""
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
                if not self._drained:
                    try:
                        data = self._sock.recv(size)
                    except BlockingIOError:
                        pass
                    else:
                        self._drained = 0 < len(data) < size
                        # Counted inline: an extra coroutine per call showed on the echo path.
                        self._unyielded += 1
                        if self._unyielded >= self.yield_every:
                            await self._yield_now()
                        return data
                elif self._sock.fileno() == -1:
                    raise trio.ClosedResourceError("this socket was already closed")
                while True:
                    await trio.lowlevel.wait_readable(self._sock)
                    try:
                        data = self._sock.recv(size)
                    except BlockingIOError:
                        continue
                    self._drained = 0 < len(data) < size
                    self._unyielded = 0
                    return data
            except OSError as exc:
                raise _stream_error(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; returns once the kernel has taken the last byte."""
        with self._sending:
            if self._eof_sent:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._sock.fileno() == -1:
                raise trio.ClosedResourceError("this socket was already closed")
            waited = False
            try:
                with memoryview(data) as view:
                    sent = 0
                    while sent < len(view):
                        try:
                            sent += self._sock.send(view[sent:])
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(self._sock)
                            waited = True
            except OSError as exc:
                raise _stream_error(exc) from exc
            if waited:
                self._unyielded = 0
            else:
                self._unyielded += 1
                if self._unyielded >= self.yield_every:
                    await self._yield_now()

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the kernel takes at once, without waiting; how many bytes it took.

        For a few bytes owed to the peer from the receiving side (a TLS alert or KeyUpdate
        reply); the caller keeps the rest for its next :meth:`send_all`. Failures are left
        to that next send to report.
        """
        if self._eof_sent or self._sock.fileno() == -1:
            return 0
        try:
            return self._sock.send(data)
        except OSError:
            return 0

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more bytes."""
        with self._sending:
            if self._sock.fileno() == -1:
                raise trio.ClosedResourceError("this socket was already closed")
            await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        """Shut down the sending side (TCP FIN); receiving goes on."""
        with self._sending:
            await trio.lowlevel.checkpoint()
            if self._eof_sent:
                return
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise _stream_error(exc) from exc
            self._eof_sent = True

    async def aclose(self) -> None:
        """Close the socket; a task waiting on it gets ``ClosedResourceError``."""
        self.socket.close()  # trio's close wakes waiters before the fd goes away
        await trio.lowlevel.checkpoint()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option (as ``trio.SocketStream.setsockopt``)."""
        self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        """Read an integer socket option."""
        return self._sock.getsockopt(level, option)


#: What the remote side accepts: ours, or trio's (tests hand it trio's).
AnySocketStream = DirectSocketStream | trio.SocketStream
