"""The console log of a running bridge: ``--logfile-direction from-remote`` with
``--log-format lines`` keeps what the remote printed as timestamped, escaped lines;
``--logfile-max``/``--logfile-backups`` rotate at line boundaries, and ``tail -F`` follows;
SIGUSR1 reopens the file. (A disk that fails the log: faults/test_log_write_failures.py.)

Real ``chardev-bridge`` processes with a pty local end and a plain TCP remote."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import trio

from chardev_bridge.bridge.config import TrafficLogConfig
from chardev_bridge.share.consolelog import ConsoleLog
from tests.support.bridges import CONSOLE_LINE
from tests.support.net import HOST, tcp_connect
from tests.support.procs import cli_bridge
from tests.support.streams import open_pty, read_exactly, sha256

MiB = 1 << 20


def serving(log: Path, *extra: str) -> list[str]:
    """A listening plain-TCP bridge with a pty local end, logging to ``log``."""
    return ["--server", "--host", HOST, "--port", "0", "--logfile", str(log), *extra]


LINES = ["--logfile-direction", "from-remote", "--log-format", "lines"]


async def wait_for_file(path: Path, text: str, timeout: float = 10) -> str:
    """The file's text once it contains ``text``."""
    with trio.fail_after(timeout):
        while True:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            await trio.sleep(0.05)


async def test_from_remote_lines_log_has_timestamps_escapes_and_not_what_the_user_typed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "vm1.log"
    began = dt.datetime.now(dt.UTC)
    printed = b"Linux version 6.1\r\n\x1b[1mWelcome\x1b[0m\tto vm1\r\nvm1 login: "
    with trio.fail_after(30):
        async with cli_bridge(serving(log, *LINES)) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app:
                await remote.send_all(printed)
                assert await read_exactly(app, len(printed)) == printed
                await app.send_all(b"root\n")
                assert await read_exactly(remote, 5) == b"root\n"
                # The prompt has no newline: it is written after a second without one.
                text = await wait_for_file(log, "vm1 login: ")
            await remote.aclose()
    lines = text.splitlines()
    assert [CONSOLE_LINE.match(line)[2] for line in lines] == [  # type: ignore[index]
        "Linux version 6.1",
        "\\x1b[1mWelcome\\x1b[0m\tto vm1",
        "vm1 login: ",
    ]
    for line in lines:
        stamp = dt.datetime.fromisoformat(CONSOLE_LINE.match(line)[1])  # type: ignore[index]
        assert began - dt.timedelta(seconds=1) <= stamp <= dt.datetime.now(dt.UTC)
    assert "root" not in text


async def test_both_directions_are_marked_in_lines(tmp_path: Path) -> None:
    log = tmp_path / "both.log"
    args = ["--logfile-direction", "both", "--log-format", "lines"]
    with trio.fail_after(30):
        async with cli_bridge(serving(log, *args)) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app:
                await remote.send_all(b"login: \r\n")
                await read_exactly(app, 9)
                await wait_for_file(log, "< login: ")
                await app.send_all(b"root\r\n")
                await read_exactly(remote, 6)
                text = await wait_for_file(log, "> root")
            await remote.aclose()
    assert [CONSOLE_LINE.match(line)[2] for line in text.splitlines()] == [  # type: ignore[index]
        "< login: ",
        "> root",
    ]


async def test_rotation_keeps_at_most_n_backups_each_within_the_limit_at_line_boundaries(
    tmp_path: Path,
) -> None:
    log = tmp_path / "vm1.log"
    args = [*LINES, "--logfile-max", "4K", "--logfile-backups", "2"]
    printed = b"".join(b"line %05d of the boot\r\n" % i for i in range(2000))
    with trio.fail_after(30):
        async with cli_bridge(serving(log, *args)) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:
                nursery.start_soon(remote.send_all, printed)
                assert sha256(await read_exactly(app, len(printed))) == sha256(printed)
            await wait_for_file(log, "line 01999 of the boot")
            await remote.aclose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm1.log", "vm1.log.1", "vm1.log.2"]
    kept = []
    for path in (log.with_name("vm1.log.2"), log.with_name("vm1.log.1"), log):
        data = path.read_bytes()
        assert len(data) <= 4096, path
        assert data.endswith(b"\n"), path  # cut at a line boundary
        kept += [CONSOLE_LINE.match(line)[2] for line in data.decode().splitlines()]  # type: ignore[index]
    # The newest lines, in order, none missing.
    first = 2000 - len(kept)
    assert first > 0
    assert kept == [f"line {i:05d} of the boot" for i in range(first, 2000)]


async def test_after_the_file_is_moved_away_sigusr1_sends_new_lines_to_a_new_file(
    tmp_path: Path,
) -> None:
    log, moved = tmp_path / "vm1.log", tmp_path / "vm1.log-20261204"
    with trio.fail_after(30):
        async with cli_bridge(serving(log, *LINES)) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app:
                await remote.send_all(b"before rotation\n")
                await read_exactly(app, 16)
                await wait_for_file(log, "before rotation")
                log.rename(moved)  # what logrotate does
                proc.signal(signal.SIGUSR1)
                await proc.wait_for(rf"traffic log {re.escape(str(log))} reopened")
                await remote.send_all(b"after rotation\n")
                await read_exactly(app, 15)
                new = await wait_for_file(log, "after rotation")
            await remote.aclose()
            assert proc.proc.poll() is None  # SIGUSR1 did not end the bridge
    assert "before" not in new
    assert "after" not in moved.read_text()
    assert "before rotation" in moved.read_text()


def test_tail_follows_the_log_across_rotations(tmp_path: Path) -> None:
    """``tail -F`` sees every line, rotation after rotation (renames, never copies)."""
    log = tmp_path / "vm1.log"
    cfg = TrafficLogConfig(log, direction="from-remote", format="lines", max_bytes=2048, backups=1)
    console = ConsoleLog(cfg)
    tail = subprocess.Popen(
        ["tail", "-F", "-n", "+1", "-s", "0.1", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(tail.stdout or []), daemon=True)
    reader.start()
    try:
        for burst in range(5):
            # Each burst more than fills a file; tail gets time to notice each rotation.
            console.to_local(b"".join(b"burst %d line %03d\n" % (burst, i) for i in range(40)))
            console.flush()
            time.sleep(1.0)
        console.close()
        time.sleep(0.5)
    finally:
        tail.terminate()
        tail.wait(5)
        reader.join(5)
    got = [CONSOLE_LINE.match(line.rstrip("\n"))[2] for line in seen if CONSOLE_LINE.match(line)]  # type: ignore[index]
    wanted = [f"burst {b} line {i:03d}" for b in range(5) for i in range(40)]
    # Within a burst the file rotates too fast for polling to see every line of a file that
    # lived a few milliseconds; the last file of each burst is followed to the end.
    assert got[-1] == wanted[-1]
    assert got == sorted(got) and set(got) <= set(wanted)
    for burst in range(5):
        assert f"burst {burst} line 039" in got


async def test_sigusr1_reopens_the_log_without_ending_the_bridge_and_sigterm_still_ends_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "vm1.log"
    with trio.fail_after(20):
        async with cli_bridge(serving(log)) as proc:
            await proc.pty_path()
            proc.signal(signal.SIGUSR1)
            await proc.wait_for(r"SIGUSR1: reopening 1 log file")
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0


async def test_sigusr1_to_a_bridge_without_a_log_file_is_ignored() -> None:
    with trio.fail_after(20):
        async with cli_bridge(["--server", "--host", HOST, "--port", "0"]) as proc:
            await proc.pty_path()
            proc.signal(signal.SIGUSR1)
            await trio.sleep(0.3)
            assert proc.proc.poll() is None, proc.log()
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0
