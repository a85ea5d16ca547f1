"""Local ends as applications see them: raw ptys, links, ttys that vanish and come back."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import termios
from functools import partial
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge import BridgeReady, run_bridge
from chardev_bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.termios_raw import is_raw, make_raw
from chardev_bridge.local.tty import TtyEnd
from tests.bridges import open_pty_client, read_exactly, read_until, running_bridge
from tests.conftest import PKI


async def test_pty_is_raw_and_binary_safe_both_ways(tmp_path: Path) -> None:
    end = PtyEnd(link=tmp_path / "console")
    await end.start()
    try:
        assert os.readlink(tmp_path / "console") == end.path
        every_byte = bytes(range(256))
        fd = os.open(end.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        # The application does not set raw mode itself: the bridge's settings must hold.
        app = trio.lowlevel.FdStream(fd)
        with trio.fail_after(5):
            await end.send_all(every_byte)
            assert await read_exactly(app, 256) == every_byte
            await app.send_all(every_byte)
            assert await read_exactly(end, 256) == every_byte
        await app.aclose()
    finally:
        await end.aclose()
    assert not (tmp_path / "console").is_symlink()


async def test_pty_restores_raw_mode_after_a_client_cooks_it() -> None:
    end = PtyEnd()
    await end.start()
    try:
        async with open_pty_client(end.path) as app:
            fd = os.open(end.path, os.O_RDWR | os.O_NOCTTY)
            attrs = termios.tcgetattr(fd)
            attrs[3] |= termios.ECHO | termios.ICANON
            attrs[1] |= termios.OPOST | termios.ONLCR
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            assert not is_raw(fd)
            await trio.sleep(1.1)  # the re-check interval
            await end.send_all(b"a\n")
            assert await read_exactly(app, 2) == b"a\n"  # not "a\r\n"
            assert is_raw(fd)
            os.close(fd)
    finally:
        await end.aclose()


async def test_pty_writes_block_instead_of_dropping_when_unread() -> None:
    end = PtyEnd()
    await end.start()
    try:
        sent = 0
        with trio.move_on_after(1):
            while True:
                await end.send_all(b"x" * 1024)
                sent += 1024
        assert 0 < sent < 1024 * 1024  # it blocked: back-pressure, not a growing buffer
        async with open_pty_client(end.path) as app:
            got = await read_exactly(app, sent)
        assert got == b"x" * sent
    finally:
        await end.aclose()


async def test_tty_end_reopens_a_device_that_vanishes_and_comes_back(tmp_path: Path) -> None:
    link = tmp_path / "ttyS-vm"
    master, slave = os.openpty()
    os.symlink(os.ttyname(slave), link)
    end = TtyEnd(str(link))
    await end.start()
    os.close(slave)
    try:
        os.write(master, b"first")
        with trio.fail_after(5):
            assert await end.receive_some() == b"first"
        # The device goes away (unplugged, QEMU exits): its path first, as udev removes a
        # by-id link, then the device. Another process may get the freed pts number at once.
        link.unlink()
        os.close(master)
        master2, slave2 = os.openpty()
        make_raw(slave2)

        async def comes_back() -> None:
            await trio.sleep(0.5)
            os.symlink(os.ttyname(slave2), link)
            os.close(slave2)
            os.write(master2, b"second")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(comes_back)
                assert await end.receive_some() == b"second"
        await end.send_all(b"to the new device")
        with trio.fail_after(5):
            await trio.sleep(0.1)
            assert os.read(master2, 100) == b"to the new device"
        os.close(master2)
    finally:
        await end.aclose()


async def test_tty_end_refuses_a_missing_path_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await TtyEnd(str(tmp_path / "nope")).start()


async def test_bytes_sent_just_before_the_remote_closes_reach_a_late_pty_reader() -> None:
    async def say_hello_and_leave(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")
        await stream.aclose()

    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, say_hello_and_leave, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        ready: list[BridgeReady] = []

        class Ready:
            def started(self, value: BridgeReady | None = None) -> None:
                assert value is not None
                ready.append(value)

        async def late_reader() -> None:
            await trio.sleep(0.3)  # the bridge has returned by now, and closes the pty
            assert ready[0].pty_path
            async with open_pty_client(ready[0].pty_path) as app:
                got.append(await read_exactly(app, 5))

        nursery.start_soon(late_reader)
        with trio.fail_after(10):
            code = await run_bridge(BridgeConfig(host="127.0.0.1", port=port), task_status=Ready())
        nursery.cancel_scope.cancel()
    assert code == 0
    assert got == [b"hello"]


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
            client = trio.SSLStream(tcp, client_context(pki), server_hostname="localhost")
            await client.send_all(b"hello guest\n")  # arrives while the socket is missing
            await trio.sleep(0.5)
            await nursery.start(qemu_like_unix_server)
            assert await read_until(client, b"guest reply\n") == b"guest reply\n"
            await client.aclose()
    assert bytes(got) == b"hello guest\n"
    assert "local end unix " + path + " not there" in caplog.text


def client_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.client_dir / "ca-cert.pem"))
    ctx.load_cert_chain(
        str(pki.client_dir / "client-cert.pem"), str(pki.client_dir / "client-key.pem")
    )
    return ctx
