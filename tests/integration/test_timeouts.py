"""Timeouts: --idle-timeout, --handshake-timeout, and a connect that gets no answer."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.datapath import Session
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.pty import PtyEnd
from tests.support.bridges import listening_config, log_lines, running_bridge
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tcp_connect, tls_connect
from tests.support.streams import open_pty, read_exactly, read_to_eof, read_until, sha256


async def test_idle_timeout_ends_only_an_idle_session(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(listening_config(pki.server_dir, idle_timeout=1.0)) as ready:
            assert ready.pty_path is not None
            conn, name = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            async with open_pty(ready.pty_path) as app:
                # Busy for 1.5 s with gaps shorter than the timeout: the session stays.
                for i in range(6):
                    await conn.send_all(b"%d\n" % i)
                    await read_until(app, b"%d\n" % i)
                    await trio.sleep(0.25)
                assert not log_lines(info_logs, "^disconnected")
                began = trio.current_time()
                rest, how = await read_to_eof(conn, timeout=5)
                idle_for = trio.current_time() - began
    assert (rest, how) == (b"", "clean")
    assert 0.9 <= idle_for <= 2.5
    [line] = log_lines(info_logs, "^disconnected from")
    assert line.startswith(f"disconnected from {name} after")
    # The idle check runs once a second: idle for 1 to 2 s.
    assert re.search(r"; idle for [12]s \(--idle-timeout\)$", line), line


async def test_handshake_timeout_drops_a_silent_client_while_a_good_one_gets_through(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(listening_config(pki.server_dir, handshake_timeout=0.5)) as ready:
            assert ready.pty_path is not None
            silent, silent_name = await tcp_connect(ready.ports[0])
            good, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            async with open_pty(ready.pty_path) as app:
                payload = os.urandom(256 * 1024)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(good.send_all, payload)
                    assert sha256(await read_exactly(app, len(payload))) == sha256(payload)
                rest, how = await read_to_eof(silent, timeout=3)
                assert (rest, how) == (b"", "clean")
                await app.send_all(b"still here\n")
                assert await read_exactly(good, 11) == b"still here\n"
            await good.aclose()
    assert log_lines(info_logs, "^dropped") == [
        f"dropped {silent_name}: no TLS handshake within 0.5s"
    ]


@pytest.mark.trio
async def test_idle_timeout_spares_a_slow_but_steady_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    pty = PtyEnd()
    await pty.start()
    remote, peer = trio.testing.memory_stream_pair()
    payload = os.urandom(96 * 1024)
    got = bytearray()

    async def slow_reader() -> None:
        app = open_pty(pty.path)
        try:
            while len(got) < len(payload):  # about 20 KiB/s: 4.8 s for the burst
                got.extend(await app.receive_some(2048))
                await trio.sleep(0.1)
        finally:
            await app.aclose()

    session = Session(pty, remote, local_persistent=True, idle_timeout=2.0)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_reader)
                nursery.start_soon(session.run)
                await peer.send_all(payload)
                while len(got) < len(payload):
                    await trio.sleep(0.1)
                await peer.send_eof()
    finally:
        await pty.aclose()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert session.stats.ended_by is None and session.stats.remote_eof
    assert not log_lines(caplog, "idle for|has taken no bytes")


@pytest.mark.trio
async def test_a_connect_that_gets_no_answer_times_out_with_a_log_line(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    # A listener whose accept queue is full drops further SYNs: a black hole on loopback.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((HOST, port))
            fillers.append(filler)
        cfg = BridgeConfig(
            host=HOST, port=port, local=LocalSpec("pty"), tls_creds=pki.client_dir,
            handshake_timeout=1.0,
        )  # fmt: skip
        try:
            with trio.fail_after(10):
                async with running_bridge(cfg) as ready:
                    assert ready is not None
                    while not log_lines(caplog, "^cannot connect"):
                        await trio.sleep(0.1)
        finally:
            for filler in fillers:
                filler.close()
    assert log_lines(caplog, rf"^cannot connect to {HOST}:{port}: no TCP connection within 1s$")
