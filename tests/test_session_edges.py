"""Edges of session handling found in the second review: replay beyond its memory cap, what
counts as a rejection, repeats after sessions that worked, remotes that leave while a local
end is awaited, and unix-listen's probe (each test failed against the code it fixed)."""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge import local_wait
from chardev_bridge.bridge import session as session_module
from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.sockets import UnixListenEnd
from tests.support.bridges import running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import (
    HOST,
    TlsServer,
    abort,
    client_context,
    server_context,
    tcp_connect,
    tls_connect,
)
from tests.support.streams import open_pty, read_exactly


def _disconnect_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("disconnected from")]


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


async def test_more_than_the_replay_cap_sent_to_a_rejecting_server_reaches_the_next_one(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    payload = os.urandom(3 << 20)  # far beyond the 256 KiB kept for replay
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


async def test_failures_that_end_working_sessions_are_each_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    monkeypatch.setattr(session_module, "STABLE_SESSION_SECONDS", 0.3)
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    cfg = BridgeConfig(
        host=HOST, port=listener.socket.getsockname()[1], local=LocalSpec("pty"), reconnect=0.01
    )
    with trio.fail_after(20):
        async with running_bridge(cfg):
            for _ in range(4):
                tcp = await listener.accept()
                await tcp.send_all(b"hello")  # a session that works ...
                await trio.sleep(0.6)
                abort(tcp.socket)  # ... then a reset
            await trio.sleep(0.3)
    lines = _disconnect_lines(caplog)
    assert len(lines) >= 4 and all(r.levelno == logging.INFO for r in lines), [
        (r.levelname, r.getMessage()) for r in lines
    ]


async def test_local_end_that_never_comes_is_reported_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    monkeypatch.setattr(local_wait, "LOCAL_WAIT_SECONDS", 0.3)
    path = tmp_path / "absent.sock"
    cfg = BridgeConfig(listen=True, host=HOST, port=0, local=LocalSpec("unix", path=str(path)))
    with trio.fail_after(10):
        async with running_bridge(cfg) as ready:
            client = await trio.open_tcp_stream(HOST, ready.ports[0])
            assert await client.receive_some() == b""
    assert (
        f"cannot open local end unix {path}: No such file or directory (is the program that"
        " serves it running, e.g. QEMU with -chardev socket,path=…,server=on,wait=off?)"
    ) in caplog.text
    assert "unexpected" not in caplog.text


async def test_plain_tcp_remote_that_leaves_while_the_local_end_is_awaited_frees_the_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    cfg = BridgeConfig(
        listen=True, host=HOST, port=0, local=LocalSpec("unix-listen", path=str(tmp_path / "l"))
    )
    with trio.fail_after(20):
        async with running_bridge(cfg) as ready:
            first = await trio.open_tcp_stream(HOST, ready.ports[0])
            await trio.sleep(0.3)
            await first.aclose()
            await trio.sleep(2.5)
            second = await trio.open_tcp_stream(HOST, ready.ports[0])
            await trio.sleep(0.5)
            await second.aclose()
    assert "it left before local end" in caplog.text
    assert "refused" not in caplog.text


async def test_a_one_shot_tls_client_that_left_still_gets_its_bytes_to_the_local_end(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    path = str(tmp_path / "l.sock")
    cfg = BridgeConfig(
        listen=True, host=HOST, port=0, local=LocalSpec("unix-listen", path=path),
        tls_creds=pki.server_dir,
    )  # fmt: skip
    command = b"one-shot command\n"
    with trio.fail_after(20):
        async with running_bridge(cfg) as ready:
            client, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            await client.send_all(command)
            client.transport_stream.socket.shutdown(socket.SHUT_WR)
            await trio.sleep(2.5)
            local = await trio.open_unix_socket(path)  # the local application arrives
            got = await read_exactly(local, len(command), timeout=5)
            await local.aclose()
    assert got == command
    assert "it left before" not in caplog.text


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_a_one_shot_client_whose_local_end_never_comes_frees_the_line_in_time(
    tmp_path: Path,
    pki: PKI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tls: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    monkeypatch.setattr(local_wait, "LOCAL_WAIT_SECONDS", 1.0)
    cfg = BridgeConfig(
        listen=True, host=HOST, port=0, local=LocalSpec("unix-listen", path=str(tmp_path / "l")),
        tls_creds=pki.server_dir if tls else None,
    )  # fmt: skip
    command = b"one-shot command\n"
    with trio.fail_after(20):
        async with running_bridge(cfg) as ready:
            port = ready.ports[0]

            async def connect() -> tuple[trio.abc.Stream, str]:
                if tls:
                    return await tls_connect(port, client_context(pki.client_dir))
                return await tcp_connect(port)

            first, me = await connect()
            await first.send_all(command)
            await trio.aclose_forcefully(first)
            # Nobody ever connects to the unix socket; the line is free again after the wait.
            [line] = await wait_log(caplog, f"^closing {re.escape(me)}: it left")
            second, _ = await connect()
            await wait_log(caplog, r"^session from ", count=2)
            await trio.aclose_forcefully(second)
    assert line.endswith("had no client for 1s; the 17 bytes it sent are dropped"), line
    assert "refused" not in caplog.text


async def test_unix_listen_start_up_check_does_not_connect_to_a_live_listener(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "q.sock")
    remote = (await trio.open_tcp_listeners(0, host=HOST))[0]
    cfg = BridgeConfig(
        host=HOST, port=remote.socket.getsockname()[1], local=LocalSpec("unix-listen", path=path),
        reconnect=0.1,
    )  # fmt: skip
    with trio.fail_after(10):
        async with running_bridge(cfg):
            with pytest.raises(OSError, match="another process is listening on this socket"):
                await UnixListenEnd(path).start()
            # The running bridge saw no local client, so it called no remote.
            with trio.move_on_after(1) as nothing:
                await remote.accept()
            assert nothing.cancelled_caught
