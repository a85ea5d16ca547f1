"""Local ends as applications see them: raw ptys and their links, ttys that vanish and come
back (a pty number is not an identity), unix sockets, and stdio."""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
import socket
import subprocess
import termios
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.sockets import UnixListenEnd
from chardev_bridge.local.termios_raw import is_raw, make_raw
from chardev_bridge.local.tty import (
    TtyEnd,
)
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, TlsServer, server_context, tcp_connect
from tests.support.procs import ENV, LINE, bridge_cmd
from tests.support.streams import open_pty, read_exactly, read_to_eof, sha256

MiB = 1 << 20


# -- ptys ------------------------------------------------------------------------------------------


@pytest.fixture
async def pty_end() -> AsyncIterator[PtyEnd]:
    """A started PtyEnd (no link), closed at the end of the test."""
    end = PtyEnd()
    await end.start()
    async with end:
        yield end


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


async def test_pty_restores_raw_mode_after_a_client_cooks_it(pty_end: PtyEnd) -> None:
    async with open_pty(pty_end.path) as app:
        fd = os.open(pty_end.path, os.O_RDWR | os.O_NOCTTY)
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ECHO | termios.ICANON
        attrs[1] |= termios.OPOST | termios.ONLCR
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        assert not is_raw(fd)
        await pty_end.send_all(b"a\n")  # checked before every write, not once a second
        assert await read_exactly(app, 2) == b"a\n"  # not "a\r\n"
        assert is_raw(fd)
        # ... and after every read.
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        await app.send_all(b"b")
        assert await read_exactly(pty_end, 1) == b"b"
        assert is_raw(fd)
        os.close(fd)


async def test_pty_remote_bytes_are_not_echoed_right_after_a_client_cooks_it(
    pty_end: PtyEnd,
) -> None:
    async with open_pty(pty_end.path) as app:
        with trio.fail_after(5):
            await pty_end.send_all(b"first")  # a write that finds the pty raw ...
            assert await read_exactly(app, 5) == b"first"
        # ... then what `stty sane` does, just before the remote's next bytes arrive.
        attrs = termios.tcgetattr(app.fileno())
        attrs[3] |= termios.ECHO | termios.ICANON
        attrs[0] |= termios.ICRNL
        termios.tcsetattr(app.fileno(), termios.TCSANOW, attrs)
        sent = b"secret\r\ncommand\r\n"
        with trio.fail_after(5):
            await pty_end.send_all(sent)
            assert await read_exactly(app, len(sent)) == sent  # no ICRNL, no line editing
        with trio.move_on_after(0.3) as nothing_echoed:
            echoed = await pty_end.receive_some()
        assert nothing_echoed.cancelled_caught, f"echoed back: {echoed!r}"


async def test_pty_counts_bytes_written_as_a_reader_drains_them(pty_end: PtyEnd) -> None:
    payload = os.urandom(200_000)  # far more than the pty holds: many partial writes
    progress: list[int] = []
    async with open_pty(pty_end.path) as app, trio.open_nursery() as nursery:

        async def slow_reader() -> None:
            got = bytearray()
            while len(got) < len(payload):
                got += await app.receive_some(8192)
                progress.append(pty_end.bytes_written)
                await trio.sleep(0.001)
            assert got == payload

        nursery.start_soon(slow_reader)
        with trio.fail_after(20):
            await pty_end.send_all(payload)
    assert pty_end.bytes_written == len(payload)
    # It grew while send_all was still running: progress is visible mid-chunk.
    assert any(0 < n < len(payload) for n in progress)


async def test_pty_hands_over_a_streaming_writer_exactly_and_a_keystroke_at_once(
    pty_end: PtyEnd,
) -> None:
    # The writer is another thread, as an application is another process: it refills the pty
    # while receive_some is taking what is there, which is where reads are batched.
    payload = os.urandom(4 * MiB)
    fd = os.open(pty_end.path, os.O_RDWR | os.O_NOCTTY)
    try:

        def write_all() -> None:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view[: 64 << 10]) :]

        got = bytearray()
        # A writer blocked on a pty nobody reads any more must not hold the test up.
        writer = partial(trio.to_thread.run_sync, write_all, abandon_on_cancel=True)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                while len(got) < len(payload):
                    chunk = await pty_end.receive_some(100_000)
                    assert 0 < len(chunk) <= 100_000
                    got += chunk
        assert sha256(got) == sha256(payload)
        # After a stream, a lone byte still comes back from the first read, on its own.
        os.write(fd, b"k")
        with trio.fail_after(1):
            assert await pty_end.receive_some(100_000) == b"k"
    finally:
        os.close(fd)


async def test_pty_writes_block_instead_of_dropping_when_unread(pty_end: PtyEnd) -> None:
    sent = 0
    with trio.move_on_after(1):
        while True:
            await pty_end.send_all(b"x" * 1024)
            sent += 1024
    assert 0 < sent < 1024 * 1024  # it blocked: back-pressure, not a growing buffer
    async with open_pty(pty_end.path) as app:
        got = await read_exactly(app, sent)
    assert got == b"x" * sent


# -- ttys that vanish and come back ----------------------------------------------------------------


async def tty_end_on_a_link(link: Path) -> tuple[TtyEnd, int]:
    """A started TtyEnd on ``link``, made a symlink to a new pty's slave; and that pty's master,
    the end its program (QEMU) holds."""
    master, slave = os.openpty()
    os.symlink(os.ttyname(slave), link)
    end = TtyEnd(str(link))
    await end.start()
    os.close(slave)  # the bridge has its own descriptor
    return end, master


async def test_tty_end_reopens_a_device_that_vanishes_and_comes_back(tmp_path: Path) -> None:
    link = tmp_path / "ttyS-vm"
    end, master = await tty_end_on_a_link(link)
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


# -- a tty's identity is its configured path ----------------------------------------------------


def _take_pty_number(
    path: str, tries: int = 100, *, raw: bool = True
) -> tuple[int | None, list[int]]:
    """Open ptys until one gets ``path`` (the kernel hands out the lowest free number);
    returns its master (None if another process got the number first) and every fd opened,
    its slave last. ``raw=False`` leaves it as a terminal window has it (echo, line editing)."""
    opened: list[int] = []
    for _ in range(tries):
        master, slave = os.openpty()
        opened += [master, slave]
        if raw:
            make_raw(slave)  # no echo: all the master reads is what someone wrote to the pty
        if os.ttyname(slave) == path:
            return master, opened
    return None, opened


async def test_pty_number_reused_by_another_process_never_receives_a_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    cfg = BridgeConfig(listen=True, host="127.0.0.1", port=0, local=LocalSpec("tty", path=path))
    opened: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            ready: BridgeReady = await nursery.start(run_bridge, cfg)
            os.close(slave)  # the bridge has its own descriptor
            remote, _ = await tcp_connect(ready.ports[0])
            await wait_log(caplog, "^session from ")
            await remote.send_all(b"VM A says hello\n")
            vm_b = trio.lowlevel.FdStream(master)
            assert await read_exactly(vm_b, 16, timeout=5) == b"VM A says hello\n"
            # VM B's QEMU exits; a new terminal window gets its pty number at once.
            await vm_b.aclose()
            new_master: int | None = None
            with trio.fail_after(5):
                while new_master is None and len(opened) < 200:
                    await trio.sleep(0.01)  # the number is free once the bridge lets go
                    new_master, more = _take_pty_number(path, tries=1)
                    opened += more
            for fd in opened:
                os.set_blocking(fd, False)
            await wait_log(caplog, "is gone")
            # VM A keeps talking; the shell in the new window prints and is typed into.
            for _ in range(10):
                try:
                    await remote.send_all(b"MESSAGE-FROM-VM-A\n")
                except trio.BrokenResourceError:
                    break
                if new_master is not None:
                    os.write(new_master, b"shell output\n")
                await trio.sleep(0.1)
            received = bytearray()
            with trio.move_on_after(2):
                while chunk := await remote.receive_some():
                    received += chunk
            if new_master is None:
                pytest.fail(f"could not get {path} again: another process took it")
            try:
                leaked = os.read(new_master, 1000)
            except BlockingIOError:
                leaked = b""
            assert leaked == b"", "the new terminal received bytes"
            await remote.aclose()
            with trio.fail_after(10):
                await wait_log(caplog, "has ended; stopping")
            nursery.cancel_scope.cancel()
        assert received == b""  # nothing from the new terminal went to the remote
    finally:
        for fd in opened:
            os.close(fd)
    assert log_lines(caplog, re.escape(f"tty {path} is gone (")) == [
        f"tty {path} is gone (hangup); a pty number is not an identity, so it is not reopened:"
        " use a stable name (a symlink you control, /dev/serial/by-id/…) or a unix socket"
        " chardev (-chardev socket,path=…,server=on,wait=off + --local unix:PATH)"
    ]
    assert not log_lines(caplog, "is back")


async def test_a_reconnecting_bridge_stops_once_its_pty_number_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    async with trio.open_nursery() as nursery:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        cfg = BridgeConfig(
            host="127.0.0.1", port=port, local=LocalSpec("tty", path=path), reconnect=0.1
        )
        codes: list[int] = []

        async def bridge() -> None:
            codes.append(await run_bridge(cfg))

        nursery.start_soon(bridge)
        with trio.fail_after(10):
            remote = await listener.accept()
            os.close(slave)
            vm = trio.lowlevel.FdStream(master)
            await vm.send_all(b"console output")
            assert await read_exactly(remote, 14) == b"console output"
            await vm.aclose()  # QEMU exits
            assert await remote.receive_some() == b""  # the line's end reaches the remote
            await remote.aclose()
            while not codes:
                await trio.sleep(0.05)
        await listener.aclose()
    assert codes == [0]
    assert log_lines(caplog, "is gone")[0].startswith(f"tty {path} is gone (hangup); a pty")
    sessions = [m for m in log_lines(caplog, "connected to") if m.startswith("connected")]
    assert len(sessions) == 1, sessions  # no reconnect: the line is over
    assert log_lines(caplog, "has ended")  # as after stdin's EOF


async def test_tty_symlink_is_followed_to_the_new_pty_it_points_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    link = tmp_path / "vm-console"
    end, master = await tty_end_on_a_link(link)
    old_path = os.readlink(link)
    opened: list[int] = []
    got: list[bytes] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    got.append(await end.receive_some())

                nursery.start_soon(reader)
                await trio.sleep(0.1)
                os.close(master)  # QEMU exits; its pty goes, the link stays behind
                await wait_log(caplog, "is gone")
                # A new terminal gets the old number: the link now leads to a stranger.
                stranger = None
                while stranger is None:
                    stranger, more = _take_pty_number(old_path, tries=1, raw=False)
                    opened += more
                    await trio.sleep(0.01)
                stranger_slave = opened[-1]
                os.set_blocking(stranger, False)
                await wait_log(caplog, "the link still points to " + old_path)
                await trio.sleep(0.5)
                # Not even opened and made raw: the stranger's terminal keeps echo and ^C.
                assert not is_raw(stranger_slave)
                # QEMU restarts with another pty, and the user points the link at it.
                master2, slave2 = os.openpty()
                opened += [master2, slave2]
                make_raw(slave2)
                new_path = os.ttyname(slave2)
                os.symlink(new_path, tmp_path / "vm-console.new")
                (tmp_path / "vm-console.new").replace(link)  # as `ln -sf` does
                os.write(master2, b"booted")
            assert got == [b"booted"]
            await end.send_all(b"login")
            assert os.read(master2, 100) == b"login"
        with pytest.raises(BlockingIOError):
            os.read(stranger, 100)  # whoever got the old number heard nothing
    finally:
        await end.aclose()
        for fd in opened:
            os.close(fd)
    assert log_lines(caplog, "is back") == [f"tty {link} is back: it now points to {new_path}"]
    assert log_lines(caplog, "still gone")[0] == (
        f"tty {link} still gone (not reopened: the link still points to {old_path}, a pty that"
        " went away and whose number another terminal may have now: it is followed once the"
        " link is made again)"
    )


def open_fds() -> int:
    gc.collect()  # a stream dropped by an earlier test must not close its fd mid-comparison
    return len(os.listdir("/proc/self/fd"))


async def test_tty_end_refuses_a_non_tty_at_start_with_an_oserror(tmp_path: Path) -> None:
    plain = tmp_path / "plain-file"
    plain.write_bytes(b"")
    for path in ("/dev/null", str(plain)):
        before = open_fds()
        with pytest.raises(OSError) as caught:  # not termios.error: the CLI reports OSErrors
            await TtyEnd(path).start()
        assert caught.value.errno == errno.ENOTTY
        assert path in str(caught.value) and "not a tty" in str(caught.value)
        assert open_fds() == before  # the opened descriptor was closed


async def test_tty_end_keeps_waiting_when_its_path_comes_back_as_a_non_tty(
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyS-vm"
    end, master = await tty_end_on_a_link(link)
    try:
        # The device goes away and the name comes back as something that is not a tty.
        os.close(master)
        link.unlink()
        os.symlink("/dev/null", link)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await end.receive_some())

            nursery.start_soon(reader)
            await trio.sleep(1.0)  # reopen attempts fail with ENOTTY (at ~0.1, 0.3, 0.7 s)
            fds = open_fds()
            await trio.sleep(1.0)  # ... and once more (~1.5 s): a leak would be one more fd
            assert open_fds() == fds
            assert not got
            master2, slave2 = os.openpty()
            make_raw(slave2)
            link.unlink()
            os.symlink(os.ttyname(slave2), link)
            os.close(slave2)
            os.write(master2, b"back")
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.05)
        assert got == [b"back"]
        with trio.fail_after(5):
            await end.send_all(b"reply")
        assert end.bytes_written == len(b"reply")
        assert os.read(master2, 100) == b"reply"
        os.close(master2)
    finally:
        await end.aclose()


# -- unix sockets, and a pty a bridge leaves behind ------------------------------------------------


async def test_unix_listen_refuses_a_socket_another_process_listens_on(tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen(1)
        inode = os.stat(path).st_ino
        end = UnixListenEnd(path)
        with pytest.raises(OSError) as caught:
            await end.start()
        await end.aclose()
        assert str(caught.value) == (
            f"--local unix-listen:{path}: {path}: another process is listening on this socket;"
            " stop it or choose another path"
        )
        assert os.stat(path).st_ino == inode  # the live listener keeps its name ...
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # ... and is still reachable
    # A socket file nobody listens on any more is stale: replaced.
    end = UnixListenEnd(path)
    await end.start()
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            with trio.fail_after(5):
                await (await end.next_stream()).aclose()  # it is ours now
    finally:
        await end.aclose()
    assert not os.path.exists(path)


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
            async with open_pty(ready[0].pty_path) as app:
                got.append(await read_exactly(app, 5))

        nursery.start_soon(late_reader)
        with trio.fail_after(10):
            code = await run_bridge(BridgeConfig(host="127.0.0.1", port=port), task_status=Ready())
        nursery.cancel_scope.cancel()
    assert code == 0
    assert got == [b"hello"]


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


# -- stdio -----------------------------------------------------------------------------------------


async def test_stdio_bridge_delivers_piped_stdin_exactly_then_close_notify_and_exits_0(
    pki: PKI,
) -> None:
    payload = os.urandom(MiB)
    server = TlsServer(server_context(pki.server_dir))  # requires a client certificate
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args = ["--host", HOST, "--port", str(server.port), "--tls-creds", str(pki.client_dir)]
            proc = await trio.lowlevel.open_process(
                bridge_cmd(*args, "--local", "stdio"),
                env=ENV,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = bytearray(), bytearray()
            try:

                async def collect(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
                    assert stream is not None
                    while chunk := await stream.receive_some():
                        into += chunk

                async def feed() -> None:
                    assert proc.stdin is not None
                    await proc.stdin.send_all(payload)
                    await proc.stdin.aclose()

                nursery.start_soon(collect, proc.stdout, out)
                nursery.start_soon(collect, proc.stderr, err)
                nursery.start_soon(feed)
                conn = await server.accept()
                assert conn.getpeercert()["subject"][-1] == (("commonName", "client.example.com"),)
                received, how = await read_to_eof(conn, timeout=20)
                await conn.aclose()  # our close_notify back ends the session
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
    log = err.decode()
    assert len(received) == len(payload) and sha256(received) == sha256(payload)
    assert how == "clean"  # TLS close_notify, not a ragged TCP close
    assert code == 0, log
    assert out == b""
    assert re.search(
        rf"{LINE}disconnected from 127\.0\.0\.1:{server.port} after [\d.]+s: {MiB} bytes sent,"
        r" 0 bytes received; remote closed$",
        log,
        re.M,
    ), log
