"""What a TLS test suite sends a listening bridge after the handshake, and what must come back.

Python's ``ssl`` cannot start a renegotiation or send a KeyUpdate, so ``openssl s_client``'s
interactive ``R`` and ``K`` commands do; a tampered record is made with the bridge's own
engine (OpenSSL underneath) by flipping a bit of its tag. Each case checks the bytes the
client receives, not just that the connection ended.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.tls.stream import TLSStream
from tests.support.bridges import capture_bridge_logs, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, client_context
from tests.support.peers import require_tool
from tests.support.procs import Peer, running_peer
from tests.support.streams import open_pty, read_until

pytestmark = pytest.mark.interop


def listening_bridge(pki: PKI, local: LocalSpec | None = None) -> BridgeConfig:
    """A TLS server bridge on a kernel-chosen loopback port, a new pty as its local end."""
    return BridgeConfig(
        listen=True,
        host=HOST,
        port=0,
        tls_creds=pki.server_dir,
        local=local or LocalSpec("pty"),
    )


async def tls_client(port: int, creds: Path, version: ssl.TLSVersion) -> TLSStream:
    """A handshaken TLS client of the bridge's own stream type: it can half-close."""
    ctx = client_context(creds)
    ctx.maximum_version = version
    tcp = await trio.open_tcp_stream(HOST, port)
    stream = TLSStream(tcp, ctx, server_side=False, server_hostname=HOST, split_last_byte=False)
    await stream.do_handshake()
    return stream


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
    async with running_bridge(listening_bridge(pki)) as ready:
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


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_tampered_record_is_answered_with_bad_record_mac_alert(
    pki: PKI, caplog: pytest.LogCaptureFixture, version: ssl.TLSVersion
) -> None:
    capture_bridge_logs(caplog)
    async with running_bridge(listening_bridge(pki)) as ready:
        client = await tls_client(ready.ports[0], pki.client_dir, version)
        engine = client._engine
        engine.write_plaintext(b"tampered", split_last=False)
        wire = bytearray(engine.data_to_send())
        wire[-1] ^= 0x01
        await client.transport.send_all(wire)
        received = bytearray()
        with trio.fail_after(5):
            while chunk := await client.transport.receive_some():
                received += chunk
        # One alert record and then the TCP close: no bare close, no close_notify after it.
        assert received, "the bridge closed without an alert"
        alert_type = 0x15 if version == ssl.TLSVersion.TLSv1_2 else 0x17
        assert received[0] == alert_type
        assert len(received) == 5 + int.from_bytes(received[3:5], "big")
        engine.receive_ciphertext(received)
        with pytest.raises(ssl.SSLError, match="ALERT_BAD_RECORD_MAC"):
            engine.read_plaintext()
        await client.aclose()
        await wait_log(caplog, r"remote failed: .*bad record mac")


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
        async with running_bridge(listening_bridge(pki, local)) as ready:
            refused = 0
            for _ in range(200):
                try:
                    client = await tls_client(
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
    cfg = replace(listening_bridge(pki), second_client="replace")
    async with running_bridge(cfg) as ready:
        ticket, reused = await trio.to_thread.run_sync(_handshake_twice, ready.ports[0], ctx)
    assert not ticket
    assert not reused
