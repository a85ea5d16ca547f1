"""Bad input and hostile peers against a listening TLS bridge while a session is transferring:
each gets one clear log line naming the peer and the cause, the bridge keeps serving, and the
active session's bytes arrive intact (sha256 both ways). Also a server that is not who it
should be, and a session's own peer that resets, stops reading or leaves without close_notify.

The bridge (tests/support/hostile.py) runs with ``--second-client replace`` so that every
newcomer gets as far as the TLS handshake and our policy: none of them may take the line over
from the authenticated session.
"""

from __future__ import annotations

import os
import re
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.local import LocalSpec
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.hostile import (
    HANDSHAKE_TIMEOUT,
    Guarded,
    Zoo,
    bridge_config,
    guarded_session,
    make_zoo,
)
from tests.support.net import (
    HOST,
    TlsServer,
    abort,
    client_context,
    server_context,
    tcp_connect,
    tls_connect,
)
from tests.support.streams import Flow, open_pty, read_exactly


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """A CA, its server, a good client and every kind of bad one, for the whole module."""
    return make_zoo(tmp_path_factory.mktemp("zoo"))


# -- the hostile peers --------------------------------------------------------------------------

Hostile = Callable[[int, Zoo], Awaitable[list[str]]]


def _client_hello() -> bytes:
    """The first flight of a default Python TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# An SSL 2.0 CLIENT-HELLO: 2-byte header (MSB set), type 1, version 0.2, two SSLv2 cipher
# specs (RC4-MD5, DES-CBC3-MD5), no session id, 16-byte challenge.
SSLV2_HELLO = (
    bytes([0x80, 31, 0x01, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x10])
    + bytes.fromhex("0100800700c0")
    + os.urandom(16)
)


def _tls10_only_hello() -> bytes:
    """A ClientHello offering TLS 1.0 and nothing newer (no extensions), as old stacks send."""
    body = (
        b"\x03\x01"
        + os.urandom(32)
        + b"\x00"  # no session id
        + b"\x00\x04\xc0\x13\x00\x2f"  # ECDHE-RSA-AES128-SHA, AES128-SHA
        + b"\x01\x00"  # null compression
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def sends(data: bytes, *, then_wait: bool = True) -> Hostile:
    """Connect, send ``data``, read whatever comes back until the bridge closes, close."""

    async def hostile(port: int, zoo: Zoo) -> list[str]:
        tcp, name = await tcp_connect(port)
        async with tcp:
            if data:
                await tcp.send_all(data)
            if then_wait:
                with trio.fail_after(HANDSHAKE_TIMEOUT + 5):
                    while await tcp.receive_some():
                        pass  # an alert at most
        return [name]

    return hostile


def presents(creds: str) -> Hostile:
    """A TLS client with the credentials dir ``creds`` of the zoo."""

    async def hostile(port: int, zoo: Zoo) -> list[str]:
        tcp, name = await tcp_connect(port)
        ctx = client_context(getattr(zoo, creds))
        stream = trio.SSLStream(tcp, ctx, server_hostname=HOST)
        try:
            with trio.fail_after(5):
                # TLS 1.3: our handshake completes before the server has judged our
                # certificate; its verdict comes as an alert or an EOF on the first read.
                await stream.do_handshake()
                while await stream.receive_some():
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)
        return [name]

    return hostile


async def silent(port: int, zoo: Zoo) -> list[str]:
    """Connect and say nothing (slowloris): the handshake timeout must drop us."""
    return await sends(b"")(port, zoo)


async def truncated_handshake(port: int, zoo: Zoo) -> list[str]:
    """Half a ClientHello, then a clean TCP close."""
    tcp, name = await tcp_connect(port)
    await tcp.send_all(_client_hello()[:60])
    await trio.sleep(0.05)
    await tcp.aclose()
    return [name]


async def burst_of_1000(port: int, zoo: Zoo) -> list[str]:
    """1,000 connections, 50 at a time, each closed at once (scanners, a SYN-flood of sorts)."""
    names: list[str] = []
    limit = trio.CapacityLimiter(50)

    async def one() -> None:
        async with limit:
            tcp, name = await tcp_connect(port)
            names.append(name)
            await tcp.aclose()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(one)
    return names


PEER_CAUSES: dict[str, tuple[Hostile, str]] = {
    "plain-bytes": (
        sends(b"hello? is this the console?\r\n"),
        r"^TLS handshake with {peer} failed: not TLS: plain bytes",
    ),
    "http-request": (
        sends(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        r"^TLS handshake with {peer} failed: not TLS: an HTTP request$",
    ),
    "sslv2-hello": (
        sends(SSLV2_HELLO),
        r"^TLS handshake with {peer} failed: not TLS 1.2/1.3: an SSLv2-style or unknown hello$",
    ),
    "tls1.0-only-hello": (
        sends(_tls10_only_hello()),
        r"^TLS handshake with {peer} failed: no TLS version in common with the peer$",
    ),
    "truncated-handshake": (
        truncated_handshake,
        r"^TLS handshake with {peer} failed: the peer closed the connection during the handshake$",
    ),
    "silent-slowloris": (
        silent,
        r"^dropped {peer}: no TLS handshake within 0\.5s$",
    ),
    "unknown-ca": (
        presents("unknown_ca"),
        r"^TLS handshake with {peer} failed: the peer's certificate was rejected: its"
        r" certificate is not signed by our CA \(unknown CA\)$",
    ),
    "self-signed": (
        presents("self_signed"),
        r"^TLS handshake with {peer} failed: the peer's certificate was rejected: its"
        r" certificate is self-signed and not trusted$",
    ),
    "no-client-certificate": (
        presents("no_cert"),
        r"^TLS handshake with {peer} failed: the peer sent no client certificate$",
    ),
    "expired": (
        presents("expired"),
        r"^TLS handshake with {peer} failed: the peer's certificate was rejected: its"
        r" certificate has expired$",
    ),
    "not-yet-valid": (
        presents("not_yet_valid"),
        r"^TLS handshake with {peer} failed: the peer's certificate was rejected: its"
        r" certificate is not yet valid$",
    ),
    "revoked": (
        presents("revoked"),
        r"^denied {peer}: certificate 'O=Hostile Tests,CN=good-but-revoked' serial 0x[0-9a-f]+"
        r" is revoked \(since .*/ca-crl\.pem\)$",
    ),
    "dn-not-allowed": (
        presents("intruder"),
        r"^denied {peer}: not allowed: 'O=Hostile Tests,CN=intruder' denied by the default"
        r" policy$",
    ),
    "burst-of-1000": (
        burst_of_1000,
        r"^(TLS handshake with {peer} failed: the peer (closed|reset) the connection"
        r"|refused {peer}: 64 handshakes already in progress$)",
    ),
}


def lines_about(caplog: pytest.LogCaptureFixture, peer: str) -> list[str]:
    return log_lines(caplog, re.escape(peer) + r"(?!\d)")


@pytest.mark.parametrize("case", list(PEER_CAUSES))
async def test_hostile_peer_gets_one_log_line_and_the_session_carries_on(
    case: str, zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    hostile, cause = PEER_CAUSES[case]
    with trio.fail_after(40):
        async with guarded_session(zoo) as guarded:
            await trio.sleep(0.1)
            peers = await hostile(guarded.port, zoo)
            for peer in peers:
                await wait_log(info_logs, re.escape(peer) + r"(?!\d)")
            await trio.sleep(0.1)  # the session keeps moving bytes meanwhile
            assert guarded.up.received > 0 and guarded.down.received > 0
            # The good session was never ended or replaced.
            assert not log_lines(info_logs, "replaces the session|^disconnected from")
            assert log_lines(info_logs, "^session from ") == [
                log_lines(info_logs, "^session from " + re.escape(guarded.name))[0]
            ]
    for peer in peers:
        lines = lines_about(info_logs, peer)
        assert len(lines) == 1, lines
        assert re.search(cause.format(peer=re.escape(peer)), lines[0]), lines[0]


# -- the bridge as a TLS client: the server is not who it should be ---------------------------


async def test_connecting_bridge_refuses_a_server_certificate_for_another_name(
    zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    server = TlsServer(server_context(zoo.wrong_name_server, ask_client_cert=False))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)

        async def handshake_fails() -> None:
            tcp = await server.next_tcp()
            stream = trio.SSLStream(tcp, server.ctx, server_side=True)
            with pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
            await trio.aclose_forcefully(stream)

        nursery.start_soon(handshake_fails)
        cfg = BridgeConfig(host=HOST, port=server.port, local=LocalSpec("pty"), tls_creds=zoo.good)
        with trio.fail_after(10):
            code = await run_bridge(cfg)
        nursery.cancel_scope.cancel()
    assert code == 1
    assert log_lines(info_logs, "^cannot connect") == [
        f"cannot connect to 127.0.0.1:{server.port}: the peer's certificate does not match the"
        " expected name: IP address mismatch, certificate is not valid for '127.0.0.1'; if it"
        " names this server otherwise (e.g. localhost for 127.0.0.1), give that name with"
        " --tls-hostname NAME (`creds check` on its directory lists its names)"
    ]


# -- the session's own peer misbehaves --------------------------------------------------------


async def _new_session_works(guarded: Guarded, zoo: Zoo) -> str:
    """A new client gets the same pty and an intact transfer both ways."""
    conn, name = await tls_connect(guarded.port, client_context(zoo.good))
    payload = os.urandom(512 * 1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.send_all, payload)
        assert await read_exactly(guarded.app, len(payload)) == payload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded.app.send_all, payload)
        assert await read_exactly(conn, len(payload)) == payload
    await conn.aclose()
    return name


@asynccontextmanager
async def session_then_misbehave(zoo: Zoo) -> AsyncIterator[Guarded]:
    """Like :func:`guarded_session`, but the body ends the good session its own way."""
    async with running_bridge(bridge_config(zoo)) as ready:
        assert ready.pty_path is not None
        conn, name = await tls_connect(ready.ports[0], client_context(zoo.good))
        async with open_pty(ready.pty_path) as app:
            yield Guarded(
                ready.ports[0], ready.pty_path, name, conn, app, Flow(conn, app), Flow(app, conn)
            )


async def test_peer_that_resets_mid_transfer_is_logged_and_the_line_serves_the_next(
    zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with session_then_misbehave(zoo) as guarded:
            async with trio.open_nursery() as nursery:
                # Only client -> pty here, with the application reading all along: bytes the
                # application writes around the reset would rightly go to the next session
                # (and a pty nobody reads keeps a session waiting, see test_unread_local_end.py).
                nursery.start_soon(guarded.up.receive_loop)
                with trio.move_on_after(0.5):
                    await guarded.up.send_loop()
                abort(guarded.conn.transport_stream.socket)  # RST: no FIN, no close_notify
                pattern = "^disconnected from " + re.escape(guarded.name)
                [line] = await wait_log(info_logs, pattern)
                nursery.cancel_scope.cancel()
            newcomer = await _new_session_works(guarded, zoo)
    assert re.search(r"; remote failed: the peer reset the connection$", line), line
    assert log_lines(info_logs, "^session from " + re.escape(newcomer))


async def test_peer_that_stops_reading_stalls_the_local_writer_not_the_bridge_memory(
    zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    written = 0
    payload = os.urandom(8 << 20)

    async def write_payload(app: trio.abc.SendStream) -> None:
        nonlocal written
        for start in range(0, len(payload), 64 * 1024):
            await app.send_all(payload[start : start + 64 * 1024])
            written = start + 64 * 1024

    with trio.fail_after(40):
        async with session_then_misbehave(zoo) as guarded, trio.open_nursery() as nursery:
            nursery.start_soon(write_payload, guarded.app)
            # The remote reads nothing: the bridge stops reading the pty, so the application's
            # writes block; the bytes wait in kernel buffers, not in the bridge.
            await trio.sleep(1)
            stalled_at = written
            await trio.sleep(0.5)
            # The bridge holds at most one chunk (256 KiB); kernel buffers hold the rest.
            assert written == stalled_at < 2 << 20, (written, stalled_at)
            # The other direction is independent and keeps flowing meanwhile.
            await guarded.conn.send_all(b"ping\n")
            assert await read_exactly(guarded.app, 5) == b"ping\n"
            received = await read_exactly(guarded.conn, len(payload), timeout=30)
            await guarded.conn.aclose()
    assert received == payload


async def test_peer_that_closes_without_close_notify_is_named_so_and_nothing_is_lost(
    zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with session_then_misbehave(zoo) as guarded:
            async with trio.open_nursery() as nursery:
                guarded.up.start(nursery)
                guarded.down.start(nursery)
                await trio.sleep(0.5)
                await guarded.up.finish()
                await guarded.down.finish()
                nursery.cancel_scope.cancel()
            await guarded.conn.transport_stream.aclose()  # TCP FIN, no close_notify
            [line] = await wait_log(info_logs, "^disconnected from " + re.escape(guarded.name))
            await _new_session_works(guarded, zoo)
            assert os.path.exists(guarded.pty_path)
    assert guarded.up.intact and guarded.down.intact
    assert line.endswith("; remote closed without TLS close_notify"), line
    assert f"{guarded.up.sent} bytes received" in line and f"{guarded.down.sent} bytes sent" in line


async def test_the_line_survives_it_all_in_reject_mode_too(
    zoo: Zoo, info_logs: pytest.LogCaptureFixture
) -> None:
    """With --second-client reject, newcomers are refused before any handshake, one line each."""
    cfg = bridge_config(zoo)
    cfg = BridgeConfig(**{**cfg.__dict__, "second_client": "reject"})
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            conn, name = await tls_connect(ready.ports[0], client_context(zoo.good))
            async with open_pty(ready.pty_path) as app, trio.open_nursery() as nursery:
                up, down = Flow(conn, app), Flow(app, conn)
                up.start(nursery)
                down.start(nursery)
                peers = await sends(b"GET / HTTP/1.0\r\n\r\n")(ready.ports[0], zoo)
                peers += await presents("good")(ready.ports[0], zoo)
                peers += await burst_of_1000(ready.ports[0], zoo)
                for peer in peers:
                    await wait_log(info_logs, re.escape(peer) + r"(?!\d)")
                await up.finish()
                await down.finish()
                nursery.cancel_scope.cancel()
            await conn.aclose()
    assert up.intact and down.intact
    for peer in peers:
        [line] = lines_about(info_logs, peer)
        assert line == f"refused {peer}: a session with {name} is active (--second-client reject)"
