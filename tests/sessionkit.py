"""Helpers for the session, hostile-peer, fault and traffic-log tests (issue 4) and the soak.

* TLS peers written with the standard library and ``trio.SSLStream`` (independent of the
  bridge's own TLS code): :func:`tls_connect`, :class:`TlsServer`.
* :class:`Flow`: random bytes pushed from one stream to another, hashed (sha256) on both sides.
* :class:`CliBridge`: ``python -m chardev_bridge`` as a subprocess, its stderr collected so a
  test can wait for a log line, its RSS readable from ``/proc``.

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from chardev_bridge.local.termios_raw import make_raw

HOST = "127.0.0.1"
SRC = Path(__file__).parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}

TlsStream = trio.SSLStream[trio.SocketStream]


# -- TLS peers ---------------------------------------------------------------------------------


def client_context(creds: Path, *, with_cert: bool = True) -> ssl.SSLContext:
    """A TLS client context trusting ``creds/ca-cert.pem``, with its client certificate."""
    ctx = ssl.create_default_context(cafile=str(creds / "ca-cert.pem"))
    cert, key = creds / "client-cert.pem", creds / "client-key.pem"
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


# -- pty applications -----------------------------------------------------------------------


def open_pty_app(path: str) -> trio.lowlevel.FdStream:
    """Open a pty slave as an application would (raw mode, non-blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    make_raw(fd)
    return trio.lowlevel.FdStream(fd)


def poll_flags(stream: trio.lowlevel.FdStream) -> int:
    """The ``poll()`` revents of a stream's fd right now (POLLHUP/POLLERR show a hangup)."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    events = poller.poll(0)
    return events[0][1] if events else 0


# -- byte flows -----------------------------------------------------------------------------


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


# -- the command line as a subprocess -------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``, the peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/{pid}/status")


class CliBridge:
    """``python -m chardev_bridge ARGS`` with stdout and stderr collected by threads."""

    def __init__(self, args: Sequence[str], *, name: str = "bridge") -> None:
        self.args = list(args)
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chardev_bridge", *self.args],
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout)),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr)),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _collect(self, pipe: object, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:  # type: ignore[attr-defined]
            with self._lock:
                into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything logged on stderr so far."""
        with self._lock:
            return "\n".join(self.stderr)

    def count(self, pattern: str) -> int:
        """How many stderr lines match the regular expression ``pattern``."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self.stderr if regex.search(line))

    def _find(self, lines: list[str], regex: re.Pattern[str], skip: int) -> re.Match[str] | None:
        with self._lock:
            seen = 0
            for line in lines:
                found = regex.search(line)
                if found:
                    seen += 1
                    if seen > skip:
                        return found
        return None

    async def wait_for(
        self, pattern: str, *, timeout: float = 10, skip: int = 0, stdout: bool = False
    ) -> re.Match[str]:
        """The (``skip``+1)-th log line matching ``pattern``; fails after ``timeout``."""
        regex = re.compile(pattern)
        lines = self.stdout if stdout else self.stderr
        deadline = trio.current_time() + timeout
        while True:
            found = self._find(lines, regex, skip)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                # Let the reader threads catch up with the last words.
                await trio.sleep(0.1)
                found = self._find(lines, regex, skip)
                if found is not None:
                    return found
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()}"
                )
            if trio.current_time() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.log()}")
            await trio.sleep(0.02)

    async def pty_path(self, timeout: float = 10) -> str:
        """The pty path the bridge printed on stdout."""
        found = await self.wait_for(r"^pty: (\S+)$", timeout=timeout, stdout=True)
        return found.group(1)

    async def port(self, timeout: float = 10) -> int:
        """The port a listening bridge logged."""
        found = await self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout=timeout)
        return int(found.group(1))

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def close(self) -> None:
        """Make sure the process is gone (for ``finally``)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@asynccontextmanager
async def cli_bridge(args: Sequence[str], *, name: str = "bridge") -> AsyncIterator[CliBridge]:
    """A :class:`CliBridge` that is killed on the way out whatever happens."""
    bridge = CliBridge(args, name=name)
    try:
        yield bridge
    finally:
        bridge.close()


# -- logs of in-process bridges -------------------------------------------------------------


def log_lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    """Messages logged so far that match the regular expression ``pattern``."""
    regex = re.compile(pattern)
    return [m for m in (r.getMessage() for r in caplog.records) if regex.search(m)]


async def wait_log(
    caplog: pytest.LogCaptureFixture, pattern: str, *, count: int = 1, timeout: float = 10
) -> list[str]:
    """Wait until ``count`` messages match ``pattern``; returns them."""
    try:
        with trio.fail_after(timeout):
            while len(hits := log_lines(caplog, pattern)) < count:
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(
            f"no {count} log lines matching {pattern!r} in {timeout}s:\n{caplog.text}"
        ) from None
    return hits


async def tcp_connect(port: int) -> tuple[trio.SocketStream, str]:
    """A plain TCP connection and our ``127.0.0.1:PORT`` as the bridge logs it."""
    tcp = await trio.open_tcp_stream(HOST, port)
    return tcp, "{}:{}".format(*tcp.socket.getsockname()[:2])
