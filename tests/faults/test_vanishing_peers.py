"""Peers that vanish mid-session: a remote that dies (RST) or a far bridge that is SIGKILLed and
restarted, a local reader that goes away. The line is freed, nothing held is lost or repeated,
the bridge says why."""

from __future__ import annotations

import os
import re
import select
import subprocess
from pathlib import Path

import pytest
import trio

from tests.support.bridges import listening_config, log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, abort, client_context, free_port, tls_connect
from tests.support.procs import ENV, CliBridge, bridge_cmd, cli_bridge
from tests.support.streams import open_pty, poll_flags, read_until, sha256

MiB = 1 << 20


# When the remote dies, the remote->pty pump may be holding a chunk it cannot write to an
# unread pty. The session must end all the same: if it waited for that pump to deliver what
# arrived, the dead peer would keep the line (every new client refused as "a session ... is
# active") and --idle-timeout could not end it.
async def test_a_dead_remote_does_not_hold_the_line_while_the_pty_is_unread(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        # The idle timeout leaves the dead client time to hand its bytes to the kernel even on
        # a loaded machine; the line must be free again soon after it.
        async with running_bridge(listening_config(pki.server_dir, idle_timeout=2.0)) as ready:
            assert ready.pty_path is not None
            ctx = client_context(pki.client_dir)
            dead, dead_name = await tls_connect(ready.ports[0], ctx)
            await dead.send_all(os.urandom(64 * 1024))  # more than an unread pty holds
            await trio.sleep(0.3)
            abort(dead.transport_stream.socket)  # the remote is gone for good (RST)
            await trio.sleep(4.5)  # > --idle-timeout + its 1 s check interval
            try:
                new, new_name = await tls_connect(ready.ports[0], ctx)
            except trio.BrokenResourceError:
                pytest.fail(f"the next client was refused: {log_lines(info_logs, '^refused')}")
            await new.send_all(b"the next client\n")
            await wait_log(info_logs, "^session from " + re.escape(new_name))
            async with open_pty(ready.pty_path) as app:
                got = await read_until(app, b"the next client\n")
            await new.aclose()
    assert got.endswith(b"the next client\n")
    assert log_lines(info_logs, "^disconnected from " + re.escape(dead_name))


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
    argv = bridge_cmd(
        "--host", HOST, "--port", str(listener.socket.getsockname()[1]),
        "--local", "stdio", "--when-unread", "buffer",
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatty_server)
        with trio.fail_after(20):
            proc = await trio.lowlevel.open_process(
                argv, env=ENV, stdin=subprocess.PIPE, stdout=write_end, stderr=subprocess.PIPE
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


class CountedWriter:
    """Writes to a non-blocking fd, counting exactly the bytes the kernel took (a cancelled
    ``FdStream.send_all`` does not say how much of its buffer went out)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            self.written += n
            view = view[n:]
        await trio.lowlevel.checkpoint()


async def test_far_bridge_sigkilled_mid_transfer_and_restarted_loses_nothing_after_reconnect(
    creds_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    link = tmp_path / "console"
    serving = ["--server", "--host", HOST, "--port", str(port)]
    serving += ["--tls-creds", str(creds_root / "server")]
    client_args = ["--host", HOST, "--port", str(port), "--tls-creds", str(creds_root / "client")]
    client_args += ["--reconnect", "0.2", "--reconnect-max", "1", "--link", str(link)]
    before = os.urandom(32 * MiB)  # being written when the far bridge dies
    during = os.urandom(1 * MiB)  # written while it is down: waits in the pty (block mode)
    after = os.urandom(4 * MiB)  # written once the session is back
    marker = os.urandom(32)
    server: CliBridge | None = None
    with trio.fail_after(60):
        try:
            server = CliBridge(serving, name="server")
            server_pty = await server.pty_path()
            async with cli_bridge(client_args, name="client") as client:
                client_pty = await client.pty_path()
                await client.wait_for(rf"connected to 127\.0\.0\.1:{port}: TLSv1\.3")
                near = open_pty(client_pty)
                far = open_pty(server_pty)
                writer = CountedWriter(near.fileno())
                arrived = bytearray()
                async with near, trio.open_nursery() as outer:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer.write, before)
                        while len(arrived) < 2 * MiB:
                            arrived += await far.receive_some()
                        server.kill()  # SIGKILL mid-transfer
                        nursery.cancel_scope.cancel()
                    await far.aclose()
                    await client.wait_for(r"disconnected from 127\.0\.0\.1")
                    # The pty application sees nothing of it: no hangup, same path, same link,
                    # and it can keep writing (its writes block once the pty is full).
                    assert not poll_flags(near) & (select.POLLHUP | select.POLLERR)
                    reconnected = trio.Event()

                    async def write_on() -> None:
                        await near.send_all(during)
                        await reconnected.wait()
                        await near.send_all(after + marker)

                    outer.start_soon(write_on)
                    await trio.sleep(0.5)  # a few refused reconnects
                    server = CliBridge(serving, name="server again")
                    server_pty = await server.pty_path()
                    await client.wait_for(rf"connected to 127\.0\.0\.1:{port}: TLS", skip=1)
                    reconnected.set()
                    assert os.readlink(link) == client_pty
                    async with open_pty(server_pty) as far:
                        resumed = await read_until(far, marker, timeout=30)
                        await far.send_all(b"pong\n")
                        assert await read_until(near, b"pong\n") == b"pong\n"
        finally:
            if server is not None:
                server.close()
    # What was written while the far side was down, then after it came back, arrived whole
    # and in order...
    tail = resumed[-len(during + after + marker) :]
    assert sha256(tail) == sha256(during + after + marker)
    # ...after whatever the client bridge still held from before the kill (its carry): the
    # end of what had been written, nothing repeated out of order, nothing invented.
    leftover = resumed[: -len(during + after + marker)]
    assert before[: writer.written].endswith(leftover)
    assert before.startswith(arrived)
    log = client.log()
    assert log.count("local end: pty") == 1
    assert "cannot connect to 127.0.0.1" in log
