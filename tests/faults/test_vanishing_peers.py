"""Peers that vanish mid-session: the line is freed, nothing held is lost, the bridge says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import trio

from tests.support.bridges import listening_config, log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, abort, client_context, tls_connect
from tests.support.streams import open_pty, read_until


# src bug (reported): the remote->pty pump holds a chunk it could not write to an unread pty;
# when the remote dies meanwhile the session never ends (Session._fail keeps that pump
# running "to deliver what arrived", and drain() only stops reads), so the dead peer keeps
# the line: every new client is refused as "a session ... is active" and --idle-timeout
# cannot end it. Deterministic.
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
