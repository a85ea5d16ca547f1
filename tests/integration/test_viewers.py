"""Read-only viewers (``--viewers``): a real ``chardev-bridge`` process with a real pty (or
socket, or stdio) local end, a plain TCP remote, and viewers on the viewer socket.

Viewers get the replay then the live output of the remote, never the local end's bytes; what
they type is thrown away and counted; the socket's mode and its removal at exit. (Viewers that
stop reading: faults/test_resource_limits.py.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.share.config import ViewersConfig
from tests.support.bridges import attach_viewer, running_bridge
from tests.support.net import HOST, free_port, tcp_connect
from tests.support.procs import ENV, bridge_cmd, cli_bridge, run_cli
from tests.support.streams import assert_silent, open_pty, read_exactly, read_to_eof, sha256

MiB = 1 << 20


def serving(viewers: str, *extra: str) -> list[str]:
    """A listening plain-TCP bridge with a pty local end and ``--viewers viewers``."""
    return ["--server", "--host", HOST, "--port", "0", "--viewers", viewers, *extra]


async def test_two_viewers_get_the_replay_then_the_live_output_and_never_the_local_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "console.sock"
    history, live = os.urandom(3000), os.urandom(300_000)
    typed = b"root\npassword\n"
    with trio.fail_after(60):
        async with cli_bridge(serving(f"unix-listen:{path}", "--replay", "1K")) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app:
                await remote.send_all(history)
                assert sha256(await read_exactly(app, len(history))) == sha256(history)
                one = await attach_viewer(path)
                await proc.wait_for(
                    rf"viewer 1 attached from {re.escape(str(path))} .*\(1 watching\)"
                )
                two = await attach_viewer(path)
                await proc.wait_for(r"viewer 2 attached from .*\(2 watching\)")
                # What the user types goes to the remote only.
                await app.send_all(typed)
                assert await read_exactly(remote, len(typed)) == typed
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(remote.send_all, live)
                    assert sha256(await read_exactly(app, len(live))) == sha256(live)
                wanted = history[-1024:] + live
                for viewer in (one, two):
                    got = await read_exactly(viewer, len(wanted))
                    assert sha256(got) == sha256(wanted)
                    await assert_silent(viewer)
                await one.aclose()
                await proc.wait_for(
                    rf"viewer 1 detached after \d+\.\ds: {len(wanted)} bytes sent,"
                    r" 0 bytes discarded \(1 watching\)"
                )
                await two.aclose()
            await remote.aclose()


async def test_what_a_viewer_types_is_discarded_counted_and_never_reaches_the_remote(
    tmp_path: Path,
) -> None:
    path = tmp_path / "console.sock"
    with trio.fail_after(30):
        async with cli_bridge(serving(f"unix-listen:{path}")) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app:
                viewer = await attach_viewer(path)
                await proc.wait_for(r"viewer 1 attached")
                await viewer.send_all(b"reboot\r\n")
                await viewer.send_all(b"x" * 100_000)
                # The viewer leaving does not make it a writer either.
                await viewer.aclose()
                await proc.wait_for(
                    r"viewer 1 detached after .*: 0 bytes sent, 100008 bytes discarded"
                )
                await app.send_all(b"uptime\n")
                assert await read_exactly(remote, 7) == b"uptime\n"
                await assert_silent(remote)
                await remote.send_all(b"up 3 days\n")
                assert await read_exactly(app, 10) == b"up 3 days\n"
            await remote.aclose()


async def test_viewer_socket_is_born_0600_takes_viewers_mode_and_is_removed_at_exit(
    tmp_path: Path,
) -> None:
    for mode, args in ((0o600, []), (0o660, ["--viewers-mode", "0660"])):
        path = tmp_path / f"console-{mode:o}.sock"
        with trio.fail_after(20):
            async with cli_bridge(serving(f"unix-listen:{path}", *args)) as proc:
                await proc.wait_for(rf"viewers may attach on {re.escape(str(path))} \(read-only")
                st = os.stat(path)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == mode
                proc.signal(signal.SIGTERM)
                assert proc.wait() == 0
        assert not path.exists()


async def test_a_connecting_bridge_with_a_socket_local_end_serves_tcp_viewers_on_loopback(
    tmp_path: Path,
) -> None:
    """Viewers work whatever the local end (here a unix socket client) and on a connecting
    bridge; a tcp-listen viewer socket given only a port binds loopback."""
    local_path = tmp_path / "local.sock"
    viewer_port = free_port()
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    remote_port = listener.socket.getsockname()[1]
    local_listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await local_listener.bind(str(local_path))
    local_listener.listen(1)
    args = ["--host", HOST, "--port", str(remote_port), "--local", f"unix:{local_path}"]
    args += ["--viewers", f"tcp-listen:{viewer_port}", "--replay", "5"]
    with trio.fail_after(30):
        async with cli_bridge(args) as proc:
            remote = await listener.accept()
            local_sock, _ = await local_listener.accept()
            local = trio.SocketStream(local_sock)
            await remote.send_all(b"hello, local\n")
            assert await read_exactly(local, 13) == b"hello, local\n"
            await proc.wait_for(rf"viewers may attach on 127\.0\.0\.1:{viewer_port} ")
            viewer = await trio.open_tcp_stream(HOST, viewer_port)
            await proc.wait_for(r"viewer 1 attached from 127\.0\.0\.1:\d+ \(1 watching\)")
            await local.send_all(b"from the local end\n")
            assert await read_exactly(remote, 19) == b"from the local end\n"
            await remote.send_all(b"live\n")
            assert await read_exactly(local, 5) == b"live\n"
            # The replay (the last 5 bytes the remote sent), then the live bytes.
            assert await read_exactly(viewer, 10) == b"ocal\nlive\n"
            await assert_silent(viewer)
            await viewer.aclose()
            await remote.aclose()
            await local.aclose()
    local_listener.close()
    await listener.aclose()


async def test_viewers_watch_a_stdio_bridge_and_never_see_its_stdin(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    port = listener.socket.getsockname()[1]
    args = ["--host", HOST, "--port", str(port), "--local", "stdio"]
    args += ["--viewers", f"unix-listen:{path}"]
    stderr = tmp_path / "stderr"
    with trio.fail_after(30), stderr.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            bridge_cmd(*args),
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            remote = await listener.accept()
            while not path.exists():
                await trio.sleep(0.02)
            viewer = await attach_viewer(path)
            while "viewer 1 attached" not in stderr.read_text():
                await trio.sleep(0.02)
            await proc.stdin.send_all(b"typed on stdin\n")
            assert await read_exactly(remote, 15) == b"typed on stdin\n"
            await remote.send_all(b"printed by the remote\n")
            assert await read_exactly(proc.stdout, 22) == b"printed by the remote\n"
            assert await read_exactly(viewer, 22) == b"printed by the remote\n"
            await assert_silent(viewer)
            await viewer.aclose()
            await remote.aclose()
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    await listener.aclose()
    assert not path.exists()


async def test_counters_for_a_status_endpoint_count_viewers_and_discarded_bytes(
    tmp_path: Path,
) -> None:
    """In process: ``BridgeReady.share`` counts attached, refused, dropped and discarded."""
    path = tmp_path / "console.sock"
    viewers = ViewersConfig("unix-listen", path=str(path), max_viewers=1, queue_max=64 * 1024)
    cfg = BridgeConfig(listen=True, host=HOST, port=0, local=LocalSpec("pty"), viewers=viewers)
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            assert ready.share is not None and ready.pty_path is not None
            remote, _ = await tcp_connect(ready.ports[0])
            async with open_pty(ready.pty_path) as app:
                stalled = await attach_viewer(path, rcvbuf=4096)
                await stalled.send_all(b"ignored")
                refused = await attach_viewer(path)
                await read_to_eof(refused)
                snap = ready.share.snapshot()
                assert (snap.viewers_attached, snap.viewers_refused) == (1, 1)
                burst = os.urandom(4 * MiB)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(remote.send_all, burst)
                    assert sha256(await read_exactly(app, len(burst))) == sha256(burst)
                while ready.share.snapshot().viewers_attached:
                    await trio.sleep(0.02)
            snap = ready.share.snapshot()
            assert snap.viewers_total == 1
            assert snap.viewers_dropped == 1
            assert snap.viewer_bytes_discarded == len(b"ignored")
            await remote.aclose()
            await stalled.aclose()
            await refused.aclose()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--replay", "1K"], "--replay needs --viewers"),
        (["--max-viewers", "4"], "--max-viewers needs --viewers"),
        (["--viewers-mode", "0660"], "--viewers-mode needs --viewers"),
        (["--logfile", "/tmp/x.log", "--logfile-backups", "3"], "--logfile-backups needs"),
    ],
)
def test_a_sharing_option_that_would_be_ignored_is_one_error_line(
    argv: list[str], words: str
) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and words in proc.stderr, proc.stderr
