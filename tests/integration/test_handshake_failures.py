"""Failed handshakes against a listening TLS bridge: each is logged with the peer and the real
cause, the peer gets the TLS alert saying why, and a good client still gets through afterwards.

The test clients use ``trio.SSLStream`` (not the bridge's own TLS stream), so what they see is
what an independent TLS client sees.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from tests.support.bridges import capture_bridge_logs, log_lines, running_bridge, wait_log
from tests.support.certs import PKI, write_creds_dir
from tests.support.net import client_context, tcp_connect
from tests.support.procs import ENV, bridge_cmd
from tests.support.streams import exchange, open_pty, sha256


@asynccontextmanager
async def tls_server(pki: PKI, *, handshake_timeout: float = 10) -> AsyncIterator[BridgeReady]:
    """A listening TLS bridge on 127.0.0.1 with a pty local end."""
    cfg = BridgeConfig(
        listen=True,
        host="127.0.0.1",
        port=0,
        tls_creds=pki.server_dir,
        handshake_timeout=handshake_timeout,
    )
    async with running_bridge(cfg) as ready:
        yield ready


async def tls_client_outcome(port: int, ctx: ssl.SSLContext) -> tuple[str, str]:
    """Handshake, then read: the client's name in the log and the ssl reason it ended with.

    With TLS 1.3 a client finishes its handshake before the server has checked the client
    certificate, so a rejection arrives as an alert on the first read.
    """
    tcp, me = await tcp_connect(port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
    try:
        with trio.fail_after(5):
            await stream.do_handshake()
            data = await stream.receive_some()
        return me, f"read {data!r}"
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        return me, getattr(cause, "reason", None) or repr(cause)
    finally:
        await trio.aclose_forcefully(stream)


async def assert_good_client_gets_through(
    pki: PKI, ready: BridgeReady, caplog: pytest.LogCaptureFixture
) -> None:
    """A client with good credentials gets a session: bytes both ways with the pty, then a
    clean close (close_notify) that ends the session, freeing the bridge for the next one."""
    assert ready.pty_path is not None
    tcp, me = await tcp_connect(ready.ports[0])
    stream = trio.SSLStream(tcp, client_context(pki.client_dir), server_hostname="127.0.0.1")
    size = 64 * 1024
    try:
        async with open_pty(ready.pty_path) as tty:
            up, down = os.urandom(size), os.urandom(size)
            at_pty, at_client = await exchange(stream, tty, up, down)
            assert sha256(at_pty) == sha256(up)
            assert sha256(at_client) == sha256(down)
        with trio.fail_after(5):
            await stream.aclose()
    finally:
        await trio.aclose_forcefully(stream)
    peer = re.escape(me)
    await wait_log(caplog, rf"^session from {peer}: TLSv1\.3 ")
    await wait_log(
        caplog,
        rf"^disconnected from {peer} .*: {size} bytes sent, {size} bytes received; remote closed$",
    )


async def assert_closed_by_bridge(stream: trio.SocketStream, timeout: float = 5) -> None:
    """The bridge ends the connection (maybe after a TLS alert record): EOF or reset."""
    with trio.fail_after(timeout):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # a reset is a close too


def handshake_failed(peer: str, cause: str) -> str:
    """The regex of the bridge's line for a failed handshake from ``peer``."""
    return rf"^TLS handshake with {re.escape(peer)} failed: .*{cause}"


# -- certificate problems -------------------------------------------------------------------


async def test_client_from_unknown_ca_is_rejected_with_alert(
    pki: PKI, make_other_pki: Callable[[str], PKI], caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    other = make_other_pki("other")
    async with tls_server(pki) as ready:
        ctx = client_context(pki.client_dir, cert_dir=other.client_dir)
        me, reason = await tls_client_outcome(ready.ports[0], ctx)
        assert reason == "TLSV1_ALERT_UNKNOWN_CA"
        await wait_log(caplog, handshake_failed(me, r"not signed by our CA \(unknown CA\)"))
        await assert_good_client_gets_through(pki, ready, caplog)


async def test_client_without_certificate_is_rejected_with_alert(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    async with tls_server(pki) as ready:
        me, reason = await tls_client_outcome(
            ready.ports[0], client_context(pki.client_dir, with_cert=False)
        )
        assert reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        await wait_log(caplog, handshake_failed(me, "sent no client certificate"))
        await assert_good_client_gets_through(pki, ready, caplog)


async def test_client_with_expired_certificate_is_rejected_with_alert(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    now = dt.datetime.now(dt.UTC)
    expired = pki.ca.issue_cert(
        "client.example.com",
        common_name="expired.example.com",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    expired_dir = write_creds_dir(tmp_path / "expired", pki.ca, "client", expired)
    async with tls_server(pki) as ready:
        ctx = client_context(pki.client_dir, cert_dir=expired_dir)
        me, reason = await tls_client_outcome(ready.ports[0], ctx)
        assert reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
        await wait_log(caplog, handshake_failed(me, "certificate has expired"))
        await assert_good_client_gets_through(pki, ready, caplog)


async def test_bridge_client_refuses_server_with_other_name_and_exits_1(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    async with tls_server(pki) as ready:
        port = ready.ports[0]
        client = BridgeConfig(
            host="127.0.0.1",
            port=port,
            tls_creds=pki.client_dir,
            tls_hostname="wrong.example.com",
        )
        with trio.fail_after(10):
            status = await run_bridge(client)
        assert status == 1
        await wait_log(
            caplog,
            rf"^cannot connect to 127\.0\.0\.1:{port}: the peer's certificate does not match the"
            r" expected name: .*wrong\.example\.com",
        )
        # The server side hears the client's alert and says so.
        await wait_log(
            caplog,
            r"^TLS handshake with 127\.0\.0\.1:\d+ failed: the peer rejected our certificate",
        )
        await assert_good_client_gets_through(pki, ready, caplog)


async def test_cli_client_exits_nonzero_with_the_cause_on_hostname_mismatch(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    async with tls_server(pki) as ready:
        command = bridge_cmd(
            "--host=127.0.0.1",
            f"--port={ready.ports[0]}",
            f"--tls-creds={pki.client_dir}",
            "--tls-hostname=wrong.example.com",
        )
        with trio.fail_after(20):
            result = await trio.run_process(
                command, env=ENV, capture_stdout=True, capture_stderr=True, check=False
            )
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        assert "the peer's certificate does not match the expected name" in stderr, stderr
        assert "wrong.example.com" in stderr
        await assert_good_client_gets_through(pki, ready, caplog)


# -- not TLS at all ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        (b"hello bridge, this is plain text\r\n", "not TLS: plain bytes"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "not TLS: an HTTP request"),
    ],
    ids=["plain-bytes", "http-request"],
)
async def test_non_tls_bytes_are_refused_with_cause(
    pki: PKI, payload: bytes, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    async with tls_server(pki) as ready:
        tcp, me = await tcp_connect(ready.ports[0])
        try:
            await tcp.send_all(payload)
            await assert_closed_by_bridge(tcp)
        finally:
            await tcp.aclose()
        await wait_log(caplog, handshake_failed(me, cause))
        await assert_good_client_gets_through(pki, ready, caplog)


async def test_idle_connection_is_dropped_after_handshake_timeout_without_blocking_others(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    # Long enough that the good client's whole session fits in it, even on a slow machine.
    timeout = 1.0
    async with tls_server(pki, handshake_timeout=timeout) as ready:
        idle, idle_name = await tcp_connect(ready.ports[0])
        began = trio.current_time()
        dropped = rf"^dropped {re.escape(idle_name)}: no TLS handshake within {timeout:g}s"
        try:
            # While the idle connection holds a pending handshake, a good client gets through.
            await assert_good_client_gets_through(pki, ready, caplog)
            assert not any(line.startswith("dropped ") for line in log_lines(caplog))
            await assert_closed_by_bridge(idle)
            assert trio.current_time() - began >= timeout * 0.9
        finally:
            await idle.aclose()
        await wait_log(caplog, dropped)
        # The port is free for the next good client.
        await assert_good_client_gets_through(pki, ready, caplog)
