"""A local end nobody reads: --when-unread block holds the remote back and warns, buffer
keeps the remote flowing and the newest bytes (--scrollback), and a bridge that ends says what
of its scrollback was never read."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
import trio

from chardev_bridge.bridge import datapath, watch
from chardev_bridge.bridge import run as bridge_module
from tests.support.bridges import (
    connecting_config,
    listening_config,
    log_lines,
    running_bridge,
    wait_log,
)
from tests.support.certs import PKI
from tests.support.net import TlsServer, client_context, server_context, tls_connect
from tests.support.streams import open_pty, read_exactly, sha256

MiB = 1 << 20


def segments(received: bytes | bytearray, payload: bytes) -> list[tuple[int, int]]:
    """``received`` as (offset, length) slices of ``payload``, in order (64-byte anchors)."""
    pos, found = 0, []
    while pos < len(received):
        at = payload.find(bytes(received[pos : pos + 64]))
        assert at >= 0, f"bytes at {pos} are not from the payload"
        n = min(64, len(received) - pos)
        while pos + n < len(received) and at + n < len(payload):
            if received[pos + n] != payload[at + n]:
                break
            n += 1
        found.append((at, n))
        pos += n
    return found


async def test_when_unread_buffer_keeps_the_remote_flowing_and_keeps_the_newest_bytes(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    scrollback = 64 * 1024
    payload = os.urandom(4 * MiB)
    received = bytearray()
    cfg = listening_config(pki.server_dir, when_unread="buffer", scrollback=scrollback)
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            conn, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            # Nobody has the pty open, yet the remote is never stalled.
            with trio.fail_after(10):
                for start in range(0, len(payload), 64 * 1024):
                    await conn.send_all(payload[start : start + 64 * 1024])
            await wait_log(info_logs, r"scrollback full at 65536 bytes")
            await trio.sleep(0.5)  # the bridge takes in what is still in flight

            def dropped_in_all() -> int:
                found = log_lines(info_logs, r"bytes were dropped from the scrollback in all$")
                return int(found[-1].split("; ")[1].split()[0]) if found else -len(payload)

            async with open_pty(ready.pty_path) as app:
                # Read until every byte is either here or counted as dropped.
                while len(received) + dropped_in_all() < len(payload):
                    with trio.move_on_after(0.2):
                        received += await app.receive_some()
            await conn.aclose()
    dropped = dropped_in_all()
    assert dropped > 0
    assert len(received) + dropped == len(payload)
    # Oldest bytes dropped, newest kept: the received bytes are slices of the payload in
    # order, ending with the last --scrollback bytes.
    parts = segments(received, payload)
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(parts)), parts
    assert parts[-1][0] + parts[-1][1] == len(payload)
    assert sha256(received[-scrollback:]) == sha256(payload[-scrollback:])
    assert len(received) <= scrollback + datapath.CHUNK + 256 * 1024


async def test_a_bridge_that_ends_delivers_its_scrollback_to_a_late_reader_first(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    # No --reconnect: the bridge ends with its session, while the scrollback still holds
    # almost everything the remote sent, and nobody has the pty open yet.
    payload = os.urandom(512 * 1024)
    server = TlsServer(server_context(pki.server_dir))
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting_config(server.port, pki.client_dir, when_unread="buffer", scrollback=MiB)

        async def bridge(task_status: trio.TaskStatus[bridge_module.BridgeReady]) -> None:
            codes.append(await bridge_module.run_bridge(cfg, task_status=task_status))

        with trio.fail_after(30):
            ready: bridge_module.BridgeReady = await nursery.start(bridge)
            assert ready.pty_path is not None
            conn = await server.accept()
            await conn.send_all(payload)
            await conn.aclose()
            await wait_log(info_logs, r"^disconnected from ")
            async with open_pty(ready.pty_path) as app:
                got = await read_exactly(app, len(payload))
            while not codes:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert sha256(got) == sha256(payload)
    assert codes == [0]
    assert not log_lines(info_logs, "scrollback; they are lost")


@pytest.mark.parametrize("size", [40 * 1024, 512 * 1024])
async def test_a_bridge_that_ends_unread_says_how_much_scrollback_it_lost(
    pki: PKI, info_logs: pytest.LogCaptureFixture, size: int
) -> None:
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting_config(
            server.port, pki.client_dir, when_unread="buffer", scrollback=MiB, shutdown_grace=0.3
        )
        with trio.fail_after(30):
            await nursery.start(bridge_module.run_bridge, cfg)
            conn = await server.accept()
            await conn.send_all(os.urandom(size))
            await conn.aclose()
            [line] = await wait_log(info_logs, r"did not read the last \d+ bytes")
        nursery.cancel_scope.cancel()
    lost = int(line.split("the last ")[1].split()[0])
    # All but what the pty's own queue took (about 15 KiB, measured; a write to it that
    # never finished counts whole).
    assert size - 32 * 1024 < lost <= size, line


async def test_when_unread_block_backpressures_the_remote_warns_and_loses_nothing(
    pki: PKI, info_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "UNREAD_WARNING_SECONDS", 1.0)
    payload = os.urandom(8 * MiB)
    sent = 0
    received = hashlib.sha256()
    with trio.fail_after(60):
        async with running_bridge(listening_config(pki.server_dir)) as ready:
            assert ready.pty_path is not None
            conn, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))

            async def send() -> None:
                nonlocal sent
                for start in range(0, len(payload), 256 * 1024):
                    await conn.send_all(payload[start : start + 256 * 1024])
                    sent = start + 256 * 1024

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await wait_log(info_logs, r"^the local end has taken no bytes for \d+s")
                stalled_at = sent
                await trio.sleep(0.5)
                assert sent == stalled_at < len(payload) // 2, (sent, stalled_at)
                async with open_pty(ready.pty_path) as app:
                    got = 0
                    while got < len(payload):
                        chunk = await app.receive_some(MiB)
                        received.update(chunk)
                        got += len(chunk)
                    await wait_log(info_logs, r"^the local end is being read again")
            await conn.aclose()
    assert received.hexdigest() == sha256(payload)
    assert log_lines(info_logs, "remote peer is stalled until something reads it")
