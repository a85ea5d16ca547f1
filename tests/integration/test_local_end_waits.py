"""A listening bridge whose local end is not there yet or has gone quiet: what the remote sent
waits for the local end, the wait is said in words, and a remote that leaves (or never gets
a local end) frees the line for the next client in time."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge import local_wait
from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tcp_connect, tls_connect
from tests.support.streams import read_exactly, read_until


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


async def test_listening_bridge_waits_for_a_unix_local_end_that_comes_back(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    path = str(tmp_path / "qemu-serial.sock")
    cfg = BridgeConfig(
        listen=True,
        host="127.0.0.1",
        port=0,
        local=LocalSpec("unix", path=path),
        tls_creds=pki.server_dir,
    )
    got = bytearray()

    async def qemu_like_unix_server(task_status: trio.TaskStatus[None]) -> None:
        # QEMU's `-chardev socket,path=...,server=on` coming back after a restart.
        sock = trio.socket.socket(socket.AF_UNIX)
        await sock.bind(path)
        sock.listen(1)
        listener = trio.SocketListener(sock)
        task_status.started()
        stream = await listener.accept()
        got.extend(await read_exactly(stream, 12))
        await stream.send_all(b"guest reply\n")
        await stream.aclose()
        await listener.aclose()

    with trio.fail_after(20):
        async with running_bridge(cfg) as server, trio.open_nursery() as nursery:
            tcp = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            client = trio.SSLStream(
                tcp, client_context(pki.client_dir), server_hostname="localhost"
            )
            await client.send_all(b"hello guest\n")  # arrives while the socket is missing
            await trio.sleep(0.5)
            await nursery.start(qemu_like_unix_server)
            assert await read_until(client, b"guest reply\n") == b"guest reply\n"
            await client.aclose()
    assert bytes(got) == b"hello guest\n"
    assert "local end unix " + path + " not there" in caplog.text
