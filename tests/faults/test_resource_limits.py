"""Resources stay bounded whatever peers do: the bridge's memory while readers dawdle over 1 GiB
each way or 16 viewers stall, a stalled viewer that slows nobody and is dropped, and the cap of
64 handshakes at once."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.slots import MAX_PENDING_HANDSHAKES
from tests.support.bridges import attach_viewer
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tcp_connect, tls_connect
from tests.support.procs import LINE, cli_bridge, rss_kib, socket_count
from tests.support.streams import (
    exchange_through_pty,
    open_pty,
    read_exactly,
    read_to_eof,
    sha256,
)

MiB = 1 << 20
# A listening plain-TCP bridge with a pty local end and viewers on the socket that follows.
VIEWING = ["--server", "--host", HOST, "--port", "0", "--viewers"]


# -- memory stays bounded while readers dawdle -----------------------------------------------------


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
    creds_root: Path, tmp_path: Path
) -> None:
    sock = str(tmp_path / "local.sock")
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(creds_root / "server")]
    args += ["--local", f"unix-listen:{sock}"]
    total = 1 << 30
    samples: list[int] = []
    began = time.monotonic()
    with trio.fail_after(55):
        async with cli_bridge(args, name="bridge") as bridge:
            while not os.path.exists(sock):
                await trio.sleep(0.02)
            port = await bridge.port()
            remote, _ = await tls_connect(port, client_context(creds_root / "client"))
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


async def test_a_viewer_that_never_reads_neither_slows_a_24_mib_burst_nor_another_viewer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "console.sock"
    burst = os.urandom(24 * MiB)
    with trio.fail_after(120):
        async with cli_bridge([*VIEWING, f"unix-listen:{path}", "--replay", "0"]) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:
                # The same burst without viewers first: what "not slowed" is measured against.
                began = trio.current_time()
                nursery.start_soon(remote.send_all, burst)
                assert sha256(await read_exactly(app, len(burst), timeout=60)) == sha256(burst)
                alone = trio.current_time() - began
                stalled = await attach_viewer(path, rcvbuf=4096)
                await proc.wait_for(r"viewer 1 attached")
                reader = await attach_viewer(path)
                await proc.wait_for(r"viewer 2 attached")
                at_viewer = hashlib.sha256()
                viewer_got = 0

                async def watch() -> None:
                    nonlocal viewer_got
                    while viewer_got < len(burst):
                        data = await reader.receive_some(MiB)
                        assert data, "the reading viewer was cut off"
                        at_viewer.update(data)
                        viewer_got += len(data)

                nursery.start_soon(watch)
                began = trio.current_time()
                nursery.start_soon(remote.send_all, burst)
                got = await read_exactly(app, len(burst), timeout=60)
                took = trio.current_time() - began
                assert sha256(got) == sha256(burst)
                found = await proc.wait_for(
                    r"viewer 1 disconnected: it fell (\d+) bytes behind \(more than 1048576"
                    r" unread\)"
                )
                assert int(found.group(1)) > MiB
                await proc.wait_for(r"viewer 1 detached after")
            assert at_viewer.hexdigest() == sha256(burst)
            print(f"24 MiB remote -> pty: {alone:.2f}s alone, {took:.2f}s with a stalled viewer")
            # Generous for a busy CI machine; a viewer that blocked the pump would never end.
            assert took < 3 * alone + 2
            assert proc.count(r"viewer 2 (disconnected|detached)") == 0
            await stalled.aclose()
            await reader.aclose()
            await remote.aclose()


async def test_memory_stays_bounded_with_16_stalled_viewers_and_a_pouring_remote(
    tmp_path: Path,
) -> None:
    """16 viewers that never read, a remote pouring 64 MiB: the bridge's peak RSS grows by
    less than 16 queues of 1 MiB plus a margin, and the 17th viewer is refused."""
    path = tmp_path / "console.sock"
    pour = 64 * MiB
    with trio.fail_after(180):
        async with cli_bridge([*VIEWING, f"unix-listen:{path}"]) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:
                await remote.send_all(b"warm up\n")
                await read_exactly(app, 8)
                stalled = [await attach_viewer(path, rcvbuf=4096) for _ in range(16)]
                await proc.wait_for(r"\(16 watching\)")
                extra = await attach_viewer(path)
                refusal, _ = await read_to_eof(extra)
                assert refusal == b"chardev-bridge: too many viewers (--max-viewers), try later\r\n"
                await proc.wait_for(r"viewer from .* refused: 16 viewers are watching")
                baseline = rss_kib(proc.pid, "VmHWM")

                async def pour_remote() -> None:
                    block = os.urandom(MiB)
                    for _ in range(pour // MiB):
                        await remote.send_all(block)

                nursery.start_soon(pour_remote)
                left = pour
                while left:
                    left -= len(await app.receive_some(min(left, MiB)))
                growth_mib = (rss_kib(proc.pid, "VmHWM") - baseline) / 1024
                await proc.wait_for(r"viewer \d+ disconnected: it fell \d+ bytes behind", skip=15)
            print(f"peak RSS growth with 16 stalled viewers, 64 MiB poured: {growth_mib:.1f} MiB")
            # Each stalled viewer holds at most 1 MiB (shared chunks: usually far less).
            assert growth_mib < 24
            for viewer in [*stalled, extra]:
                await viewer.aclose()
            await remote.aclose()


# -- concurrent handshakes -------------------------------------------------------------------------


async def test_65th_concurrent_handshake_is_refused_and_a_good_client_gets_through_later(
    pki: PKI,
) -> None:
    assert MAX_PENDING_HANDSHAKES == 64  # README: "at most 64 handshakes run at once"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge([*args, "--handshake-timeout", "30"]) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            baseline = socket_count(bridge.pid)
            silent = [(await tcp_connect(port))[0] for _ in range(64)]
            # Every silent connection accepted and waiting in its handshake.
            while socket_count(bridge.pid) < baseline + 64:
                await trio.sleep(0.02)
            await trio.sleep(0.2)
            extra, extra_name = await tcp_connect(port)
            rest, how = await read_to_eof(extra, timeout=5)
            assert rest == b"" and how in ("clean", "reset")
            await bridge.wait_for(
                rf"{LINE}refused {re.escape(extra_name)}: 64 handshakes already in progress$"
            )
            for tcp in silent:
                await tcp.aclose()
            # The bridge has seen each of them go (so 64 slots are free again).
            await bridge.wait_for(r"TLS handshake with 127\.0\.0\.1:\d+ failed: ", skip=63)
            conn, me = await tls_connect(port, client_context(pki.client_dir))
            await bridge.wait_for(rf"{LINE}session from {re.escape(me)}: TLSv1\.3 ")
            assert await exchange_through_pty(conn, pty_path) == (True, True)
            await conn.aclose()
    assert bridge.count(r"handshakes already in progress") == 1
