"""SIGTERM and SIGINT: in-flight bytes first, close_notify, exit 0, links removed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tls_connect
from tests.support.procs import cli_bridge
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
