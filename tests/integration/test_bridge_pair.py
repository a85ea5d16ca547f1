"""Two bridges back to back over TLS: the byte stream arrives whole, both ways at once, over
every local end, IPv6 and names, several sessions, and TLS roles opposite to the TCP roles."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import partial
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from tests.support.bridges import capture_bridge_logs, running_bridge, wait_log
from tests.support.certs import PKI, subject_dn
from tests.support.net import free_port
from tests.support.streams import exchange, open_pty, read_exactly, read_until, sha256

SIZE = 32 * 1024 * 1024


def server_config(pki: PKI, local: LocalSpec, **kw: object) -> BridgeConfig:
    return BridgeConfig(
        listen=True,
        host="127.0.0.1",
        port=0,
        local=local,
        tls_creds=pki.server_dir,
        **kw,  # type: ignore[arg-type]
    )


def client_config(pki: PKI, port: int, local: LocalSpec, **kw: object) -> BridgeConfig:
    return BridgeConfig(
        host="127.0.0.1",
        port=port,
        local=local,
        tls_creds=pki.client_dir,
        **kw,  # type: ignore[arg-type]
    )


async def send_and_read_to_eof(stream: trio.SocketStream, payload: bytes) -> bytes:
    """Send ``payload`` then EOF while reading everything the other side sends until EOF."""
    received = bytearray()

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(view), 1 << 20):
            await stream.send_all(view[start : start + (1 << 20)])
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await stream.receive_some(1 << 20):
            received += chunk
    return bytes(received)


async def test_carries_32_mib_each_way_at_once_then_eof(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    server_sock = str(tmp_path / "server.sock")
    client_sock = str(tmp_path / "client.sock")
    up = os.urandom(SIZE)
    down = os.urandom(SIZE)
    with trio.fail_after(120):
        async with running_bridge(
            server_config(pki, LocalSpec("unix-listen", path=server_sock))
        ) as server:
            cfg = client_config(pki, server.ports[0], LocalSpec("unix-listen", path=client_sock))
            async with running_bridge(cfg):
                client_app = await trio.open_unix_socket(client_sock)
                server_app = await trio.open_unix_socket(server_sock)
                results: dict[str, bytes] = {}

                async def run(name: str, stream: trio.SocketStream, payload: bytes) -> None:
                    results[name] = await send_and_read_to_eof(stream, payload)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run, "client", client_app, up)
                    nursery.start_soon(run, "server", server_app, down)
                await client_app.aclose()
                await server_app.aclose()
    assert hashlib.sha256(results["server"]).hexdigest() == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(results["client"]).hexdigest() == hashlib.sha256(down).hexdigest()
    assert f"{SIZE} bytes sent, {SIZE} bytes received" in caplog.text
    assert "TLSv1.3" in caplog.text


async def test_pty_to_pty_line_arrives_raw(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    # Bytes a cooked tty would mangle or act on: CR, LF, ^C, ^D, ^Z, ^S, DEL, NUL, 0xff.
    line = b"hello\r\n\x03\x04\x1a\x13\x7f\x00\xff world\n"
    with trio.fail_after(20):
        async with running_bridge(server_config(pki, LocalSpec("pty"))) as server:
            assert server.pty_path
            cfg = client_config(pki, server.ports[0], LocalSpec("pty"))
            async with running_bridge(cfg) as client:
                assert client.pty_path
                async with (
                    open_pty(server.pty_path) as far,
                    open_pty(client.pty_path) as near,
                ):
                    await near.send_all(line)
                    assert await read_exactly(far, len(line)) == line
                    await far.send_all(b"reply\n")
                    assert await read_until(near, b"reply\n") == b"reply\n"
    assert "session from 127.0.0.1" in caplog.text
    assert "OU=clients,CN=client.example.com'" in caplog.text


async def test_pty_path_survives_remote_sessions(pki: PKI) -> None:
    with trio.fail_after(20):
        async with running_bridge(server_config(pki, LocalSpec("pty"))) as server:
            assert server.pty_path
            async with open_pty(server.pty_path) as app:
                for round_ in range(3):
                    cfg = client_config(pki, server.ports[0], LocalSpec("stdio"))
                    # A connecting bridge per round: connect, send, go away.
                    async with running_bridge(
                        BridgeConfig(
                            host="127.0.0.1",
                            port=server.ports[0],
                            local=LocalSpec("unix-listen", path=f"/tmp/cb-{os.getpid()}-{round_}"),
                            tls_creds=cfg.tls_creds,
                        )
                    ):
                        sock = await trio.open_unix_socket(f"/tmp/cb-{os.getpid()}-{round_}")
                        message = f"round {round_}\n".encode()
                        await sock.send_all(message)
                        assert await read_until(app, message) == message
                        await sock.aclose()
            assert os.path.exists(server.pty_path)


async def test_max_sessions_gives_each_local_client_its_own_tls_session(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        echo_port = listeners[0].socket.getsockname()[1]
        server_cfg = server_config(
            pki, LocalSpec("tcp", host="127.0.0.1", port=echo_port), max_sessions=3
        )
        with trio.fail_after(20):
            async with running_bridge(server_cfg) as server:
                local_port = free_port()
                client_cfg = client_config(
                    pki,
                    server.ports[0],
                    LocalSpec("tcp-listen", host="127.0.0.1", port=local_port),
                    max_sessions=3,
                )
                async with running_bridge(client_cfg):
                    apps = [await trio.open_tcp_stream("127.0.0.1", local_port) for _ in range(3)]
                    payloads = [os.urandom(200_000) for _ in apps]
                    results: dict[int, bytes] = {}

                    async def run(i: int) -> None:
                        results[i] = await send_and_read_to_eof(apps[i], payloads[i])

                    async with trio.open_nursery() as clients:
                        for i in range(3):
                            clients.start_soon(run, i)
                    for app in apps:
                        await app.aclose()
        nursery.cancel_scope.cancel()
    assert [results[i] for i in range(3)] == payloads
    assert caplog.text.count("session from 127.0.0.1") == 3


@pytest.mark.parametrize("host", ["::1", "localhost"])
async def test_ipv6_and_names_work_for_listening_and_connecting(
    pki: PKI, tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    sock = str(tmp_path / "app.sock")
    server_cfg = BridgeConfig(
        listen=True, host=host, port=0, local=LocalSpec("pty"), tls_creds=pki.server_dir
    )
    with trio.fail_after(20):
        async with running_bridge(server_cfg) as server:
            assert server.pty_path
            cfg = BridgeConfig(
                host=host,
                port=server.ports[0],
                local=LocalSpec("unix-listen", path=sock),
                tls_creds=pki.client_dir,
            )
            async with running_bridge(cfg), open_pty(server.pty_path) as far:
                app = await trio.open_unix_socket(sock)
                await app.send_all(b"over " + host.encode())
                assert await read_exactly(far, 5 + len(host)) == b"over " + host.encode()
                await app.aclose()
    if host == "::1":
        assert f"listening on [::1]:{server.ports[0]} (TLS)" in caplog.text
        assert f"connected to [::1]:{server.ports[0]}" in caplog.text


async def test_bridges_pair_with_tls_roles_opposite_to_tcp_roles(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    # TCP server + TLS client; it checks the TLS server's certificate against its --host,
    # 127.0.0.1 (an IP SAN).
    listener = BridgeConfig(
        listen=True, host="127.0.0.1", port=0, tls_creds=pki.client_dir, tls_endpoint="client"
    )
    async with running_bridge(listener) as a:
        # TCP client + TLS server; it requires the TLS client's certificate.
        connector = BridgeConfig(
            host="127.0.0.1", port=a.ports[0], tls_creds=pki.server_dir, tls_endpoint="server"
        )
        async with running_bridge(connector) as b:
            assert a.pty_path is not None and b.pty_path is not None
            async with open_pty(a.pty_path) as tty_a, open_pty(b.pty_path) as tty_b:
                up, down = os.urandom(256 * 1024), os.urandom(256 * 1024)
                at_b, at_a = await exchange(tty_a, tty_b, up, down)
                assert sha256(at_b) == sha256(up)
                assert sha256(at_a) == sha256(down)
    client_dn = re.escape(subject_dn(pki.client_dir / "client-cert.pem"))
    server_dn = re.escape(subject_dn(pki.server_dir / "server-cert.pem"))
    # Each names the other's certificate: the TCP server got the TLS server's certificate.
    await wait_log(caplog, rf"^session from 127\.0\.0\.1:\d+: TLSv1\.3 .*'{server_dn}'")
    await wait_log(caplog, rf"^connected to 127\.0\.0\.1:\d+: TLSv1\.3 .*'{client_dn}'")
