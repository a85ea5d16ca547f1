"""Bytes through trio streams: read until, read exactly, read to the end, both ways at once,
compared by sha256; random flows hashed at both ends; a pty opened as an application does."""

from __future__ import annotations

import hashlib
import os
import select
import ssl
from dataclasses import dataclass, field

import trio

from chardev_bridge.local.termios_raw import make_raw

AnyStream = trio.abc.Stream | tuple[trio.abc.SendStream, trio.abc.ReceiveStream]


def sha256(data: bytes | bytearray) -> str:
    """Hex digest, so that a mismatch prints two short strings instead of megabytes."""
    return hashlib.sha256(data).hexdigest()


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, timeout: float = 10) -> bytes:
    """Read until ``marker`` appears; everything read so far is returned."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while marker not in buf:
            chunk = await stream.receive_some()
            if not chunk:
                raise EOFError(f"EOF before {marker!r}; got {bytes(buf)!r}")
            buf += chunk
    return bytes(buf)


async def read_exactly(stream: trio.abc.ReceiveStream, size: int, timeout: float = 30) -> bytes:
    """Read ``size`` bytes (fails on EOF or timeout)."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while len(buf) < size:
            chunk = await stream.receive_some(size - len(buf))
            if not chunk:
                raise EOFError(f"EOF after {len(buf)} of {size} bytes")
            buf += chunk
    return bytes(buf)


async def read_to_eof(stream: trio.abc.ReceiveStream, timeout: float = 10) -> tuple[bytes, str]:
    """Everything until the end, and how it ended: ``"clean"`` (TLS close_notify or TCP FIN on a
    plain stream), ``"ragged"`` (a TLS stream ended without close_notify) or ``"reset"``."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(1 << 20)
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLError) and "EOF" in type(cause).__name__ + str(cause):
                    return bytes(buf), "ragged"
                return bytes(buf), "reset"
            if not chunk:
                return bytes(buf), "clean"
            buf += chunk


async def assert_silent(stream: trio.abc.ReceiveStream, seconds: float = 0.5) -> None:
    """Nothing arrives on ``stream`` (not even its end) for ``seconds``."""
    with trio.move_on_after(seconds):
        data = await stream.receive_some()
        raise AssertionError(f"unexpected bytes within {seconds}s: {data[:80]!r}")


async def exchange(
    a: AnyStream, b: AnyStream, a_to_b: bytes, b_to_a: bytes, *, timeout: float = 15
) -> tuple[bytes, bytes]:
    """Send ``a_to_b`` from a to b and ``b_to_a`` from b to a, both at once.

    ``a`` and ``b`` are streams or (send, receive) pairs, e.g. a process's stdin and stdout.
    Returns what b received and what a received.
    """
    a_send, a_recv = (a, a) if isinstance(a, trio.abc.Stream) else a
    b_send, b_recv = (b, b) if isinstance(b, trio.abc.Stream) else b
    got_b = bytearray()
    got_a = bytearray()

    async def receive(stream: trio.abc.ReceiveStream, into: bytearray, size: int) -> None:
        while len(into) < size:
            chunk = await stream.receive_some(size - len(into))
            if not chunk:
                raise EOFError(f"EOF after {len(into)} of {size} bytes")
            into += chunk

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a_send.send_all, a_to_b)
            nursery.start_soon(b_send.send_all, b_to_a)
            nursery.start_soon(receive, b_recv, got_b, len(a_to_b))
            nursery.start_soon(receive, a_recv, got_a, len(b_to_a))
    return bytes(got_b), bytes(got_a)


@dataclass
class Flow:
    """Random bytes from ``sender`` to ``receiver``, hashed at both ends."""

    sender: trio.abc.SendStream
    receiver: trio.abc.ReceiveStream
    chunk: int = 16 * 1024
    pause: float = 0.005
    sent: int = 0
    received: int = 0
    sent_hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    received_hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _stop: trio.Event = field(default_factory=trio.Event)
    _sender_done: trio.Event = field(default_factory=trio.Event)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.send_loop)
        nursery.start_soon(self.receive_loop)

    async def send_loop(self) -> None:
        while not self._stop.is_set():
            data = os.urandom(self.chunk)
            await self.sender.send_all(data)
            self.sent_hash.update(data)
            self.sent += len(data)
            await trio.sleep(self.pause)
        self._sender_done.set()

    async def receive_loop(self) -> None:
        while True:
            data = await self.receiver.receive_some(1 << 20)
            if not data:
                return
            self.received_hash.update(data)
            self.received += len(data)

    async def finish(self, timeout: float = 15) -> None:
        """Stop sending and wait until the receiver has everything that was sent."""
        self._stop.set()
        with trio.fail_after(timeout):
            await self._sender_done.wait()
            while self.received < self.sent:
                await trio.sleep(0.01)

    @property
    def intact(self) -> bool:
        """Same length and same sha256 on both sides."""
        return (
            self.received == self.sent
            and self.sent_hash.hexdigest() == self.received_hash.hexdigest()
        )


# -- ptys as applications open them ------------------------------------------------------------


def open_pty(path: str) -> trio.lowlevel.FdStream:
    """Open a pty slave as an application would (raw mode, non-blocking).

    The stream closes the fd on ``aclose``; ``async with open_pty(path) as app:`` does that at
    the end of the block.
    """
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    make_raw(fd)
    return trio.lowlevel.FdStream(fd)


def poll_flags(stream: trio.lowlevel.FdStream) -> int:
    """The ``poll()`` revents of a stream's fd right now (POLLHUP/POLLERR show a hangup)."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    events = poller.poll(0)
    return events[0][1] if events else 0


# How every stderr line starts after the timestamp (cli.py's logging format).
async def exchange_through_pty(
    remote: trio.abc.Stream, pty_path: str, size: int = 64 * 1024
) -> tuple[bool, bool]:
    """Random bytes pty → remote and remote → pty at once; whether each arrived intact."""
    up, down = os.urandom(size), os.urandom(size)
    async with open_pty(pty_path) as app:
        at_remote, at_pty = await exchange(app, remote, up, down)
    return sha256(at_remote) == sha256(up), sha256(at_pty) == sha256(down)
