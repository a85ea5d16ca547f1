"""Which peer a bridge trusts, run as a user runs it (``python -m chardev_bridge`` against TLS
peers written with the standard library, on 127.0.0.1 only): --no-verify-peer either way,
--tls-hostname for a certificate without the IP, and a server we must not trust named for why.

Log lines are matched whole: ``<asctime> chardev-bridge: <message>``."""

from __future__ import annotations

import datetime as dt
import re
import ssl
from pathlib import Path

import pytest
import trio

from tests.support.certs import PKI, make_pki, write_creds_dir
from tests.support.net import (
    HOST,
    TlsServer,
    client_context,
    expect_failed_handshake,
    server_context,
    tls_connect,
)
from tests.support.procs import LINE, cli_bridge, exit_status
from tests.support.streams import exchange_through_pty

MiB = 1 << 20


# -- --no-verify-peer ------------------------------------------------------------------------------


async def test_no_verify_peer_client_accepts_a_server_from_an_unknown_ca(
    pki: PKI, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path / "stranger")
    server = TlsServer(server_context(stranger.server_dir, ask_client_cert=False))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args = ["--host", HOST, "--port", str(server.port), "--tls-creds", str(pki.client_dir)]
            async with cli_bridge([*args, "--no-verify-peer"]) as bridge:
                pty_path = await bridge.pty_path()
                conn = await server.accept()
                assert await exchange_through_pty(conn, pty_path) == (True, True)
                await bridge.wait_for(
                    rf"{LINE}connected to 127\.0\.0\.1:{server.port}: TLSv1\.3 \S+, peer"
                    r" certificate '.*CN=server\.example\.com'$"
                )
                await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_no_verify_peer_server_accepts_a_client_without_a_certificate(pki: PKI) -> None:
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge([*args, "--no-verify-peer"]) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            conn, me = await tls_connect(port, client_context(pki.client_dir, with_cert=False))
            await bridge.wait_for(
                rf"{LINE}session from {re.escape(me)}: TLSv1\.3 \S+, no peer certificate$"
            )
            assert await exchange_through_pty(conn, pty_path) == (True, True)
            await conn.aclose()


# -- --tls-hostname --------------------------------------------------------------------------------


async def test_tls_hostname_lets_an_ip_connection_accept_a_dns_only_certificate(
    tmp_path: Path,
) -> None:
    dns_only = make_pki(tmp_path / "dns-only", server_names=("localhost",))
    server = TlsServer(server_context(dns_only.server_dir))
    args = ["--host", HOST, "--tls-creds", str(dns_only.client_dir)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args += ["--port", str(server.port)]
            # Control: by --host 127.0.0.1 alone the name check fails (no IP SAN).
            async with cli_bridge(args, name="without --tls-hostname") as bridge:
                await expect_failed_handshake(server)
                assert await exit_status(bridge) == 1
                await bridge.wait_for(
                    rf"{LINE}cannot connect to 127\.0\.0\.1:{server.port}: the peer's certificate"
                    r" does not match the expected name: .*127\.0\.0\.1"
                )
            async with cli_bridge([*args, "--tls-hostname", "localhost"]) as bridge:
                pty_path = await bridge.pty_path()
                conn = await server.accept()
                await bridge.wait_for(rf"{LINE}connected to 127\.0\.0\.1:{server.port}: TLSv1\.3 ")
                assert await exchange_through_pty(conn, pty_path) == (True, True)
                await conn.aclose()
            nursery.cancel_scope.cancel()


# -- a server we must not trust --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "cause"),
    [
        ("unknown-ca", "its certificate is not signed by our CA (unknown CA)"),
        ("unknown-ca-root-sent", "its certificate chain ends in a self-signed CA we do not trust"),
        ("expired", "its certificate has expired"),
    ],
)
async def test_client_bridge_names_why_it_cannot_trust_the_server_and_exits_1(
    pki: PKI, tmp_path: Path, problem: str, cause: str
) -> None:
    if problem.startswith("unknown-ca"):
        server_dir = make_pki(tmp_path / "stranger").server_dir
    else:
        now = dt.datetime.now(dt.UTC)
        expired = pki.ca.issue_cert(
            "localhost",
            "127.0.0.1",
            common_name="server.example.com",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        server_dir = write_creds_dir(tmp_path / "expired", pki.ca, "server", expired)
    if problem == "unknown-ca-root-sent":
        # An OpenSSL server with its CA in its store sends that root with its chain.
        ctx = server_context(server_dir, ask_client_cert=False)
    else:
        # Only server-cert.pem, as QEMU (gnutls) sends it.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(server_dir / "server-cert.pem", server_dir / "server-key.pem")
    server = TlsServer(ctx)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args = ["--host", HOST, "--port", str(server.port), "--tls-creds", str(pki.client_dir)]
            async with cli_bridge(args) as bridge:
                await expect_failed_handshake(server)
                assert await exit_status(bridge) == 1
                lines = [line for line in bridge.stderr if "cannot connect" in line]
            nursery.cancel_scope.cancel()
    assert len(lines) == 1, bridge.log()
    assert re.search(
        rf"{LINE}cannot connect to 127\.0\.0\.1:{server.port}: the peer's certificate was"
        rf" rejected: {re.escape(cause)}$",
        lines[0],
    ), lines[0]
