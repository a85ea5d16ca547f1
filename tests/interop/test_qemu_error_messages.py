"""What a bridge says when QEMU closes on it or rejects it: each ending one line that names
the cause, and the exit status that comes with it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.support.certs import PKI
from tests.support.net import HOST
from tests.support.peers import Qemu, qemu_tls_server_args, require_qemu
from tests.support.procs import (
    ENV,
    LINE,
    bridge_cmd,
    cli_bridge,
    exit_status,
    run_cli,
    stderr_messages,
)
from tests.support.streams import open_pty

pytestmark = pytest.mark.interop


def test_a_client_without_certificate_closed_on_by_qemu_is_told_it_sent_none(
    qemu_pki: PKI, tmp_path: Path
) -> None:
    require_qemu()
    bare = tmp_path / "ca-only"
    bare.mkdir()
    shutil.copy(qemu_pki.client_dir / "ca-cert.pem", bare)
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu:
        port = qemu.port("mon0")
        proc = run_cli("--host", HOST, "--port", str(port), "--tls-creds", str(bare), "-q")
    assert proc.returncode == 1
    assert "rejected our client certificate" not in proc.stderr
    assert stderr_messages(proc.stderr)[-1].endswith(
        "remote failed: the server closed the connection right after the handshake without a"
        " TLS alert: it probably requires a client certificate, and we sent none"
        f" ({bare} has no client-cert.pem and client-key.pem)"
    ), proc.stderr


async def test_a_reset_after_our_first_plain_bytes_suggests_the_server_expects_tls(
    qemu_pki: PKI,
) -> None:
    require_qemu()
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu, trio.fail_after(30):
        port = qemu.port("mon0")
        async with cli_bridge(["--host", HOST, "--port", str(port)]) as bridge:
            pty_path = await bridge.pty_path()
            await bridge.wait_for(rf"{LINE}connected to 127\.0\.0\.1:{port}: plain TCP$")
            app = open_pty(pty_path)
            await app.send_all(b"help\r\n")
            assert await exit_status(bridge) == 1
            await app.aclose()
    assert stderr_messages(bridge.log())[-1].endswith(
        "; remote failed: the peer reset the connection right after our first bytes, having"
        " sent nothing: it may expect TLS (a QEMU chardev with tls-creds, a bridge with"
        " --tls-creds): give --tls-creds DIR"
    ), bridge.log()


def test_piped_stdin_to_a_server_that_rejects_us_exits_1_with_its_reason_every_time(
    qemu_pki: PKI,
) -> None:
    require_qemu()
    denied = ["-object", "authz-simple,id=auth0,identity=CN=someone-else.example.com"]
    command = b'{"execute":"qmp_capabilities"}\r\n'
    with Qemu([*denied, *qemu_tls_server_args(qemu_pki.server_dir, authz="auth0")]) as qemu:
        port = qemu.port("mon0")
        args = ["--host", HOST, "--port", str(port), "--tls-creds", str(qemu_pki.client_dir)]
        # stdin's EOF and QEMU's verdict race: which one the bridge sees first varies.
        for attempt in range(20):
            proc = subprocess.run(
                bridge_cmd(*args, "--local", "stdio", "-q"),
                env=ENV,
                input=command,
                capture_output=True,
                timeout=30,
                check=False,
            )
            err = proc.stderr.decode()
            assert proc.returncode == 1, (attempt, err)
            assert "it probably rejected our client certificate" in stderr_messages(err)[-1], err


async def test_a_pty_bridge_rejected_by_qemu_ends_with_the_rejection_as_its_last_line(
    qemu_pki: PKI,
) -> None:
    require_qemu()
    denied = ["-object", "authz-simple,id=auth0,identity=CN=someone-else.example.com"]
    with Qemu([*denied, *qemu_tls_server_args(qemu_pki.server_dir, authz="auth0")]) as qemu:
        port = qemu.port("mon0")
        args = ["--host", HOST, "--port", str(port), "--tls-creds", str(qemu_pki.client_dir)]
        with trio.fail_after(30):
            async with cli_bridge([*args, "-q"]) as bridge:
                assert (await bridge.pty_path()).startswith("/dev/pts/")
                assert await exit_status(bridge) == 1
    cert = qemu_pki.client_dir / "client-cert.pem"
    [line] = stderr_messages(bridge.log())  # -q: the error alone, after the pty line on stdout
    assert re.fullmatch(
        rf"disconnected from 127\.0\.0\.1:{port} after [\d.]+s: 0 bytes sent, 0 bytes received;"
        r" remote failed: the server closed the connection right after the handshake without"
        rf" a TLS alert: it probably rejected our client certificate {re.escape(str(cert))}"
        r" \(QEMU does this when the certificate fails verification or tls-authz\)",
        line,
    ), line


def test_piped_stdin_to_qemu_that_accepts_us_still_exits_0(qemu_pki: PKI) -> None:
    require_qemu()
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu:
        port = qemu.port("mon0")
        args = ["--host", HOST, "--port", str(port), "--tls-creds", str(qemu_pki.client_dir)]
        proc = subprocess.run(
            bridge_cmd(*args, "--local", "stdio"),
            env=ENV,
            input=b'{"execute":"qmp_capabilities"}\r\n',
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b'{"QMP": {"version"')
