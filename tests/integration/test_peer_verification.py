"""The command line's documented contract, run as a user runs it: real processes
(``python -m chardev_bridge``, the console script, ``python -m chardev_bridge.demo``) against
TLS peers written with the standard library (tests/support/net.py), on 127.0.0.1 only.

Log lines are matched whole: ``<asctime> chardev-bridge: <message>``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from chardev_bridge import __version__
from chardev_bridge.bridge.remote import start_session
from chardev_bridge.bridge.slots import MAX_PENDING_HANDSHAKES
from tests.support.bridges import cli_config
from tests.support.certs import PKI, make_pki, write_creds_dir
from tests.support.net import (
    HOST,
    TlsServer,
    client_context,
    expect_failed_handshake,
    free_port,
    server_context,
    tcp_connect,
    tls_connect,
)
from tests.support.peers import require_tool
from tests.support.procs import ENV, LINE, bridge_cmd, cli_bridge, exit_status, socket_count
from tests.support.streams import exchange, open_pty, read_to_eof, sha256

MiB = 1 << 20


# How every stderr line starts after the timestamp (cli.py's logging format).
async def exchange_through_pty(
    remote: trio.abc.Stream, pty_path: str, size: int = 64 * 1024
) -> tuple[bool, bool]:
    """Random bytes pty → remote and remote → pty at once; whether each arrived intact."""
    up, down = os.urandom(size), os.urandom(size)
    async with open_pty(pty_path) as app:
        at_remote, at_pty = await exchange(app, remote, up, down)
    return sha256(at_remote) == sha256(up), sha256(at_pty) == sha256(down)


# -- 1. the console script ---------------------------------------------------------------------


def test_console_script_prints_the_package_version_and_exits_0() -> None:
    script = Path(sys.executable).parent / "chardev-bridge"
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"chardev-bridge {__version__}\n"
    assert __version__ == importlib.metadata.version("chardev-bridge")


# -- 2. make demo ------------------------------------------------------------------------------


def test_make_demo_crosses_a_line_both_ways_over_tls_1_3_naming_both_peers() -> None:
    # The Makefile's demo target: $(BIN)/python -m chardev_bridge.demo
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "\t$(BIN)/python -m chardev_bridge.demo\n" in makefile
    proc = subprocess.run(
        [sys.executable, "-m", "chardev_bridge.demo"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    hello, back = (
        re.escape(repr(b"hello from the client's pty, over TLS\n")),
        re.escape(repr(b"and back again\n")),
    )
    client = re.search(r"^  client bridge's local end: (/dev/pts/\d+)$", out, re.M)
    server = re.search(r"^  server bridge's local end: (/dev/pts/\d+)$", out, re.M)
    assert client and server, out
    c_pty, s_pty = re.escape(client.group(1)), re.escape(server.group(1))
    for expected in (
        rf"^wrote to {c_pty}:  {hello}$",
        rf"^read from {s_pty}: {hello}$",
        rf"^wrote to {s_pty}:  {back}$",
        rf"^read from {c_pty}: {back}$",
        r"^  server: session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate"
        r" 'O=chardev-bridge,CN=client'$",
        r"^  client: connected to 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate"
        r" 'CN=localhost'$",
        r"^demo OK: the line crossed TLS both ways, byte for byte\.$",
    ):
        assert re.search(expected, out, re.M), f"{expected!r} not in:\n{out}"


# -- 3. --local stdio --------------------------------------------------------------------------


async def test_stdio_bridge_delivers_piped_stdin_exactly_then_close_notify_and_exits_0(
    pki: PKI,
) -> None:
    payload = os.urandom(MiB)
    server = TlsServer(server_context(pki.server_dir))  # requires a client certificate
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args = ["--host", HOST, "--port", str(server.port), "--tls-creds", str(pki.client_dir)]
            proc = await trio.lowlevel.open_process(
                bridge_cmd(*args, "--local", "stdio"),
                env=ENV,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = bytearray(), bytearray()
            try:

                async def collect(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
                    assert stream is not None
                    while chunk := await stream.receive_some():
                        into += chunk

                async def feed() -> None:
                    assert proc.stdin is not None
                    await proc.stdin.send_all(payload)
                    await proc.stdin.aclose()

                nursery.start_soon(collect, proc.stdout, out)
                nursery.start_soon(collect, proc.stderr, err)
                nursery.start_soon(feed)
                conn = await server.accept()
                assert conn.getpeercert()["subject"][-1] == (("commonName", "client.example.com"),)
                received, how = await read_to_eof(conn, timeout=20)
                await conn.aclose()  # our close_notify back ends the session
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
    log = err.decode()
    assert len(received) == len(payload) and sha256(received) == sha256(payload)
    assert how == "clean"  # TLS close_notify, not a ragged TCP close
    assert code == 0, log
    assert out == b""
    assert re.search(
        rf"{LINE}disconnected from 127\.0\.0\.1:{server.port} after [\d.]+s: {MiB} bytes sent,"
        r" 0 bytes received; remote closed$",
        log,
        re.M,
    ), log


# -- 4. --no-verify-peer -----------------------------------------------------------------------


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


# -- 5. --tls-hostname -------------------------------------------------------------------------


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


# -- 6. a server we must not trust -------------------------------------------------------------


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


# -- 7. SIGINT ---------------------------------------------------------------------------------


async def test_sigint_stops_an_idle_listening_bridge_with_exit_0_and_removes_the_link(
    pki: PKI, tmp_path: Path
) -> None:
    link = tmp_path / "console"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge([*args, "--link", str(link)]) as bridge:
            pty_path = await bridge.pty_path()
            await bridge.port()
            assert os.readlink(link) == pty_path
            bridge.signal(signal.SIGINT)
            assert await exit_status(bridge) == 0
    assert not link.exists() and not link.is_symlink()
    assert re.search(rf"{LINE}SIGINT: shutting down \(in-flight bytes first\)$", bridge.log(), re.M)


async def size_once_stalled(path: Path, quiet: float = 0.3) -> int:
    """The size of ``path`` once it has stopped growing for ``quiet`` seconds."""
    last, since = -1, trio.current_time()
    while True:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, trio.current_time()
        elif size > 0 and trio.current_time() - since >= quiet:
            return size
        await trio.sleep(0.02)


async def test_sigint_mid_session_delivers_in_flight_bytes_then_close_notify(
    pki: PKI, tmp_path: Path
) -> None:
    link, logfile = tmp_path / "console", tmp_path / "to-remote.log"
    payload = os.urandom(8 * MiB)
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    args += ["--link", str(link), "--logfile", str(logfile)]
    with trio.fail_after(30):
        async with cli_bridge(args) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            conn, me = await tls_connect(port, client_context(pki.client_dir))
            await bridge.wait_for(rf"{LINE}session from {re.escape(me)}: ")
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:

                async def write_all() -> None:
                    try:
                        await app.send_all(payload)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return  # the bridge has gone: EIO on the pty

                nursery.start_soon(write_all)
                # We do not read yet, so the bridge stalls on us holding bytes it has taken
                # from the pty (its traffic log records each read) but not passed on.
                stalled_at = await size_once_stalled(logfile)
                bridge.signal(signal.SIGINT)
                received, how = await read_to_eof(conn, timeout=15)
                nursery.cancel_scope.cancel()
            code = await exit_status(bridge)
    taken = logfile.read_bytes()
    assert how == "clean"  # close_notify
    assert code == 0
    assert len(received) == len(taken) and sha256(received) == sha256(taken)
    assert len(received) >= stalled_at > 0 and received == payload[: len(received)]
    assert not link.exists() and not link.is_symlink()
    log = bridge.log()
    assert re.search(rf"{LINE}SIGINT: shutting down \(in-flight bytes first\)$", log, re.M)
    assert re.search(
        rf"{LINE}disconnected from {re.escape(me)} after [\d.]+s: {len(received)} bytes sent,"
        r" 0 bytes received; bridge shutting down$",
        log,
        re.M,
    ), log


# -- 8. the cap on concurrent handshakes -------------------------------------------------------


async def test_65th_concurrent_handshake_is_refused_and_a_good_client_gets_through_later(
    pki: PKI,
) -> None:
    assert MAX_PENDING_HANDSHAKES == 64  # README: "at most 64 handshakes run at once"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge([*args, "--handshake-timeout", "30"]) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            baseline = socket_count(bridge.pid)
            silent = [(await tcp_connect(port))[0] for _ in range(64)]
            # Every silent connection accepted and waiting in its handshake.
            while socket_count(bridge.pid) < baseline + 64:
                await trio.sleep(0.02)
            await trio.sleep(0.2)
            extra, extra_name = await tcp_connect(port)
            rest, how = await read_to_eof(extra, timeout=5)
            assert rest == b"" and how in ("clean", "reset")
            await bridge.wait_for(
                rf"{LINE}refused {re.escape(extra_name)}: 64 handshakes already in progress$"
            )
            for tcp in silent:
                await tcp.aclose()
            # The bridge has seen each of them go (so 64 slots are free again).
            await bridge.wait_for(r"TLS handshake with 127\.0\.0\.1:\d+ failed: ", skip=63)
            conn, me = await tls_connect(port, client_context(pki.client_dir))
            await bridge.wait_for(rf"{LINE}session from {re.escape(me)}: TLSv1\.3 ")
            assert await exchange_through_pty(conn, pty_path) == (True, True)
            await conn.aclose()
    assert bridge.count(r"handshakes already in progress") == 1


# -- 9. TCP keepalive --------------------------------------------------------------------------


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


# -- 10. argument parsing of the issue-4 options -----------------------------------------------


def test_issue_4_option_defaults() -> None:
    cfg = cli_config()
    assert cfg.handshake_timeout == 10
    assert cfg.reconnect_max == 30
    assert cfg.reconnect is None and cfg.idle_timeout is None
    assert (cfg.when_unread, cfg.second_client) == ("block", "reject")
    # Local bytes while disconnected: the local end's default (a pty holds them up to 2 s).
    assert cfg.when_disconnected is None and cfg.hold_max is None and cfg.hold_limit == 2.0
    assert cfg.scrollback == MiB
    assert cfg.tls_username is None


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--when-disconnected", "drop"], "when_disconnected", "drop"),
        (["--when-disconnected", "block"], "when_disconnected", "block"),
        (["--when-unread", "buffer"], "when_unread", "buffer"),
        (["--scrollback", "64K"], "scrollback", 64 * 1024),
        (["--scrollback", "1M"], "scrollback", MiB),
        (["--scrollback", "4096"], "scrollback", 4096),
        (["--second-client", "replace"], "second_client", "replace"),
        (["--idle-timeout", "2.5"], "idle_timeout", 2.5),
        (["--handshake-timeout", "3"], "handshake_timeout", 3.0),
        (["--reconnect", "0.5"], "reconnect", 0.5),
        (["--reconnect-max", "120"], "reconnect_max", 120.0),
        (["--tls-username", "ops"], "tls_username", "ops"),
    ],
)
def test_issue_4_option_is_parsed_into_the_config(
    argv: list[str], field: str, value: object
) -> None:
    assert getattr(cli_config(*argv), field) == value


async def test_a_real_bridge_starts_with_every_issue_4_option_and_exits_0_on_sigterm() -> None:
    port = free_port()  # nothing listens: the bridge keeps retrying
    args = ["--host", HOST, "--port", str(port), "--reconnect", "0.2", "--reconnect-max", "0.5"]
    args += ["--handshake-timeout", "2", "--idle-timeout", "5", "--when-disconnected", "drop"]
    args += ["--when-unread", "buffer", "--scrollback", "64K", "--second-client", "replace"]
    with trio.fail_after(20):
        async with cli_bridge(args) as bridge:
            await bridge.pty_path()
            await bridge.wait_for(
                rf"{LINE}cannot connect to 127\.0\.0\.1:{port}: connection refused"
            )
            bridge.signal(signal.SIGTERM)
            assert await exit_status(bridge) == 0


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--when-disconnected", "keep"], "argument --when-disconnected: invalid choice: 'keep'"),
        (["--when-unread", "never"], "argument --when-unread: invalid choice: 'never'"),
        (["--second-client", "kick"], "argument --second-client: invalid choice: 'kick'"),
        (["--scrollback", "0"], "argument --scrollback: '0' is not a size in bytes"),
        (["--scrollback", "64X"], "argument --scrollback: '64X' is not a size in bytes"),
        (["--idle-timeout", "0"], "argument --idle-timeout: must be greater than 0, not 0"),
        (["--handshake-timeout", "-1"], "argument --handshake-timeout: must be greater than 0"),
        (["--reconnect-max", "0"], "argument --reconnect-max: must be greater than 0, not 0"),
        (["--reconnect", "soon"], "argument --reconnect: "),
        (["--server", "--reconnect", "1"], "--reconnect applies to a connecting bridge"),
    ],
)
def test_bad_issue_4_option_value_gives_one_error_line_and_exit_status_2(
    argv: list[str], error: str
) -> None:
    proc = subprocess.run(
        bridge_cmd(*argv), env=ENV, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if "error" in line]
    assert errors == [lines[-1]], proc.stderr  # one error line, after the usage
    assert lines[-1].startswith(f"chardev-bridge: error: {error}"), lines[-1]


def test_a_non_number_for_a_seconds_option_is_reported_without_internal_names() -> None:
    proc = subprocess.run(
        bridge_cmd("--reconnect", "soon"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("chardev-bridge: error: argument --reconnect: ")
    assert "_positive_float" not in last, last
