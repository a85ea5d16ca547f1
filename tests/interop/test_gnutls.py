"""Interop with GnuTLS's command-line peers, the tools QEMU's documentation uses.

* ``gnutls-cli`` → bridge server (TLS server, pty local end).
* bridge client (TLS client, pty local end) → ``gnutls-serv --echo``.

``gnutls-serv`` has no option to choose its listen address: it binds every interface (IPv4 and
IPv6) on the port it is given. It is started on port 0 (the kernel's choice) and only a loopback
client (the bridge, on 127.0.0.1) talks to it, for the second or so the test lasts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from tests.support.bridges import capture_bridge_logs, running_bridge, wait_log
from tests.support.certs import PKI, subject_dn
from tests.support.peers import gnutls_cli_command, require_tool
from tests.support.procs import running_peer, wait_ipv4_port
from tests.support.streams import exchange, open_pty, read_exactly, sha256

pytestmark = pytest.mark.interop

# The bridge's log line for an established session: version, cipher, peer certificate DN.
TLS_DETAILS = r"TLSv1\.[23] \S+, peer certificate '{dn}'"


def echo_lines(size: int) -> bytes:
    """Random bytes that ``gnutls-serv --echo`` returns unchanged.

    Its echo mode answers once it has a whole line and treats the line as a C string, so:
    no NUL, newline-terminated lines (every other byte value, CR included, is fine with
    ``--crlf``).
    """
    raw = os.urandom(size).replace(b"\0", b"\1").replace(b"\n", b"\2")
    lines = [raw[i : i + 999] + b"\n" for i in range(0, len(raw), 999)]
    return b"".join(lines)


async def test_gnutls_cli_reaches_pty_of_bridge_server(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    cfg = BridgeConfig(listen=True, host="127.0.0.1", port=0, tls_creds=pki.server_dir)
    async with running_bridge(cfg) as ready:
        assert ready.pty_path is not None
        log = f"--logfile={tmp_path / 'gnutls-cli.log'}"
        command = gnutls_cli_command(pki.client_dir, ready.ports[0], log)
        async with open_pty(ready.pty_path) as tty, running_peer(command) as cli:
            # Any byte value, both ways at once: gnutls-cli is binary-clean on stdin/stdout.
            up, down = os.urandom(48 * 1024), os.urandom(48 * 1024)
            at_pty, at_cli = await exchange((cli.stdin, cli.stdout), tty, up, down)
            assert sha256(at_pty) == sha256(up)
            assert sha256(at_cli) == sha256(down)
            # End of input: gnutls-cli says goodbye, the bridge ends the session and
            # gnutls-cli exits (writing its log file).
            await cli.stdin.aclose()
            with trio.fail_after(10):
                returncode = await cli.process.wait()
            assert returncode == 0, cli.stderr_text()
        dn = re.escape(subject_dn(pki.client_dir / "client-cert.pem"))
        await wait_log(caplog, r"^session from 127\.0\.0\.1:\d+: " + TLS_DETAILS.format(dn=dn))
        # gnutls-cli ended with close_notify (unlike QEMU).
        await wait_log(
            caplog,
            r"^disconnected from 127\.0\.0\.1:\d+ .*: 49152 bytes sent, 49152 bytes received;"
            r" remote closed$",
        )
    # gnutls-cli checked the bridge's certificate against 127.0.0.1 (an IP SAN) and the CA.
    cli_log = (tmp_path / "gnutls-cli.log").read_text()
    assert "The certificate is trusted" in cli_log
    assert "Handshake was completed" in cli_log


async def test_bridge_client_reaches_gnutls_serv(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    gnutls_serv = require_tool("gnutls-serv")
    capture_bridge_logs(caplog)
    server = pki.server_dir
    command = [
        gnutls_serv,
        "--echo",
        "--crlf",
        "--require-client-cert",
        "--verify-client-cert",
        f"--x509cafile={server / 'ca-cert.pem'}",
        f"--x509certfile={server / 'server-cert.pem'}",
        f"--x509keyfile={server / 'server-key.pem'}",
        "--port=0",
    ]
    async with running_peer(command, collect_stdout=True) as serv:
        port = await wait_ipv4_port(serv)
        cfg = BridgeConfig(host="127.0.0.1", port=port, tls_creds=pki.client_dir)
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            dn = re.escape(subject_dn(server / "server-cert.pem"))
            await wait_log(
                caplog, rf"^connected to 127\.0\.0\.1:{port}: " + TLS_DETAILS.format(dn=dn)
            )
            async with open_pty(ready.pty_path) as tty:
                # Up through the bridge to gnutls-serv, and its echo back down to the pty.
                lines = echo_lines(64 * 1024)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(tty.send_all, lines)
                    echoed = await read_exactly(tty, len(lines), timeout=15)
                assert sha256(echoed) == sha256(lines)
        # gnutls-serv required and verified the bridge's client certificate.
        assert "The certificate is trusted" in serv.output_text()
