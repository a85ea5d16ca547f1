"""Signals to a real bridge process: SIGTERM and SIGINT deliver the bytes in flight, send
close_notify, remove the link and exit 0, idle or mid-session, whatever options it runs with."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from tests.support.certs import PKI
from tests.support.net import HOST, client_context, free_port, tls_connect
from tests.support.procs import ENV, LINE, bridge_cmd, cli_bridge, exit_status
from tests.support.streams import open_pty, read_to_eof, sha256

MiB = 1 << 20


async def test_sigterm_mid_transfer_delivers_in_flight_bytes_sends_close_notify_exits_0(
    pki: PKI, tmp_path: Path
) -> None:
    link = tmp_path / "console"
    logfile = tmp_path / "to-remote.log"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    args += ["--link", str(link), "--logfile", str(logfile)]
    with trio.fail_after(30):
        async with cli_bridge(args) as proc:
            pty_path = await proc.pty_path()
            port = await proc.port()
            conn, _ = await tls_connect(port, client_context(pki.client_dir))
            app = open_pty(pty_path)
            written = 0

            async def write_forever() -> None:
                nonlocal written
                try:
                    while True:
                        await app.send_all(os.urandom(64 * 1024))
                        written += 64 * 1024
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return  # the bridge has gone: EIO on the pty

            async with app, trio.open_nursery() as nursery:
                nursery.start_soon(write_forever)
                received = bytearray()
                while len(received) < 2 * MiB:
                    received += await conn.receive_some()
                    await trio.sleep(0.001)  # a slowish reader: bytes are in flight
                proc.signal(signal.SIGTERM)
                rest, how = await read_to_eof(conn)
                received += rest
                nursery.cancel_scope.cancel()
            code = await trio.to_thread.run_sync(proc.wait)
    assert how == "clean"  # close_notify, not a ragged TCP close
    assert code == 0
    assert not link.exists() and not link.is_symlink()
    # Everything the bridge took from the pty (the traffic log records it as it is read)
    # reached the remote before the bridge exited.
    logged = logfile.read_bytes()
    assert len(received) == len(logged) and sha256(received) == sha256(logged)
    assert 2 * MiB <= len(received) <= written + 64 * 1024  # + a write cut short by EIO
    log = proc.log()
    assert "SIGTERM: shutting down (in-flight bytes first)" in log
    assert "bytes received; bridge shutting down" in log


async def test_sigint_stops_an_idle_listening_bridge_with_exit_0_and_removes_the_link(
    pki: PKI, tmp_path: Path
) -> None:
    link = tmp_path / "console"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge([*args, "--link", str(link)]) as bridge:
            pty_path = await bridge.pty_path()
            await bridge.port()
            assert os.readlink(link) == pty_path
            bridge.signal(signal.SIGINT)
            assert await exit_status(bridge) == 0
    assert not link.exists() and not link.is_symlink()
    assert re.search(rf"{LINE}SIGINT: shutting down \(in-flight bytes first\)$", bridge.log(), re.M)


async def size_once_stalled(path: Path, quiet: float = 0.3) -> int:
    """The size of ``path`` once it has stopped growing for ``quiet`` seconds."""
    last, since = -1, trio.current_time()
    while True:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, trio.current_time()
        elif size > 0 and trio.current_time() - since >= quiet:
            return size
        await trio.sleep(0.02)


async def test_sigint_mid_session_delivers_in_flight_bytes_then_close_notify(
    pki: PKI, tmp_path: Path
) -> None:
    link, logfile = tmp_path / "console", tmp_path / "to-remote.log"
    payload = os.urandom(8 * MiB)
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    args += ["--link", str(link), "--logfile", str(logfile)]
    with trio.fail_after(30):
        async with cli_bridge(args) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            conn, me = await tls_connect(port, client_context(pki.client_dir))
            await bridge.wait_for(rf"{LINE}session from {re.escape(me)}: ")
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:

                async def write_all() -> None:
                    try:
                        await app.send_all(payload)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return  # the bridge has gone: EIO on the pty

                nursery.start_soon(write_all)
                # We do not read yet, so the bridge stalls on us holding bytes it has taken
                # from the pty (its traffic log records each read) but not passed on.
                stalled_at = await size_once_stalled(logfile)
                bridge.signal(signal.SIGINT)
                received, how = await read_to_eof(conn, timeout=15)
                nursery.cancel_scope.cancel()
            code = await exit_status(bridge)
    taken = logfile.read_bytes()
    assert how == "clean"  # close_notify
    assert code == 0
    assert len(received) == len(taken) and sha256(received) == sha256(taken)
    assert len(received) >= stalled_at > 0 and received == payload[: len(received)]
    assert not link.exists() and not link.is_symlink()
    log = bridge.log()
    assert re.search(rf"{LINE}SIGINT: shutting down \(in-flight bytes first\)$", log, re.M)
    assert re.search(
        rf"{LINE}disconnected from {re.escape(me)} after [\d.]+s: {len(received)} bytes sent,"
        r" 0 bytes received; bridge shutting down$",
        log,
        re.M,
    ), log


async def test_a_bridge_with_every_session_option_starts_and_exits_0_on_sigterm() -> None:
    port = free_port()  # nothing listens: the bridge keeps retrying
    args = ["--host", HOST, "--port", str(port), "--reconnect", "0.2", "--reconnect-max", "0.5"]
    args += ["--handshake-timeout", "2", "--idle-timeout", "5", "--when-disconnected", "drop"]
    args += ["--when-unread", "buffer", "--scrollback", "64K", "--second-client", "replace"]
    with trio.fail_after(20):
        async with cli_bridge(args) as bridge:
            await bridge.pty_path()
            await bridge.wait_for(
                rf"{LINE}cannot connect to 127\.0\.0\.1:{port}: connection refused"
            )
            bridge.signal(signal.SIGTERM)
            assert await exit_status(bridge) == 0


def test_server_with_tls_creds_works_as_written_and_sigterm_cleans_up(
    pki: PKI, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 9000))
        except OSError:
            pytest.skip("port 9000 (the documented default) is in use on this machine")
    link = tmp_path / "console"
    proc = subprocess.Popen(
        bridge_cmd("--server", "--tls-creds", str(pki.server_dir), "--link", str(link)),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("pty: /dev/pts/")
        pty_path = line.split(": ", 1)[1].strip()
        deadline = time.monotonic() + 10
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.readlink(link) == pty_path
        with socket.create_connection(("127.0.0.1", 9000), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "listening on 127.0.0.1:9000 (TLS)" in err
    assert "SIGTERM: shutting down" in err
    assert not link.exists() and not link.is_symlink()
