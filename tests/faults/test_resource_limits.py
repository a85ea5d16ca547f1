"""Faults with real processes (issue 4): the far bridge or QEMU is SIGKILLed mid-transfer and
restarted on the same port; the reconnecting bridge resumes on the same pty, and every byte
written after the reconnection arrives (sha256). A slow-reader test offers 1 GiB each way and
watches the bridge process's RSS stay bounded."""

from __future__ import annotations

import hashlib
import os
import select
import time
from pathlib import Path

import pytest
import trio

from chardev_bridge.qemu import pki
from tests.support.net import HOST, client_context, free_port, tls_connect
from tests.support.procs import CliBridge, cli_bridge, rss_kib
from tests.support.streams import open_pty, poll_flags, read_until, sha256

MiB = 1 << 20


@pytest.fixture
def creds(tmp_path: Path) -> pki.PkiLayout:
    """QEMU-layout credentials (with dh-params.pem, so QEMU starts fast)."""
    return pki.init_pki(tmp_path / "pki")


class CountedWriter:
    """Writes to a non-blocking fd, counting exactly the bytes the kernel took (a cancelled
    ``FdStream.send_all`` does not say how much of its buffer went out)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            self.written += n
            view = view[n:]
        await trio.lowlevel.checkpoint()


def server_args(port: int, creds: pki.PkiLayout) -> list[str]:
    return ["--server", "--host", HOST, "--port", str(port), "--tls-creds", str(creds.server_dir)]


async def test_far_bridge_sigkilled_mid_transfer_and_restarted_loses_nothing_after_reconnect(
    creds: pki.PkiLayout, tmp_path: Path
) -> None:
    port = free_port()
    link = tmp_path / "console"
    client_args = ["--host", HOST, "--port", str(port), "--tls-creds", str(creds.client_dir)]
    client_args += ["--reconnect", "0.2", "--reconnect-max", "1", "--link", str(link)]
    before = os.urandom(32 * MiB)  # being written when the far bridge dies
    during = os.urandom(1 * MiB)  # written while it is down: waits in the pty (block mode)
    after = os.urandom(4 * MiB)  # written once the session is back
    marker = os.urandom(32)
    server: CliBridge | None = None
    with trio.fail_after(60):
        try:
            server = CliBridge(server_args(port, creds), name="server")
            server_pty = await server.pty_path()
            async with cli_bridge(client_args, name="client") as client:
                client_pty = await client.pty_path()
                await client.wait_for(rf"connected to 127\.0\.0\.1:{port}: TLSv1\.3")
                near = open_pty(client_pty)
                far = open_pty(server_pty)
                writer = CountedWriter(near.fileno())
                arrived = bytearray()
                async with near, trio.open_nursery() as outer:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer.write, before)
                        while len(arrived) < 2 * MiB:
                            arrived += await far.receive_some()
                        server.kill()  # SIGKILL mid-transfer
                        nursery.cancel_scope.cancel()
                    await far.aclose()
                    await client.wait_for(r"disconnected from 127\.0\.0\.1")
                    # The pty application sees nothing of it: no hangup, same path, same link,
                    # and it can keep writing (its writes block once the pty is full).
                    assert not poll_flags(near) & (select.POLLHUP | select.POLLERR)
                    reconnected = trio.Event()

                    async def write_on() -> None:
                        await near.send_all(during)
                        await reconnected.wait()
                        await near.send_all(after + marker)

                    outer.start_soon(write_on)
                    await trio.sleep(0.5)  # a few refused reconnects
                    server = CliBridge(server_args(port, creds), name="server again")
                    server_pty = await server.pty_path()
                    await client.wait_for(rf"connected to 127\.0\.0\.1:{port}: TLS", skip=1)
                    reconnected.set()
                    assert os.readlink(link) == client_pty
                    async with open_pty(server_pty) as far:
                        resumed = await read_until(far, marker, timeout=30)
                        await far.send_all(b"pong\n")
                        assert await read_until(near, b"pong\n") == b"pong\n"
        finally:
            if server is not None:
                server.close()
    # What was written while the far side was down, then after it came back, arrived whole
    # and in order...
    tail = resumed[-len(during + after + marker) :]
    assert sha256(tail) == sha256(during + after + marker)
    # ...after whatever the client bridge still held from before the kill (its carry): the
    # end of what had been written, nothing repeated out of order, nothing invented.
    leftover = resumed[: -len(during + after + marker)]
    assert before[: writer.written].endswith(leftover)
    assert before.startswith(arrived)
    log = client.log()
    assert log.count("local end: pty") == 1
    assert "cannot connect to 127.0.0.1" in log


# -- memory stays bounded while a reader dawdles ------------------------------------------------


class Source:
    """``total`` pseudo-random bytes in chunks (slices of a random block), hashed as sent."""

    def __init__(self, total: int, chunk: int = 256 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.block = os.urandom(8 * MiB)
        self.hash = hashlib.sha256()
        self.sent = 0

    def next_chunk(self) -> bytes:
        offset = (self.sent // self.chunk * 4099) % (len(self.block) - self.chunk)
        data = self.block[offset : offset + min(self.chunk, self.total - self.sent)]
        self.hash.update(data)
        self.sent += len(data)
        return data

    async def pour(self, stream: trio.abc.SendStream) -> None:
        while self.sent < self.total:
            await stream.send_all(self.next_chunk())


class Sink:
    """Reads ``total`` bytes: nothing for ``pause`` s, then slowly for ``slow`` s, then fast."""

    def __init__(self, total: int, pause: float, slow: float) -> None:
        self.total, self.pause, self.slow = total, pause, slow
        self.hash = hashlib.sha256()
        self.received = 0

    async def drink(self, stream: trio.abc.ReceiveStream) -> None:
        await trio.sleep(self.pause)
        slow_until = trio.current_time() + self.slow
        while self.received < self.total:
            slow = trio.current_time() < slow_until
            data = await stream.receive_some(16 * 1024 if slow else MiB)
            if not data:
                raise EOFError(f"EOF after {self.received} bytes")
            self.hash.update(data)
            self.received += len(data)
            if slow:
                await trio.sleep(0.01)  # ~1.6 MB/s


@pytest.mark.slow
async def test_one_gib_offered_each_way_to_dawdling_readers_keeps_the_bridge_rss_bounded(
    creds: pki.PkiLayout, tmp_path: Path
) -> None:
    sock = str(tmp_path / "local.sock")
    args = [*server_args(0, creds), "--local", f"unix-listen:{sock}"]
    total = 1 << 30
    samples: list[int] = []
    began = time.monotonic()
    with trio.fail_after(55):
        async with cli_bridge(args, name="bridge") as bridge:
            while not os.path.exists(sock):
                await trio.sleep(0.02)
            port = await bridge.port()
            remote, _ = await tls_connect(port, client_context(creds.client_dir))
            local = await trio.open_unix_socket(sock)
            await trio.sleep(0.3)
            baseline = bridge.rss_kib()
            up, down = Source(total), Source(total)  # local -> remote, remote -> local
            up_sink, down_sink = Sink(total, pause=3, slow=2), Sink(total, pause=3, slow=2)

            async def sample() -> None:
                while True:
                    samples.append(bridge.rss_kib())
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                async with trio.open_nursery() as transfer:
                    transfer.start_soon(up.pour, local)
                    transfer.start_soon(down.pour, remote)
                    transfer.start_soon(up_sink.drink, remote)
                    transfer.start_soon(down_sink.drink, local)
                nursery.cancel_scope.cancel()
            peak = max(samples)
            high_water = rss_kib(bridge.pid, "VmHWM")
            await remote.aclose()
            await local.aclose()
    elapsed = time.monotonic() - began
    assert up_sink.hash.hexdigest() == up.hash.hexdigest()
    assert down_sink.hash.hexdigest() == down.hash.hexdigest()
    growth_mib = (max(peak, high_water) - baseline) / 1024
    print(f"\n2 GiB in {elapsed:.1f}s; RSS {baseline / 1024:.1f} MiB + {growth_mib:.1f} MiB")
    assert growth_mib < 100, (baseline, peak, high_water)
