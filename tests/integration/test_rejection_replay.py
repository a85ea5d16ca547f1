"""A server that rejects us right after the TLS 1.3 handshake (QEMU's bare close after tls-authz
or a CRL, OpenSSL's alert): what we sent it is replayed to the next server, nothing typed
meanwhile is lost, repeats do not flood the log, and ends that are no rejection replay
nothing."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable

import pytest
import trio
import trio.testing
import trustme

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.tls.stream import TLSHandshakeError, TLSStream
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, TlsServer, abort, server_context
from tests.support.streams import open_pty, read_exactly


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


async def _one_session_tcp_to_tls(
    pki: PKI, server: TlsServer, local: trio.SocketListener, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge from the TCP service ``local`` to ``server``, until its first disconnect."""
    cfg = BridgeConfig(
        host=HOST, port=server.port, tls_creds=pki.client_dir,
        local=LocalSpec("tcp", host=HOST, port=local.socket.getsockname()[1]),
    )  # fmt: skip
    with trio.fail_after(10):
        async with running_bridge(cfg):
            while not _disconnect_lines(caplog):
                await trio.sleep(0.05)


async def test_more_than_a_rejecting_server_lets_through_reaches_the_next_one(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    payload = os.urandom(3 << 20)  # more than a server that reads nothing lets through
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = BridgeConfig(
            host=HOST, port=server.port, local=LocalSpec("pty"), tls_creds=pki.client_dir,
            reconnect=0.05,
        )  # fmt: skip
        with trio.fail_after(30):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                async with open_pty(ready.pty_path) as app:
                    nursery.start_soon(app.send_all, payload)
                    first = await server.accept()  # as QEMU: handshake, then authz says no
                    await trio.sleep(0.8)  # reading nothing
                    abort(first.transport_stream.socket)
                    second = await server.accept()
                    got = await read_exactly(second, len(payload), timeout=20)
        nursery.cancel_scope.cancel()
    assert got == payload


async def test_local_end_that_finished_then_a_silent_close_is_no_rejection(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    # The local tool sends a command and EOF; the server reads to our close_notify and closes
    # without one, as QEMU does. That server read everything: no rejection, no replay.
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    local = (await trio.open_tcp_listeners(0, host=HOST))[0]
    server = TlsServer(server_context(pki.server_dir))
    got = bytearray()
    async with trio.open_nursery() as nursery:
        await server.start(nursery)

        async def local_tool() -> None:
            conn = await local.accept()
            await trio.sleep(0.3)
            await conn.send_all(b"info status\n")
            await conn.send_eof()
            await trio.sleep(5)

        async def qemu_like_server() -> None:
            stream = await server.accept()
            while data := await stream.receive_some():
                got.extend(data)
            abort(stream.transport_stream.socket)

        nursery.start_soon(local_tool)
        nursery.start_soon(qemu_like_server)
        await _one_session_tcp_to_tls(pki, server, local, caplog)
        nursery.cancel_scope.cancel()
    assert bytes(got) == b"info status\n"
    line = _disconnect_lines(caplog)[0].getMessage()
    assert "rejected" not in line and "12 bytes sent" in line, line


async def test_a_local_reset_is_reported_as_the_local_failure(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    local = (await trio.open_tcp_listeners(0, host=HOST))[0]
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)

        async def crashing_local_tool() -> None:
            conn = await local.accept()
            await trio.sleep(0.3)
            abort(conn.socket)

        async def silent_server() -> None:
            await server.accept()
            await trio.sleep(5)

        nursery.start_soon(crashing_local_tool)
        nursery.start_soon(silent_server)
        await _one_session_tcp_to_tls(pki, server, local, caplog)
        nursery.cancel_scope.cancel()
    line = _disconnect_lines(caplog)[0].getMessage()
    assert "local failed: the peer reset the connection" in line and "rejected" not in line


def _disconnect_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("disconnected from")]
