"""A listening TLS bridge session after session: a client that reconnects the moment its
session closed is never refused, and no session is resumed (no tickets, no session ids)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import replace

import pytest
import trio

from chardev_bridge.local import LocalSpec
from tests.support.bridges import capture_bridge_logs, listening_config, running_bridge
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tlsstream_connect


async def _local_server_closing_at_eof(listener: trio.SocketListener) -> None:
    """A TCP local end that takes every connection and closes it when the bridge does."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some():
                pass

    await trio.serve_listeners(serve, [listener])


@pytest.mark.parametrize("local_kind", ["pty", "tcp"])
async def test_client_reconnecting_as_soon_as_its_session_closed_is_never_refused(
    pki: PKI, caplog: pytest.LogCaptureFixture, local_kind: str
) -> None:
    capture_bridge_logs(caplog)
    async with trio.open_nursery() as nursery:
        local = LocalSpec("pty")
        if local_kind == "tcp":
            listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
            nursery.start_soon(_local_server_closing_at_eof, listener)
            local = LocalSpec("tcp", host=HOST, port=listener.socket.getsockname()[1])
        async with running_bridge(listening_config(pki.server_dir, local=local)) as ready:
            refused = 0
            for _ in range(200):
                try:
                    client = await tlsstream_connect(
                        ready.ports[0], pki.client_dir, ssl.TLSVersion.TLSv1_3
                    )
                    await client.send_all(b"x")
                    await client.send_eof()
                    # Our close_notify ends the session; wait for the bridge's and its close.
                    with trio.fail_after(10):
                        while await client.receive_some():
                            pass
                    await client.aclose()
                except trio.BrokenResourceError:
                    refused += 1
            assert refused == 0, f"{refused} of 200 back-to-back sessions were refused"
            assert not [r for r in caplog.records if "refused" in r.getMessage()]
        nursery.cancel_scope.cancel()


def _handshake_twice(port: int, ctx: ssl.SSLContext) -> tuple[bool, bool]:
    """Two TLS 1.2 connections, the second offering the first's session; each is shut down
    cleanly, as a well-behaved client does. Returns (ticket received, session resumed)."""
    session = None
    reused = False
    for _ in range(2):
        with socket.create_connection((HOST, port)) as tcp:
            tls = ctx.wrap_socket(tcp, server_hostname=HOST, session=session)
            reused = bool(tls.session_reused)
            session = tls.session
            tls.unwrap()
    assert session is not None
    return session.has_ticket, reused


@pytest.mark.parametrize("offer_ticket", [True, False], ids=["ticket", "session-id"])
async def test_listening_bridge_resumes_no_session(pki: PKI, offer_ticket: bool) -> None:
    ctx = client_context(pki.client_dir)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if not offer_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    cfg = replace(listening_config(pki.server_dir), second_client="replace")
    async with running_bridge(cfg) as ready:
        ticket, reused = await trio.to_thread.run_sync(_handshake_twice, ready.ports[0], ctx)
    assert not ticket
    assert not reused
