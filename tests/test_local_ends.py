"""Local ends as applications see them: raw ptys, links, ttys that vanish and come back."""

from __future__ import annotations

import os
import termios
from functools import partial
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge import BridgeReady, run_bridge
from chardev_bridge.config import BridgeConfig
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.termios_raw import is_raw, make_raw
from chardev_bridge.local.tty import TtyEnd
from tests.bridges import open_pty_client, read_exactly


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
