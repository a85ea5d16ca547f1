"""The options on every session socket: TCP keepalive (60 s idle, 10 s apart, 6 probes) and no
Nagle, checked on the socket itself and, with ``ss``, on a real bridge's."""

from __future__ import annotations

import contextlib
import re
import socket

import trio

from chardev_bridge.bridge.remote import start_session
from chardev_bridge.bridge.replay import PEER_UNREAD_MAX
from chardev_bridge.net.tcp import bytes_acknowledged
from tests.support.certs import PKI
from tests.support.net import (
    HOST,
    client_context,
    tls_connect,
)
from tests.support.peers import require_tool
from tests.support.procs import LINE, cli_bridge


async def test_session_socket_of_a_real_bridge_runs_a_keepalive_timer_of_about_60s(
    pki: PKI,
) -> None:
    ss = require_tool("ss")
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge(args) as bridge:
            port = await bridge.port()
            conn, me = await tls_connect(port, client_context(pki.client_dir))
            await bridge.wait_for(rf"{LINE}session from {re.escape(me)}: ")
            await trio.sleep(0.2)  # idle: no data in flight, so the keepalive timer is armed
            # The bridge's end of our connection: source = its port, destination = ours.
            query = f"( sport = :{port} and dport = :{me.rsplit(':', 1)[1]} )"
            result = await trio.run_process(
                [ss, "-tnoH", "state", "established", query], capture_stdout=True
            )
            await conn.aclose()
    out = result.stdout.decode()
    timer = re.search(r"timer:\(keepalive,(?:(\d+)min)?(\d+(?:\.\d+)?)sec,\d+\)", out)
    assert timer, f"no keepalive timer on the bridge's socket:\n{out}"
    seconds = 60 * int(timer.group(1) or 0) + float(timer.group(2))
    # TCP_KEEPIDLE 60 s (the kernel default would be 7200 s).
    assert 50 <= seconds <= 60, out


async def test_every_session_socket_gets_keepalive_60_10_6_and_no_nagle() -> None:
    # start_session is what both a listening and a connecting bridge run on each new TCP
    # connection (remote.py), so these are the options every session socket carries.
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    async with listeners[0] as listener:
        port = listener.socket.getsockname()[1]
        outgoing = await trio.open_tcp_stream(HOST, port)
        incoming = await listener.accept()
        async with outgoing, incoming:
            for tcp in (incoming, outgoing):
                assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
                await start_session(tcp, None, handshake_timeout=5)
                got = {
                    "SO_KEEPALIVE": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    "TCP_KEEPIDLE": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    "TCP_KEEPINTVL": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    "TCP_KEEPCNT": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    "TCP_NODELAY": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                }
                assert got == {
                    "SO_KEEPALIVE": 1,
                    "TCP_KEEPIDLE": 60,
                    "TCP_KEEPINTVL": 10,
                    "TCP_KEEPCNT": 6,
                    "TCP_NODELAY": 1,
                }


async def test_bytes_acknowledged_counts_what_the_peer_took_and_stops_where_it_stops_reading() -> (
    None
):
    with socket.create_server((HOST, 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    with a, b:
        a.sendall(b"y" * 100_000)
        got = 0
        while got < 100_000:
            got += len(b.recv(65536))
        assert bytes_acknowledged(a) == 100_000 + 1  # the SYN counts as one
        # Nobody reads now: the peer's kernel takes what its receive buffer holds, no more.
        a.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 64 << 20:
                sent += a.send(b"z" * 65536)
        await trio.sleep(0.1)
        acknowledged = bytes_acknowledged(a)
        assert acknowledged is not None
        unread = acknowledged - 100_001
        assert 0 < unread < sent and unread < PEER_UNREAD_MAX / 8, (unread, sent)
    assert bytes_acknowledged(a) is None  # closed: the kernel says nothing
