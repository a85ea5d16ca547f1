"""The command line: option contract, start-up errors, signals, as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from chardev_bridge.cli import build_parser, config_from_args
from chardev_bridge.local import LocalSpec, parse_local_spec
from tests.support.certs import PKI
from tests.support.net import free_port
from tests.support.procs import ENV, bridge_cmd


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


def test_missing_credential_file_fails_at_start_naming_it(pki: PKI) -> None:
    (pki.server_dir / "server-key.pem").unlink()
    proc = subprocess.run(
        bridge_cmd("--server", "--port", "0", "--tls-creds", str(pki.server_dir)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert (
        f"Unable to access credentials {pki.server_dir}/server-key.pem: No such file or directory"
        in proc.stderr
    )


def test_connecting_bridge_without_reconnect_exits_nonzero_with_cause(pki: PKI) -> None:
    port = free_port()
    proc = subprocess.run(
        bridge_cmd("--host", "127.0.0.1", "--port", str(port), "--tls-creds", str(pki.client_dir)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}:" in proc.stderr
    assert "refused" in proc.stderr.lower()


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
