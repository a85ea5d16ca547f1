"""Interop with OpenSSL's command-line peers (``openssl s_server``, ``openssl s_client``).

Both are binary-clean between their stdin/stdout and the TLS connection with ``-brief`` /
``-quiet`` (no in-band commands), so bytes are checked by hash in both directions at once.
Everything listens on 127.0.0.1 with a kernel-chosen port, found through /proc.

The ``--tls-endpoint`` cross pairings, which QEMU 7.2 does not allow on chardevs, are checked
here against real TLS peers by swapping the TCP roles with ``socat``.

Python's ``ssl`` cannot start a renegotiation or send a KeyUpdate, so ``openssl s_client``'s
interactive ``R`` and ``K`` commands do; nor can it offer TLS 1.0 alone, which
``s_client -tls1`` does against a bridge whose good session must carry on. ``openssl genpkey``
is the reference for the DH parameters ``creds init`` writes.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import BridgeReady
from chardev_bridge.qemu import pki
from tests.support.bridges import capture_bridge_logs, listening_config, running_bridge, wait_log
from tests.support.certs import PKI, subject_dn
from tests.support.hostile import guarded_session, make_zoo
from tests.support.net import HOST
from tests.support.peers import require_tool
from tests.support.procs import Peer, listening_ports, running_peer, wait_for_stderr, wait_ipv4_port
from tests.support.streams import exchange, open_pty, read_until, sha256

pytestmark = pytest.mark.interop

SIZE = 256 * 1024


def s_server_command(openssl: str, server_dir: Path) -> list[str]:
    """``openssl s_server`` on 127.0.0.1 that requires and verifies a client certificate."""
    return [
        openssl,
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-Verify",
        "1",
        "-verify_return_error",
        "-CAfile",
        str(server_dir / "ca-cert.pem"),
        "-cert",
        str(server_dir / "server-cert.pem"),
        "-key",
        str(server_dir / "server-key.pem"),
        "-brief",
    ]


def s_client_command(openssl: str, client_dir: Path, port: int) -> list[str]:
    """``openssl s_client`` with a client certificate, checking the server's IP SAN."""
    return [
        openssl,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(client_dir / "ca-cert.pem"),
        "-cert",
        str(client_dir / "client-cert.pem"),
        "-key",
        str(client_dir / "client-key.pem"),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-quiet",
    ]


async def pty_exchange_with_peer(ready: BridgeReady, peer: Peer) -> None:
    """Random bytes both ways at once between the bridge's pty and the peer's stdin/stdout."""
    assert ready.pty_path is not None
    async with open_pty(ready.pty_path) as tty:
        up, down = os.urandom(SIZE), os.urandom(SIZE)
        at_peer, at_pty = await exchange(tty, (peer.stdin, peer.stdout), up, down)
        assert sha256(at_peer) == sha256(up)
        assert sha256(at_pty) == sha256(down)


async def wait_s_server_verified_client(s_server: Peer) -> None:
    """s_server -brief reports the client certificate it required, and its verification.

    Wait for it before writing to s_server's stdin: s_server prints the report only when
    data from the socket completes its handshake, not when an early write of its own does.
    """
    await wait_for_stderr(s_server, "Verification: OK")
    report = s_server.stderr_text()
    assert "Peer certificate: " in report and "CN = client.example.com" in report, report


async def test_bridge_client_reaches_openssl_s_server_requiring_client_cert(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    openssl = require_tool("openssl")
    capture_bridge_logs(caplog)
    async with running_peer(s_server_command(openssl, pki.server_dir)) as s_server:
        port = await wait_ipv4_port(s_server)
        cfg = BridgeConfig(host="127.0.0.1", port=port, tls_creds=pki.client_dir)
        async with running_bridge(cfg) as ready:
            await wait_s_server_verified_client(s_server)
            await pty_exchange_with_peer(ready, s_server)
            dn = re.escape(subject_dn(pki.server_dir / "server-cert.pem"))
            await wait_log(
                caplog, rf"^connected to 127\.0\.0\.1:{port}: TLSv1\.3 \S+, peer certificate '{dn}'"
            )


async def test_openssl_s_client_reaches_pty_of_bridge_server(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    openssl = require_tool("openssl")
    capture_bridge_logs(caplog)
    cfg = BridgeConfig(listen=True, host="127.0.0.1", port=0, tls_creds=pki.server_dir)
    async with running_bridge(cfg) as ready:
        command = s_client_command(openssl, pki.client_dir, ready.ports[0])
        async with running_peer(command) as s_client:
            await pty_exchange_with_peer(ready, s_client)
        dn = re.escape(subject_dn(pki.client_dir / "client-cert.pem"))
        await wait_log(
            caplog, rf"^session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate '{dn}'"
        )


# -- cross pairings against real peers, TCP roles swapped by socat ---------------------------


async def test_tcp_server_bridge_as_tls_client_reaches_openssl_s_server(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    openssl = require_tool("openssl")
    socat = require_tool("socat")
    capture_bridge_logs(caplog)
    cfg = BridgeConfig(
        listen=True, host="127.0.0.1", port=0, tls_creds=pki.client_dir, tls_endpoint="client"
    )
    async with (
        running_peer(s_server_command(openssl, pki.server_dir)) as s_server,
        running_bridge(cfg) as ready,
    ):
        server_port = await wait_ipv4_port(s_server)
        # socat makes both TCP connections: to the bridge (TCP server, TLS client) and to
        # s_server (TCP server, TLS server), and relays between them.
        relay = [socat, f"TCP:127.0.0.1:{ready.ports[0]}", f"TCP:127.0.0.1:{server_port}"]
        async with running_peer(relay):
            await wait_s_server_verified_client(s_server)
            await pty_exchange_with_peer(ready, s_server)
        dn = re.escape(subject_dn(pki.server_dir / "server-cert.pem"))
        await wait_log(caplog, rf"^session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, .*'{dn}'")


async def test_tcp_client_bridge_as_tls_server_serves_openssl_s_client(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    openssl = require_tool("openssl")
    socat = require_tool("socat")
    capture_bridge_logs(caplog)
    # socat accepts both TCP connections: first the bridge's (TCP client, TLS server), then
    # s_client's (TCP client, TLS client); it opens its second port once the first is taken.
    relay = [socat, "TCP-LISTEN:0,bind=127.0.0.1", "TCP-LISTEN:0,bind=127.0.0.1"]
    async with running_peer(relay) as socat_relay:
        first = await wait_ipv4_port(socat_relay)
        cfg = BridgeConfig(
            host="127.0.0.1", port=first, tls_creds=pki.server_dir, tls_endpoint="server"
        )
        async with running_bridge(cfg) as ready:
            second = await _next_listening_port(socat_relay, first)
            command = s_client_command(openssl, pki.client_dir, second)
            async with running_peer(command) as s_client:
                await pty_exchange_with_peer(ready, s_client)
            dn = re.escape(subject_dn(pki.client_dir / "client-cert.pem"))
            await wait_log(caplog, rf"^connected to 127\.0\.0\.1:{first}: TLSv1\.3 \S+, .*'{dn}'")


async def _next_listening_port(peer: Peer, previous: int, timeout: float = 10) -> int:
    with trio.fail_after(timeout):
        while True:
            ports = [port for _, port in listening_ports(peer.process.pid) if port != previous]
            if ports:
                return ports[0]
            await trio.sleep(0.02)


# -- the DH parameters creds init writes --------------------------------------------------------


def test_dh_params_are_rfc7919_ffdhe2048_in_pkcs3() -> None:
    openssl = require_tool("openssl")
    named = subprocess.run(
        [openssl, "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048"],
        capture_output=True,
        check=True,
    ).stdout
    expected = serialization.load_pem_parameters(named).parameter_numbers()
    ours = pki.dh_params_pem()
    assert ours.startswith(b"-----BEGIN DH PARAMETERS-----\n")  # PKCS#3, what gnutls imports
    numbers = serialization.load_pem_parameters(ours).parameter_numbers()
    assert (numbers.p, numbers.g) == (expected.p, expected.g)


# -- a TLS 1.0 client while a good session is under way -----------------------------------------


async def test_openssl_s_client_tls1_is_refused_while_the_session_carries_on(
    tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    openssl = require_tool("openssl")
    zoo = make_zoo(tmp_path / "zoo")
    with trio.fail_after(30):
        async with guarded_session(zoo) as guarded:
            # SECLEVEL=0: OpenSSL 3 refuses to even offer TLS 1.0 at its default level.
            cmd = [openssl, "s_client", "-connect", f"{HOST}:{guarded.port}", "-tls1"]
            cmd += ["-cipher", "DEFAULT@SECLEVEL=0"]
            proc = await trio.run_process(
                cmd, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False
            )
            assert proc.returncode != 0
            line = (await wait_log(info_logs, r"^TLS handshake with 127\.0\.0\.1:\d+ failed"))[0]
    assert line.endswith("failed: no TLS version in common with the peer"), line


# -- what a TLS test suite sends after the handshake --------------------------------------------


def s_client_with_commands(openssl: str, creds: Path, port: int, version: str) -> list[str]:
    """``openssl s_client`` with its interactive commands on and every TLS message traced."""
    return [
        openssl, "s_client", "-connect", f"{HOST}:{port}", version,
        "-CAfile", str(creds / "ca-cert.pem"),
        "-cert", str(creds / "client-cert.pem"),
        "-key", str(creds / "client-key.pem"),
        "-msg",
    ]  # fmt: skip


async def seconds_until_output(peer: Peer, text: str, timeout: float = 5) -> float:
    """How long after now ``peer`` writes ``text`` on stdout (fails after ``timeout``)."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while text not in peer.output_text():
            await trio.sleep(0.005)
        return trio.current_time() - start
    raise AssertionError(f"no {text!r} within {timeout}s; s_client wrote:\n{peer.output_text()}")


@pytest.mark.parametrize(
    ("version", "command", "answer"),
    [
        ("-tls1_2", b"R\n", "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation"),
        ("-tls1_3", b"K\n", "<<< TLS 1.3, Handshake [length 0005], KeyUpdate"),
    ],
    ids=["renegotiation-refused", "key-update-requested"],
)
async def test_records_owed_to_a_peer_go_out_while_the_bridge_has_nothing_to_send(
    pki: PKI, caplog: pytest.LogCaptureFixture, version: str, command: bytes, answer: str
) -> None:
    openssl = require_tool("openssl")
    capture_bridge_logs(caplog)
    async with running_bridge(listening_config(pki.server_dir)) as ready:
        port = ready.ports[0]
        cmd = s_client_with_commands(openssl, pki.client_dir, port, version)
        async with running_peer(cmd, collect_stdout=True) as s_client:
            await wait_log(caplog, r"^session from ")
            await seconds_until_output(s_client, "Verify return code: 0 (ok)")
            await s_client.stdin.send_all(command)
            waited = await seconds_until_output(s_client, answer)
            # openssl s_server answers at once; so must we, not with our next write.
            assert waited < 1.0, f"answered after {waited:.2f}s"
            if version == "-tls1_3":
                # After a key update the session goes on under the new keys.
                assert ready.pty_path is not None
                async with open_pty(ready.pty_path) as tty:
                    await s_client.stdin.send_all(b"still here\n")
                    assert b"still here" in await read_until(tty, b"still here")
            else:
                # s_client gives up on the refused renegotiation; the alert said why.
                await wait_log(caplog, r"remote failed: .*handshake_failure")
