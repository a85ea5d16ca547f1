"""Local bytes while no remote session is up."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from tests.support.bridges import connecting_config, log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import TlsServer, server_context
from tests.support.streams import open_pty, poll_flags, read_exactly, read_until, sha256


async def test_pty_and_link_survive_reconnects_and_bytes_written_while_down_arrive(
    pki: PKI, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "console"
    server = TlsServer(server_context(pki.server_dir))
    offline_sent: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        # Explicit block without --hold-max: every byte is held, however long (a data channel).
        cfg = connecting_config(
            server.port, pki.client_dir, reconnect=0.05, reconnect_max=0.1, link=link
        )
        cfg = BridgeConfig(**{**cfg.__dict__, "when_disconnected": "block"})
        with trio.fail_after(30):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                path = ready.pty_path
                app = open_pty(path)
                async with app, trio.open_nursery() as writers:
                    for round_ in range(4):
                        conn = await server.accept()
                        if offline_sent:
                            # Written while no remote was there: delivered now, whole.
                            got = await read_exactly(conn, len(offline_sent[-1]))
                            assert sha256(got) == sha256(offline_sent[-1])
                        hello = f"hello {round_}\n".encode()
                        await conn.send_all(hello)
                        assert await read_until(app, hello) == hello
                        reply = f"reply {round_}\n".encode()
                        await app.send_all(reply)
                        assert await read_exactly(conn, len(reply)) == reply
                        await conn.aclose()
                        await wait_log(info_logs, "^disconnected from", count=round_ + 1)
                        # The remote is gone. The application keeps its pty open and writes
                        # more than the pty buffer holds: the writer blocks, nothing is lost.
                        offline = os.urandom(300 * 1024)
                        offline_sent.append(offline)
                        writers.start_soon(app.send_all, offline)
                        await trio.sleep(0.2)
                        revents = poll_flags(app)
                        assert not revents & (select.POLLHUP | select.POLLERR), revents
                        assert os.readlink(link) == path
                    conn = await server.accept()
                    got = await read_exactly(conn, len(offline_sent[-1]))
                    assert sha256(got) == sha256(offline_sent[-1])
                    await conn.aclose()
        nursery.cancel_scope.cancel()
    assert len(log_lines(info_logs, "^connected to 127.0.0.1")) == 5
    assert log_lines(info_logs, "^local end: ") == [f"local end: pty {path} (link {link})"]


# src bug (reported): when a session starts, Bridge._claim() cancels the task that discards
# local bytes between sessions, but that task leaves receive_some() only when trio next runs
# it; if the session's pump reads first (trio picks either order), the pty raises
# BusyResourceError and the whole bridge dies. Ten sessions make the crash near certain (the
# chance of dodging it is 2**-10), so the mark stays strict; remove it with the fix.
async def test_when_disconnected_drop_discards_and_counts_bytes_written_while_down(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    rounds = 10
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting_config(
            server.port,
            pki.client_dir,
            reconnect=0.01,
            reconnect_max=0.02,
            when_disconnected="drop",
        )
        with trio.fail_after(30):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                async with open_pty(ready.pty_path) as app:
                    for round_ in range(rounds):
                        conn = await server.accept()
                        await wait_log(info_logs, r"^connected to", count=round_ + 1)
                        online = f"online {round_}\n".encode()
                        await app.send_all(online)
                        # Nothing written while no remote was there comes before it.
                        assert await read_exactly(conn, len(online)) == online
                        await conn.aclose()
                        await wait_log(info_logs, "^disconnected from", count=round_ + 1)
                        # The writer is never blocked: the bytes go nowhere, fast.
                        with trio.fail_after(2):
                            for _ in range(10):
                                await app.send_all(b"d" * 10_000)
                        await trio.sleep(0.1)  # let the bridge discard the last of them
        nursery.cancel_scope.cancel()
    assert log_lines(info_logs, "dropped while disconnected") == [
        "100000 local bytes were dropped while disconnected"
    ] * (rounds - 1)
    assert len(log_lines(info_logs, "^no remote connected: dropping")) == rounds
