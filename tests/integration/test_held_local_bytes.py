"""Local bytes while no remote session is up, with a real remote that goes away and comes back:
the pty and its link outlive every session, --when-disconnected block keeps every byte,
drop discards and counts them, and --hold-max (by default 2 s for a pty) drops keystrokes
that would otherwise run in the next boot."""

from __future__ import annotations

import functools
import logging
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.local import LocalSpec
from tests.support.bridges import connecting_config, log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, TlsServer, free_port, server_context
from tests.support.procs import ENV, bridge_cmd, run_cli
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


# When a session starts, the task that discards local bytes between sessions is cancelled, and
# it leaves receive_some() only when trio next runs it; the session's pump may read the pty
# first (trio picks either order). Two readers at once would be a BusyResourceError that ends
# the bridge. Ten sessions make both orders all but certain to occur (2**-10 to miss one).
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


async def _type_while_the_remote_is_down(
    caplog: pytest.LogCaptureFixture, wait: float, **cfg: Any
) -> bytes:
    """A connecting bridge with a pty; the remote (a plain TCP server on a fixed port) goes
    away, ``typed-while-down`` is typed, ``wait`` seconds pass, ``fresh`` is typed and the
    remote comes back. Returns what the new remote session receives up to ``end``."""
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    port = free_port()
    config = BridgeConfig(host=HOST, port=port, local=LocalSpec("pty"), reconnect=0.2, **cfg)
    with trio.fail_after(30):
        async with running_bridge(config) as ready:
            assert ready.pty_path is not None
            async with open_pty(ready.pty_path) as console:
                listener = (await trio.open_tcp_listeners(port, host=HOST))[0]
                vm = await listener.accept()
                await console.send_all(b"before\n")
                assert await read_until(vm, b"before\n") == b"before\n"
                # The VM goes down: its chardev stops listening and the session ends.
                await listener.aclose()
                await vm.aclose()
                await wait_log(caplog, r"^disconnected from")
                await console.send_all(b"typed-while-down\n")
                await trio.sleep(wait)
                await console.send_all(b"fresh\n")
                # The VM is back (a new QEMU on the same port).
                listener = (await trio.open_tcp_listeners(port, host=HOST))[0]
                vm = await listener.accept()
                await console.send_all(b"end\n")
                got = await read_until(vm, b"end\n")
                await vm.aclose()
                await listener.aclose()
    return got


async def test_keystrokes_typed_while_the_remote_was_down_longer_than_hold_max_never_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got = await _type_while_the_remote_is_down(caplog, wait=1.0, hold_max=0.5)
    assert got == b"fresh\nend\n"  # younger than --hold-max: still delivered
    assert log_lines(caplog, "held longer") == [
        "dropped 17 local bytes held longer than 0.5s while disconnected (--hold-max)"
    ]


async def test_a_pty_by_default_drops_keystrokes_held_longer_than_two_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got = await _type_while_the_remote_is_down(caplog, wait=2.5)
    assert got == b"fresh\nend\n"
    assert log_lines(caplog, "held longer") == [
        "dropped 17 local bytes held longer than 2s while disconnected (--hold-max)"
    ]


async def test_explicit_block_without_hold_max_still_delivers_every_held_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got = await _type_while_the_remote_is_down(caplog, wait=2.5, when_disconnected="block")
    assert got == b"typed-while-down\nfresh\nend\n"
    assert not log_lines(caplog, "held longer")


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        (
            ["--hold-max", "0"],
            2,
            "error: argument --hold-max: must be greater than 0, not 0 (see chardev-bridge --help)",
        ),
        (
            ["--hold-max", "1", "--when-disconnected", "drop"],
            2,
            "--hold-max applies to held bytes; --when-disconnected drop holds none"
            " (see chardev-bridge --help)",
        ),
        (
            ["--hold-max", "1", "--local", "unix:/nonexistent.sock"],
            2,
            "--hold-max applies to a pty, tty or stdio local end; a unix local end is opened"
            " per session and holds nothing between sessions (see chardev-bridge --help)",
        ),
    ],
)
def test_a_hold_max_that_cannot_apply_is_one_error_line_at_start(
    argv: list[str], status: int, words: str
) -> None:
    proc = run_cli("--host", HOST, "--port", "1", *argv)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(words), proc.stderr


async def test_piped_stdin_held_before_the_server_is_up_still_reaches_it() -> None:
    """stdin ends at once; what it said is held, and keeps the bridge trying until a server
    listens, instead of the bridge giving up (and exiting 0) after the first refusal."""
    port = free_port()
    bridge = await trio.lowlevel.open_process(
        bridge_cmd("--host", HOST, "--port", str(port),
         "--local", "stdio", "--hold-max", "10", "--reconnect", "0.2", "-q"),
        env=ENV, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    assert bridge.stdin is not None
    try:
        await bridge.stdin.send_all(b"typed before the server was up\n")
        await bridge.stdin.aclose()
        await trio.sleep(0.8)  # refused a few times meanwhile
        listener = (await trio.open_tcp_listeners(port, host=HOST))[0]
        with trio.fail_after(10):
            server = await listener.accept()
            got = await read_until(server, b"\n")
            assert got == b"typed before the server was up\n"
            await server.aclose()
            assert await bridge.wait() == 0
        await listener.aclose()
    finally:
        bridge.kill()


async def test_bytes_held_when_the_bridge_stops_are_counted_in_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    cfg = BridgeConfig(
        host=HOST, port=free_port(), local=LocalSpec("pty"), reconnect=0.2, hold_max=30
    )
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(functools.partial(run_bridge, cfg, shutdown=shutdown))
            async with open_pty(ready.pty_path) as app:
                await app.send_all(b"typed while down\n")
                await trio.sleep(0.5)  # read by the bridge, held: nothing listens
                shutdown.set()
    assert log_lines(caplog, "^17 local bytes read from pty /dev/pts/\\d+ were never sent")
