"""Local bytes held while no remote session is up: how old they may get (--hold-max), and
the pty's default (a console's keystrokes typed while the VM was down must not run in the
next boot; an explicit --when-disconnected block still keeps every byte)."""

from __future__ import annotations

import functools
import logging
import math
import subprocess
import sys
from typing import Any

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.cli import build_parser
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.holding import (
    DEFAULT_PTY_HOLD_MAX,
    HeldBytes,
    check_hold_max,
    dropped_line,
    hold_limit,
)
from tests.support.bridges import cli_config, log_lines, running_bridge, wait_log
from tests.support.net import HOST, free_port
from tests.support.procs import ENV
from tests.support.streams import open_pty, read_until

# -- the decisions, without I/O ----------------------------------------------------------------


def test_a_pty_holds_for_two_seconds_unless_told_and_explicit_block_holds_without_limit() -> None:
    assert DEFAULT_PTY_HOLD_MAX == 2.0
    assert hold_limit("pty", None, None) == 2.0
    assert hold_limit("pty", "block", None) is None  # today's behaviour, for data channels
    assert hold_limit("pty", "block", 5.0) == 5.0
    assert hold_limit("pty", None, 0.5) == 0.5
    for kind in ("tty", "stdio", "unix", "tcp-listen"):
        assert hold_limit(kind, None, None) is None
    assert hold_limit("tty", None, 3.0) == 3.0


def test_hold_max_that_cannot_apply_is_refused_naming_the_options() -> None:
    check_hold_max("pty", "block", 1.0)
    check_hold_max("stdio", None, 1.0)
    check_hold_max("unix", None, None)
    cases = [
        ("pty", None, 0.0, "--hold-max must be a number of seconds greater than 0, not 0.0"),
        ("pty", None, math.inf, "--hold-max must be a number of seconds greater than 0"),
        ("pty", None, math.nan, "--hold-max must be a number of seconds greater than 0"),
        ("pty", "drop", 1.0, "--hold-max applies to held bytes; --when-disconnected drop"),
        ("unix", None, 1.0, "--hold-max applies to a pty, tty or stdio local end; a unix"),
    ]
    for kind, when, seconds, words in cases:
        with pytest.raises(ValueError) as caught:
            check_hold_max(kind, when, seconds)
        assert str(caught.value).startswith(words), caught.value
    with pytest.raises(ValueError):
        BridgeConfig(local=LocalSpec("tcp", host=HOST, port=1), hold_max=1.0)


def test_held_bytes_older_than_the_limit_are_dropped_and_counted_the_rest_kept_in_order() -> None:
    held = HeldBytes(max_age=2.0, cap=100)
    held.add(b"typed-while-down\n", now=10.0)
    held.add(b"ls\n", now=11.0)
    held.add(b"fresh", now=13.5)
    assert held.next_expiry() == 12.0
    held.expire(now=12.0)  # exactly 2 s old: still kept
    assert len(held) == 25
    held.expire(now=13.6)
    assert held.take_dropped() == 20 and held.take_dropped() == 0
    assert held.room() == 95
    assert held.take() == b"fresh"
    assert len(held) == 0 and held.next_expiry() == math.inf
    assert dropped_line(20, 2.0) == (
        "dropped 20 local bytes held longer than 2s while disconnected (--hold-max)"
    )


def test_held_bytes_stop_at_their_cap() -> None:
    held = HeldBytes(max_age=1.0, cap=10)
    held.add(b"x" * 10, now=0.0)
    assert held.room() == 0
    held.expire(now=1.5)
    assert held.room() == 10 and held.take_dropped() == 10


def test_the_command_line_gives_a_pty_the_console_default_and_block_alone_no_limit() -> None:
    assert cli_config().hold_limit == 2.0
    assert cli_config("--when-disconnected", "block").hold_limit is None
    assert cli_config("--when-disconnected", "drop").hold_limit is None
    assert cli_config("--hold-max", "0.5").hold_limit == 0.5
    assert cli_config("--when-disconnected", "block", "--hold-max", "7").hold_limit == 7
    assert cli_config("--local", "unix:/run/x.sock").hold_limit is None
    help_text = build_parser().format_help()
    assert "--hold-max SECONDS" in help_text
    assert "a command typed while the VM rebooted" in " ".join(help_text.split())


# -- a real restart of the remote ----------------------------------------------------------------


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
    proc = subprocess.run(
        [sys.executable, "-m", "chardev_bridge", "--host", HOST, "--port", "1", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(words), proc.stderr


async def test_piped_stdin_held_before_the_server_is_up_still_reaches_it() -> None:
    """stdin ends at once; what it said is held, and keeps the bridge trying until a server
    listens, instead of the bridge giving up (and exiting 0) after the first refusal."""
    port = free_port()
    bridge = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chardev_bridge", "--host", HOST, "--port", str(port),
         "--local", "stdio", "--hold-max", "10", "--reconnect", "0.2", "-q"],
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
