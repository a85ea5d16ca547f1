"""How sessions end when a peer leaves, stalls or rejects us: no held line, no lost bytes,
no log flood (found in review; each test first failed against the old code)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.datapath import Session
from chardev_bridge.bridge.verdict import FailureKind
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.tls.stream import TLSHandshakeError, TLSStream
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, TlsServer, client_context, server_context, tls_connect
from tests.support.streams import open_pty, read_exactly


async def _tls_connect_or_refused(port: int, pki: PKI) -> str | None:
    """Connect and close again; the peer name, or None if the bridge refused us."""
    try:
        stream, name = await tls_connect(port, client_context(pki.client_dir))
    except trio.BrokenResourceError:
        return None
    await stream.aclose()
    return name


@pytest.mark.trio
async def test_remote_gone_without_close_notify_frees_a_socket_local_end(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    # A local service that keeps its connection open after our EOF, as many do.
    service = (await trio.open_tcp_listeners(0, host=HOST))[0]
    held: list[trio.SocketStream] = []
    received = bytearray()

    async def serve_forever() -> None:
        while True:
            conn = await service.accept()
            held.append(conn)
            received.extend(await conn.receive_some())

    cfg = BridgeConfig(
        listen=True,
        host=HOST,
        port=0,
        tls_creds=pki.server_dir,
        local=LocalSpec("tcp", host=HOST, port=service.socket.getsockname()[1]),
        shutdown_grace=1.0,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_forever)
            async with running_bridge(cfg) as ready:
                first, first_name = await tls_connect(
                    ready.ports[0], client_context(pki.client_dir)
                )
                await first.send_all(b"hello\n")
                await trio.sleep(0.3)
                await first.transport_stream.aclose()  # as QEMU: TCP close, no close_notify
                await trio.sleep(2.5)
                assert await _tls_connect_or_refused(ready.ports[0], pki) is not None
            nursery.cancel_scope.cancel()
    assert bytes(received) == b"hello\n"
    assert log_lines(
        caplog, f"^disconnected from {first_name} .*; remote closed, local end quiet for 1s$"
    )
    assert not log_lines(caplog, "^refused ")


@pytest.mark.trio
async def test_remote_that_leaves_before_the_local_client_comes_frees_the_line(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    cfg = BridgeConfig(
        listen=True,
        host=HOST,
        port=0,
        tls_creds=pki.server_dir,
        local=LocalSpec("unix-listen", path=str(tmp_path / "console.sock")),
    )
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            first, first_name = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            await first.aclose()
            await trio.sleep(2.0)
            assert await _tls_connect_or_refused(ready.ports[0], pki) is not None
    assert log_lines(
        caplog, f"^closing {first_name}: it left before local end unix-listen .* was ready$"
    )
    assert not log_lines(caplog, "^refused ")


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


async def _rejecting_tls_server(
    listener: trio.SocketListener,
    pki: PKI,
    accept_after: trio.Event,
    received: bytearray,
    attempts: list[int],
    alert_with_ca: trustme.CA | None = None,
) -> None:
    """Rejects TLS 1.3 clients after their handshake, QEMU's way (a bare TCP close), or with
    ``alert_with_ca`` OpenSSL's way (an unknown-CA alert: it trusts only that CA); once
    ``accept_after`` is set, keeps the connection and collects what arrives."""
    ctx = server_context(pki.server_dir)
    distrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if alert_with_ca is not None:
        distrusting.load_cert_chain(
            pki.server_dir / "server-cert.pem", pki.server_dir / "server-key.pem"
        )
        alert_with_ca.configure_trust(distrusting)
        distrusting.verify_mode = ssl.CERT_REQUIRED
    while True:
        tcp = await listener.accept()
        attempts.append(1)
        if alert_with_ca is not None and not accept_after.is_set():
            try:
                await TLSStream(tcp, distrusting, server_side=True).do_handshake()
            except TLSHandshakeError:
                pass  # the alert is sent
            await tcp.aclose()
            continue
        tls = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            await tcp.aclose()
            continue
        if not accept_after.is_set():
            await trio.sleep(0.05)  # QEMU checks the certificate, then closes
            await tcp.aclose()
            continue
        while data := await tls.receive_some():
            received.extend(data)


@pytest.mark.trio
@pytest.mark.parametrize("way", ["bare close", "alert"])
async def test_bytes_typed_while_a_server_rejects_us_after_the_handshake_are_not_lost(
    pki: PKI,
    make_other_pki: Callable[[str], PKI],
    caplog: pytest.LogCaptureFixture,
    way: str,
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    accept_after, received, attempts = trio.Event(), bytearray(), list[int]()
    other_ca = make_other_pki("other").ca if way == "alert" else None
    typed = b"typed while we were being rejected\n"
    cfg = BridgeConfig(
        host=HOST,
        port=listener.socket.getsockname()[1],
        local=LocalSpec("pty"),
        tls_creds=pki.client_dir,
        reconnect=0.2,
        reconnect_max=0.2,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _rejecting_tls_server, listener, pki, accept_after, received, attempts, other_ca
            )
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                app = open_pty(ready.pty_path)
                await app.send_all(typed)
                while len(attempts) < 3:
                    await trio.sleep(0.05)
                accept_after.set()
                while len(received) < len(typed):
                    await trio.sleep(0.05)
                await trio.sleep(0.3)
                await app.aclose()
            nursery.cancel_scope.cancel()
    assert bytes(received) == typed
    why = "probably rejected our client certificate" if other_ca is None else "unknown CA"
    assert log_lines(
        caplog, rf"^disconnected from .*: \d+ bytes sent, 0 bytes received; remote failed: .*{why}"
    )


@pytest.mark.trio
@pytest.mark.parametrize("way", ["bare close", "alert"])
async def test_a_server_that_keeps_rejecting_us_does_not_flood_the_log(
    pki: PKI,
    make_other_pki: Callable[[str], PKI],
    caplog: pytest.LogCaptureFixture,
    way: str,
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    attempts: list[int] = []
    other_ca = make_other_pki("other").ca if way == "alert" else None
    cfg = BridgeConfig(
        host=HOST,
        port=listener.socket.getsockname()[1],
        local=LocalSpec("pty"),
        tls_creds=pki.client_dir,
        reconnect=0.02,
        reconnect_max=0.02,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _rejecting_tls_server, listener, pki, trio.Event(), bytearray(), attempts, other_ca
        )
        async with running_bridge(cfg):
            with trio.fail_after(30):
                while len(attempts) < 20:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    n = len(attempts)
    why = "probably rejected our client certificate" if other_ca is None else "unknown CA"
    rejected = log_lines(caplog, rf"^disconnected from .*{why}")
    # The 1st, 2nd, 4th, 8th, 16th... repeat: at most log2(n) + 1 lines, each counting.
    assert 1 <= len(rejected) <= n.bit_length()
    assert any(line.endswith("(16 times in a row)") for line in rejected)
    assert len(log_lines(caplog, "^connected to ")) <= n.bit_length() + 1


class _RemoteThatCannotTakeMore(trio.abc.HalfCloseableStream):
    """A remote whose last words have already arrived and to which every send fails."""

    def __init__(self, arrived: trio.abc.ReceiveStream) -> None:
        self.arrived = arrived

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("[Errno 32] Broken pipe")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.arrived.receive_some(4096)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _RemoteThatResetsThenAlerts(trio.abc.HalfCloseableStream):
    """A server that sent an alert and closed: our send meets the reset before our receive
    has read the alert."""

    def __init__(self) -> None:
        self.send_failed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.send_failed.set()
        raise trio.BrokenResourceError from ConnectionResetError(104, "Connection reset by peer")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.send_failed.wait()
        alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
        alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
        raise trio.BrokenResourceError from alert

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.trio
async def test_the_alert_a_remote_sent_is_its_failure_even_when_a_send_failed_first() -> None:
    app, local = trio.testing.memory_stream_pair()
    await app.send_all(b"typed\n")
    session = Session(local, _RemoteThatResetsThenAlerts(), local_persistent=False)
    with trio.fail_after(10):
        stats = await session.run()
    assert stats.failure is not None
    assert stats.failure.side == "remote"
    assert stats.failure.kind is FailureKind.PEER_ALERT
    assert str(stats.failure) == "the peer rejected our certificate: unknown CA (alert unknown_ca)"


@pytest.mark.trio
async def test_a_server_that_read_our_bytes_and_sent_close_notify_gets_none_again(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    server = TlsServer(server_context(pki.server_dir))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            cfg = BridgeConfig(
                host=HOST, port=server.port, local=LocalSpec("pty"), tls_creds=pki.client_dir,
                reconnect=0.1, reconnect_max=0.1,
            )  # fmt: skip
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                app = open_pty(ready.pty_path)
                first = await server.accept()
                await app.send_all(b"quit\n")
                assert await read_exactly(first, 5) == b"quit\n"
                await first.aclose()  # close_notify, within the 2 s, having said nothing
                await wait_log(caplog, r"^disconnected from ")
                await app.send_all(b"after\n")
                second = await server.accept()
                got = await read_exactly(second, 6)
                with trio.move_on_after(0.5):
                    got += await second.receive_some()
                await app.aclose()
            nursery.cancel_scope.cancel()
    assert got == b"after\n"
    assert "rejected" not in caplog.text


@pytest.mark.trio
async def test_a_failed_send_still_delivers_what_the_remote_had_sent() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote_side, arrived = trio.testing.memory_stream_pair()
    reply = os.urandom(40_000)
    await remote_side.send_all(reply)
    await remote_side.send_eof()
    got = bytearray()

    async def application() -> None:
        got.extend(await app.receive_some(4096))
        await app.send_all(b"next command\n")  # the send to the remote fails
        while data := await app.receive_some():
            got.extend(data)

    session = Session(local, _RemoteThatCannotTakeMore(arrived), local_persistent=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(application)
            stats = await session.run()
            await local.aclose()
    assert bytes(got) == reply
    assert stats.failure is not None and stats.failure.side == "remote"


@pytest.mark.trio
async def test_scrollback_whose_local_end_fails_ends_the_session_with_a_log_line() -> None:
    # stdio as the local end, and the reader of our stdout goes away (EPIPE on write).
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]

    async def chatty_server() -> None:
        conn = await listener.accept()
        try:
            for _ in range(200):
                await conn.send_all(b"x" * 4096)
                await trio.sleep(0.01)
        except trio.BrokenResourceError:
            pass

    read_end, write_end = os.pipe()
    argv = [
        sys.executable, "-m", "chardev_bridge", "--host", HOST,
        "--port", str(listener.socket.getsockname()[1]),
        "--local", "stdio", "--when-unread", "buffer",
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatty_server)
        with trio.fail_after(20):
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=write_end, stderr=subprocess.PIPE
            )
            os.close(write_end)
            await trio.to_thread.run_sync(os.read, read_end, 100)
            os.close(read_end)
            assert proc.stderr is not None
            err = bytearray()
            while chunk := await proc.stderr.receive_some():
                err.extend(chunk)
            status = await proc.wait()
        nursery.cancel_scope.cancel()
    text = err.decode()
    assert "Traceback" not in text
    assert re.search(r"disconnected from .*; local failed: .*", text), text
    assert status == 1


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


@pytest.mark.trio
async def test_a_local_end_that_stays_away_does_not_flood_the_log(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    cfg = BridgeConfig(
        host=HOST,
        port=1,  # never reached: the local end fails first
        local=LocalSpec("unix", path=str(tmp_path / "not-there.sock")),
        tls_creds=pki.client_dir,
        reconnect=0.01,
        reconnect_max=0.01,
    )
    async with running_bridge(cfg):
        await trio.sleep(1.5)  # some 100 attempts
    failures = log_lines(caplog, "^cannot open local end unix ")
    assert 3 <= len(failures) <= 10
    assert failures[-1].endswith(f"({2 ** (len(failures) - 1)} times in a row)")
