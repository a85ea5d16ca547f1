"""Helpers for interop tests: peer subprocesses, their ports, byte exchanges and log lines.

Every subprocess started here is killed when its ``async with`` block ends, however it ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from cryptography import x509

from chardev_bridge.qemu.authz import qemu_dn
from tests.peers import Qemu

LOGGER = "chardev_bridge"


@dataclass
class Peer:
    """A running peer process: its pipes, and the output it has written so far.

    ``output`` collects stdout too when the peer was started with ``collect_stdout``
    (for peers that print diagnostics there); else read :attr:`stdout` yourself.
    """

    process: trio.Process
    stderr: bytearray = field(default_factory=bytearray)
    output: bytearray = field(default_factory=bytearray)

    @property
    def stdin(self) -> trio.abc.SendStream:
        """The peer's standard input."""
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        """The peer's standard output."""
        assert self.process.stdout is not None
        return self.process.stdout

    def stderr_text(self) -> str:
        """What the peer wrote on stderr so far, for assertions and failure messages."""
        return self.stderr.decode(errors="replace")

    def output_text(self) -> str:
        """What the peer wrote on stdout so far (with ``collect_stdout``)."""
        return self.output.decode(errors="replace")


async def wait_for_stderr(peer: Peer, text: str, timeout: float = 10) -> None:
    """Wait until ``peer`` has written ``text`` on stderr."""
    try:
        with trio.fail_after(timeout):
            while text not in peer.stderr_text():
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise AssertionError(f"no {text!r} on stderr; got: {peer.stderr_text()!r}") from None


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


@asynccontextmanager
async def running_peer(
    command: Sequence[str], *, collect_stdout: bool = False
) -> AsyncIterator[Peer]:
    """Run ``command`` with piped stdin/stdout/stderr; killed at the end of the block."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        peer = Peer(process)
        assert process.stderr is not None
        nursery.start_soon(_collect, process.stderr, peer.stderr)
        if collect_stdout:
            assert process.stdout is not None
            nursery.start_soon(_collect, process.stdout, peer.output)
        try:
            yield peer
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                with trio.move_on_after(5):
                    await process.wait()
                nursery.cancel_scope.cancel()
                for pipe in (process.stdin, process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()


def listening_ports(pid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket process ``pid`` listens on (from /proc).

    Addresses are as the kernel prints them (hex); ``0100007F`` is 127.0.0.1, ``00000000``
    any IPv4 address, and IPv6 addresses have 32 hex digits.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                address, port = local.split(":")
                found.append((address, int(port, 16)))
    return found


async def wait_ipv4_port(peer: Peer, timeout: float = 10) -> int:
    """The IPv4 TCP port ``peer`` listens on (127.0.0.1 or any address), once it listens."""
    with trio.fail_after(timeout):
        while True:
            if peer.process.poll() is not None:
                raise RuntimeError(
                    f"{peer.process.args!r} exited with {peer.process.returncode}:"
                    f" {peer.stderr_text()}"
                )
            for address, port in listening_ports(peer.process.pid):
                if len(address) == 8:
                    return port
            await trio.sleep(0.02)


async def exchange(
    a: trio.abc.Stream | tuple[trio.abc.SendStream, trio.abc.ReceiveStream],
    b: trio.abc.Stream | tuple[trio.abc.SendStream, trio.abc.ReceiveStream],
    a_to_b: bytes,
    b_to_a: bytes,
    *,
    timeout: float = 15,
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


def subject_dn(cert_pem: Path) -> str:
    """The DN of a certificate file as the bridge logs it (QEMU's tls-authz format)."""
    return qemu_dn(x509.load_pem_x509_certificate(cert_pem.read_bytes()).subject)


def sha256(data: bytes) -> str:
    """Hex digest, so that a mismatch prints two short strings instead of megabytes."""
    return hashlib.sha256(data).hexdigest()


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every message the bridge logged so far."""
    return [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER)]


async def wait_for_log(
    caplog: pytest.LogCaptureFixture, pattern: str, timeout: float = 5
) -> re.Match[str]:
    """Wait until the bridge logs a line matching regex ``pattern``; returns the match."""
    regex = re.compile(pattern)
    try:
        with trio.fail_after(timeout):
            while True:
                for line in log_lines(caplog):
                    match = regex.search(line)
                    if match:
                        return match
                await trio.sleep(0.01)
    except trio.TooSlowError:
        lines = "\n  ".join(log_lines(caplog))
        raise AssertionError(f"no log line matches {pattern!r}; logged:\n  {lines}") from None


def capture_bridge_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the bridge's INFO lines and above."""
    caplog.set_level(logging.INFO, logger=LOGGER)


@asynccontextmanager
async def qemu_in_thread(args: Sequence[str]) -> AsyncIterator[Qemu]:
    """A :class:`Qemu` whose blocking start and stop run in a thread, so that an in-process
    bridge keeps running meanwhile (QEMU may be connecting to it)."""
    qemu = Qemu(args)
    try:
        await trio.to_thread.run_sync(qemu.__enter__)
        yield qemu
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(qemu.close)
