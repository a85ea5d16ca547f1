"""Local bytes held while no remote session is up, without I/O: how old they may get
(--hold-max), the pty's default (a console's keystrokes typed while the VM was down must not run
in the next boot), and an explicit --when-disconnected block that keeps every byte."""

from __future__ import annotations

import math

import pytest

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.options import build_parser
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.holding import (
    DEFAULT_PTY_HOLD_MAX,
    HeldBytes,
    check_hold_max,
    dropped_line,
    hold_limit,
)
from tests.support.bridges import cli_config
from tests.support.net import HOST


def test_a_pty_holds_for_two_seconds_unless_told_and_explicit_block_holds_without_limit() -> None:
    assert DEFAULT_PTY_HOLD_MAX == 2.0
    assert hold_limit("pty", None, None) == 2.0
    assert hold_limit("pty", "block", None) is None  # every byte, however old: data channels
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
