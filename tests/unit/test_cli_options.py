"""The command line parsed into a configuration: the QEMU roles' defaults, local end specs, the
session and traffic log options, and the bad values argparse refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from chardev_bridge.bridge.config import TrafficLogConfig
from chardev_bridge.bridge.options import build_parser, config_from_args
from chardev_bridge.local import LocalSpec, parse_local_spec
from tests.support.bridges import cli_config

MiB = 1 << 20


def test_defaults_follow_qemu_server_and_client_roles() -> None:
    cfg = config_from_args(build_parser().parse_args(["--server", "--tls-creds", "d"]))
    assert (cfg.listen, cfg.host, cfg.port, cfg.endpoint) == (True, "localhost", 9000, "server")
    assert cfg.local == LocalSpec("pty") and cfg.verify_peer
    cfg = config_from_args(build_parser().parse_args(["--host", "::1", "--port", "5"]))
    assert (cfg.listen, cfg.host, cfg.port, cfg.endpoint) == (False, "::1", 5, "client")


def test_tls_endpoint_can_differ_from_tcp_role() -> None:
    args = ["--server", "--tls-endpoint", "client", "--no-verify-peer", "--tls-hostname", "vm"]
    cfg = config_from_args(build_parser().parse_args(args))
    assert cfg.listen and cfg.endpoint == "client" and not cfg.verify_peer
    assert cfg.tls_hostname == "vm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pty", LocalSpec("pty")),
        ("stdio", LocalSpec("stdio")),
        ("tty:/dev/pts/7", LocalSpec("tty", path="/dev/pts/7")),
        ("unix:/run/qemu.sock", LocalSpec("unix", path="/run/qemu.sock")),
        ("unix-listen:/tmp/x", LocalSpec("unix-listen", path="/tmp/x")),
        ("tcp:localhost:4000", LocalSpec("tcp", host="localhost", port=4000)),
        ("tcp-listen:[::1]:0", LocalSpec("tcp-listen", host="::1", port=0)),
        ("tcp-listen:0.0.0.0:23", LocalSpec("tcp-listen", host="0.0.0.0", port=23)),
    ],
)
def test_parses_every_local_spec(text: str, expected: LocalSpec) -> None:
    assert parse_local_spec(text) == expected
    assert parse_local_spec(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("serial", "unknown local end"),
        ("tcp:4000", "expected HOST:PORT"),
        ("tcp:::1:4000", "brackets"),
        ("tcp:host:99999", "0 to 65535"),
        ("tcp:host:0", "port 0"),
        ("unix:", "expected unix:PATH"),
        ("pty:/dev/x", "takes no argument"),
    ],
)
def test_rejects_bad_local_spec_with_reason(
    text: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--local", text])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_cli_traffic_log_options() -> None:
    args = ["--logfile", "f.log", "--logappend", "--logfile-direction", "both"]
    cfg = config_from_args(build_parser().parse_args([*args, "--log-format", "hex"]))
    assert cfg.traffic_log == TrafficLogConfig(Path("f.log"), True, "both", "hex")
    cfg = config_from_args(build_parser().parse_args(["--logfile", "f.log"]))
    assert cfg.traffic_log == TrafficLogConfig(Path("f.log"), False, "to-remote", "raw")
    assert config_from_args(build_parser().parse_args([])).traffic_log is None


def test_session_and_reconnect_options_have_their_documented_defaults() -> None:
    cfg = cli_config()
    assert cfg.handshake_timeout == 10
    assert cfg.reconnect_max == 30
    assert cfg.reconnect is None and cfg.idle_timeout is None
    assert (cfg.when_unread, cfg.second_client) == ("block", "reject")
    # Local bytes while disconnected: the local end's default (a pty holds them up to 2 s).
    assert cfg.when_disconnected is None and cfg.hold_max is None and cfg.hold_limit == 2.0
    assert cfg.scrollback == MiB
    assert cfg.tls_username is None


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--when-disconnected", "drop"], "when_disconnected", "drop"),
        (["--when-disconnected", "block"], "when_disconnected", "block"),
        (["--when-unread", "buffer"], "when_unread", "buffer"),
        (["--scrollback", "64K"], "scrollback", 64 * 1024),
        (["--scrollback", "1M"], "scrollback", MiB),
        (["--scrollback", "4096"], "scrollback", 4096),
        (["--second-client", "replace"], "second_client", "replace"),
        (["--idle-timeout", "2.5"], "idle_timeout", 2.5),
        (["--handshake-timeout", "3"], "handshake_timeout", 3.0),
        (["--reconnect", "0.5"], "reconnect", 0.5),
        (["--reconnect-max", "120"], "reconnect_max", 120.0),
        (["--tls-username", "ops"], "tls_username", "ops"),
    ],
)
def test_session_option_is_parsed_into_the_config(
    argv: list[str], field: str, value: object
) -> None:
    assert getattr(cli_config(*argv), field) == value
