"""The status endpoint over real sockets: a TCP listener on 127.0.0.1 and a unix socket.

Well-behaved requests go through the standard library's http.client (in a thread); the
malformed, stalled and excess clients are raw sockets that write bytes by hand.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pytest
import trio

from chardev_bridge.common.starterror import StartError
from chardev_bridge.serve.metrics import CONTENT_TYPE
from chardev_bridge.serve.status import (
    StatusSpecError,
    open_status_listeners,
    parse_status_spec,
    serve_status,
)
from chardev_bridge.serve.statusmodel import BridgeStatus, ProcessStatus, status_json
from tests.support.streams import read_to_eof

HOST = "127.0.0.1"


def snapshot() -> ProcessStatus:
    return ProcessStatus(
        bridges=[
            BridgeStatus(
                name="vm1",
                state="connected",
                remote="console.example.com:5000",
                peer="192.0.2.7:41000",
                tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
                local="pty /dev/pts/4",
                sessions=2,
                bytes_to_remote=1234,
                bytes_from_remote=5678,
                viewers=1,
            ),
            BridgeStatus(name="vm0", state="retrying", local="unix /run/qemu/vm0.sock"),
        ],
        last_reload=1714566645.0,
        config="/etc/chardev-bridge/serve.toml",
    )


@asynccontextmanager
async def serving(
    listeners: list[trio.SocketListener],
    snap: Callable[[], ProcessStatus] = snapshot,
    **limits: Any,
) -> AsyncIterator[None]:
    """serve_status running on ``listeners`` for the body of the ``with``."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_status, listeners, snap, **limits))
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_server(
    snap: Callable[[], ProcessStatus] = snapshot, **limits: Any
) -> AsyncIterator[int]:
    """A status endpoint on 127.0.0.1 and a free port; yields the port."""
    listeners = await open_status_listeners(f"tcp-listen:{HOST}:0")
    async with serving(listeners, snap, **limits):
        yield listeners[0].socket.getsockname()[1]


class Reply:
    """A response read with http.client."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers
        self.body = response.read()
        self.will_close = response.will_close


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> Reply:
    conn.request(method, path, body=body)
    return Reply(conn.getresponse())


async def fetch(port: int, path: str, method: str = "GET") -> Reply:
    """One request on a fresh connection, made by http.client in a thread."""

    def run() -> Reply:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            return request(conn, method, path)
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def unix_fetch(socket_path: str, path: str) -> Reply:
    """One GET on a fresh unix-socket connection (blocking: run it in a thread)."""
    conn = UnixHTTPConnection(socket_path)
    try:
        return request(conn, "GET", path)
    finally:
        conn.close()


async def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` on a new connection and read everything until the server closes."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(data)
        received, how = await read_to_eof(stream, timeout)
    assert how == "clean", (how, received)
    return received


# -- what it answers ------------------------------------------------------------------------


async def test_get_status_answers_the_snapshot_as_json() -> None:
    async with tcp_server() as port:
        reply = await fetch(port, "/_status")
    assert (reply.status, reply.reason) == (200, "OK")
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.body == status_json(snapshot())
    document = json.loads(reply.body)
    assert list(document["bridges"]) == ["vm0", "vm1"]
    assert document["bridges"]["vm1"]["state"] == "connected"
    assert document["bridges"]["vm1"]["bytes_to_remote"] == 1234
    assert document["last_reload"] == "2024-05-01T12:30:45Z"


async def test_metrics_and_the_ghostunnel_path_serve_the_same_prometheus_text() -> None:
    async with tcp_server() as port:
        metrics = await fetch(port, "/metrics")
        ghostunnel = await fetch(port, "/_metrics/prometheus")
    assert metrics.status == ghostunnel.status == 200
    assert metrics.headers["Content-Type"] == CONTENT_TYPE
    assert metrics.body == ghostunnel.body
    assert (
        b'chardev_bridge_bytes_total{bridge="vm1",direction="to_remote"} 1234.0\n' in metrics.body
    )
    assert b'chardev_bridge_connected{bridge="vm0"} 0.0\n' in metrics.body
    assert b"chardev_bridge_last_reload_success_timestamp_seconds 1.714566645e+09\n" in (
        metrics.body
    )


async def test_a_query_string_does_not_change_the_path() -> None:
    async with tcp_server() as port:
        reply = await fetch(port, "/metrics?name[]=chardev_bridge_viewers")
    assert reply.status == 200
    assert b'chardev_bridge_viewers{bridge="vm1"} 1.0\n' in reply.body


async def test_head_gives_the_headers_of_get_and_no_body() -> None:
    async with tcp_server() as port:
        reply = await fetch(port, "/_status", "HEAD")
    assert reply.status == 200
    assert reply.headers["Content-Length"] == str(len(status_json(snapshot())))
    assert reply.body == b""


async def test_each_request_sees_the_snapshot_of_its_moment() -> None:
    sessions = iter(range(1, 100))

    def counting() -> ProcessStatus:
        bridge = BridgeStatus(name="vm1", state="connected", local="stdio", sessions=next(sessions))
        return ProcessStatus(bridges=[bridge])

    async with tcp_server(counting) as port:
        first = json.loads((await fetch(port, "/_status")).body)
        second = json.loads((await fetch(port, "/_status")).body)
    assert first["bridges"]["vm1"]["sessions"] == 1
    assert second["bridges"]["vm1"]["sessions"] == 2


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    def run(port: int) -> tuple[Reply, Reply, bool]:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            first = request(conn, "GET", "/_status")
            sock = conn.sock
            second = request(conn, "GET", "/metrics")
            return first, second, sock is not None and sock is conn.sock
        finally:
            conn.close()

    async with tcp_server() as port:
        first, second, same_socket = await trio.to_thread.run_sync(run, port)
    assert (first.status, first.will_close) == (200, False)
    assert second.status == 200
    assert b"chardev_bridge_sessions_total" in second.body
    assert same_socket


async def test_two_pipelined_requests_get_two_responses_in_order() -> None:
    head = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with tcp_server() as port:
        received = await raw_exchange(port, head % b"/_status" + last)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 404 Not Found\r\n" in received
    assert received.index(b"200 OK") < received.index(b"404 Not Found")


# -- what it refuses ------------------------------------------------------------------------


async def test_an_unknown_path_is_404_and_names_the_paths_there_are() -> None:
    async with tcp_server() as port:
        reply = await fetch(port, "/status")
    assert (reply.status, reply.reason) == (404, "Not Found")
    assert reply.body == b"not found; try /_status, /metrics, /_metrics/prometheus\n"
    assert not reply.will_close


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_405_with_an_allow_header(method: str) -> None:
    async with tcp_server() as port:
        reply = await fetch(port, "/_status", method)
    assert (reply.status, reply.reason) == (405, "Method Not Allowed")
    assert reply.headers["Allow"] == "GET, HEAD"
    assert reply.body == b"only GET, HEAD here\n"


async def test_a_malformed_request_gets_400_and_the_connection_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    async with tcp_server() as port:
        received = await raw_exchange(port, b"HELLO THERE\r\n\r\n")
        after = await fetch(port, "/_status")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close\r\n" in received
    assert b"bad request: " in received
    assert after.status == 200
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("bad request from 127.0.0.1:" in line for line in debug)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_request_head_over_16_kib_is_refused_with_431() -> None:
    big = b"GET /_status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 17000 + b"\r\n\r\n"
    async with tcp_server() as port:
        received = await raw_exchange(port, big)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_a_request_head_just_under_16_kib_is_served() -> None:
    head = b"GET /_status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    big = head + b"a" * (16 * 1024 - len(head) - 4) + b"\r\n\r\n"
    assert len(big) == 16 * 1024
    async with tcp_server() as port:
        received = await raw_exchange(port, big)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_request_body_larger_than_16_kib_is_refused_with_413() -> None:
    head = b"GET /_status HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n"
    async with tcp_server() as port:
        received = await raw_exchange(port, head + b"x" * 40000)
    assert received.startswith(b"HTTP/1.1 413 Content Too Large\r\n") or received.startswith(
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
    )
    assert received.endswith(b"GET needs no body\n")


async def test_a_small_request_body_is_read_and_the_connection_stays_usable() -> None:
    def run(port: int) -> tuple[Reply, Reply]:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            return request(conn, "GET", "/_status", b"ignored"), request(conn, "GET", "/metrics")
        finally:
            conn.close()

    async with tcp_server() as port:
        first, second = await trio.to_thread.run_sync(run, port)
    assert (first.status, second.status) == (200, 200)


async def test_a_snapshot_that_fails_is_a_500_logged_as_an_error_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = iter([RuntimeError("bridge table changed"), None])

    def flaky() -> ProcessStatus:
        failure = next(calls)
        if failure is not None:
            raise failure
        return snapshot()

    async with tcp_server(flaky) as port:
        failed = await fetch(port, "/_status")
        worked = await fetch(port, "/_status")
    assert (failed.status, failed.body) == (500, b"status unavailable; see the log\n")
    assert worked.status == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["status endpoint: cannot build /_status: RuntimeError: bridge table changed"]


# -- clients that would hurt ----------------------------------------------------------------


async def test_a_client_stalled_mid_request_does_not_stop_another_from_being_served() -> None:
    async with tcp_server(request_timeout=30) as port:
        stalled = await trio.open_tcp_stream(HOST, port)
        async with stalled:
            await stalled.send_all(b"GET /_status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            with trio.fail_after(5):
                reply = await fetch(port, "/_status")
    assert reply.status == 200


async def test_a_request_not_finished_in_time_gets_408_and_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    async with tcp_server(request_timeout=0.3) as port:
        start = trio.current_time()
        received = await raw_exchange(port, b"GET /_status HTTP/1.1\r\nHo")
        waited = trio.current_time() - start
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert received.endswith(b"request too slow\n")
    assert 0.25 < waited < 3
    assert any("sent no whole request in 0.3 s" in r.getMessage() for r in caplog.records)


async def test_an_idle_keep_alive_connection_is_closed_without_a_response() -> None:
    async with tcp_server(request_timeout=0.3) as port:
        received = await raw_exchange(port, b"")
    assert received == b""


async def test_a_client_that_resets_mid_request_is_dropped_and_others_are_served() -> None:
    async with tcp_server() as port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect((HOST, port))
        sock.sendall(b"GET /_status HTTP/1.1\r\n")
        # Linger 0: close() sends a reset rather than a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        reply = await fetch(port, "/_status")
    assert reply.status == 200


async def test_connections_beyond_the_limit_are_closed_at_once_and_a_freed_slot_is_reused() -> None:
    one_request = b"GET /_status HTTP/1.1\r\nHost: x\r\n\r\n"
    async with tcp_server(max_connections=2, request_timeout=30) as port:
        held = [await trio.open_tcp_stream(HOST, port) for _ in range(2)]
        for stream in held:
            # A whole response proves the server accepted and counted this connection.
            await stream.send_all(one_request)
            with trio.fail_after(5):
                assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 OK\r\n")
        excess = await trio.open_tcp_stream(HOST, port)
        async with excess:
            with trio.fail_after(5):
                try:
                    assert await excess.receive_some(65536) == b""
                except trio.BrokenResourceError:
                    pass  # a reset says the same: closed without a word
        await held[0].aclose()
        with trio.fail_after(5):
            while True:
                try:
                    reply = await fetch(port, "/_status")
                except (ConnectionError, http.client.RemoteDisconnected):
                    await trio.sleep(0.05)  # the server has not seen the close yet
                    continue
                break
        await held[1].aclose()
    assert reply.status == 200


class FlakyListener:
    """A listener whose first accepts fail as a process out of file descriptors sees."""

    def __init__(self, real: trio.SocketListener, failures: int) -> None:
        self.real, self.failures = real, failures

    async def accept(self) -> trio.SocketStream:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return await self.real.accept()

    async def aclose(self) -> None:
        await self.real.aclose()

    async def __aenter__(self) -> FlakyListener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def test_running_out_of_file_descriptors_is_logged_and_accepting_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = (await open_status_listeners(f"tcp-listen:{HOST}:0"))[0]
    port = real.socket.getsockname()[1]
    flaky = cast(trio.SocketListener, FlakyListener(real, failures=2))
    async with serving([flaky]):
        reply = await fetch(port, "/_status")
    assert reply.status == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        errors
        == [
            "status endpoint: cannot accept a connection: Too many open files (EMFILE);"
            " retrying in 0.1 s"
        ]
        * 2
    )


# -- where it listens -----------------------------------------------------------------------


async def test_a_unix_socket_is_created_mode_0600_serves_and_is_removed_at_exit(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "status.sock")
    listeners = await open_status_listeners(f"unix-listen:{path}")
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600

    def run() -> tuple[Reply, Reply]:
        conn = UnixHTTPConnection(path)
        try:
            return request(conn, "GET", "/_status"), request(conn, "GET", "/_metrics/prometheus")
        finally:
            conn.close()

    async with serving(listeners):
        status, metrics = await trio.to_thread.run_sync(run)
    assert status.status == 200
    assert status.body == status_json(snapshot())
    assert b'chardev_bridge_sessions_total{bridge="vm1"} 2.0\n' in metrics.body
    assert not os.path.exists(path)


async def test_the_unix_prefix_is_accepted_as_well_as_unix_listen(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listeners = await open_status_listeners(f"unix:{path}")
    async with serving(listeners):
        assert stat.S_ISSOCK(os.stat(path).st_mode)


async def test_a_stale_unix_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "status.sock")
    left_over = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left_over.bind(path)
    left_over.close()  # the file stays, with nobody behind it: a crashed run's leftover
    listeners = await open_status_listeners(f"unix-listen:{path}")
    async with serving(listeners):
        reply = await trio.to_thread.run_sync(unix_fetch, path, "/")
    assert reply.status == 404


async def test_a_live_unix_socket_is_an_error_naming_the_path_and_is_left_alone(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "status.sock")
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(path)
    owner.listen(1)
    try:
        with pytest.raises(StartError) as caught:
            await open_status_listeners(f"unix-listen:{path}")
        assert str(caught.value) == (
            f"status listener 'unix-listen:{path}': {path}: another process is listening on"
            " this socket; stop it or choose another path"
        )
        assert caught.value.errno == errno.EADDRINUSE
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        owner.close()


async def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "status.sock"
    path.write_text("precious")
    with pytest.raises(StartError, match="exists and is not a socket; remove it or choose"):
        await open_status_listeners(f"unix-listen:{path}")
    assert path.read_text() == "precious"


async def test_a_unix_socket_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "status.sock"
    with pytest.raises(StartError) as caught:
        await open_status_listeners(f"unix-listen:{path}")
    assert str(caught.value) == (
        f"status listener 'unix-listen:{path}': cannot listen there:"
        f" the folder {tmp_path / 'absent'} does not exist; create it or choose another path"
    )


@pytest.mark.parametrize("spec", ["tcp-listen:0", "tcp-listen::0", "tcp:0"])
async def test_a_spec_without_a_host_listens_on_loopback_only(spec: str) -> None:
    listeners = await open_status_listeners(spec)
    try:
        assert [listener.socket.getsockname()[0] for listener in listeners] == ["127.0.0.1"]
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_an_ipv6_address_in_brackets_is_listened_on() -> None:
    assert parse_status_spec("tcp-listen:[::1]:9000").host == "::1"
    listeners = await open_status_listeners("tcp-listen:[::1]:0")
    port = listeners[0].socket.getsockname()[1]
    assert listeners[0].socket.family == socket.AF_INET6

    def run() -> Reply:
        conn = http.client.HTTPConnection("::1", port, timeout=5)
        try:
            return request(conn, "GET", "/_status")
        finally:
            conn.close()

    async with serving(listeners):
        reply = await trio.to_thread.run_sync(run)
    assert reply.status == 200


async def test_a_port_in_use_is_a_start_error_naming_the_spec() -> None:
    taken = await open_status_listeners(f"tcp-listen:{HOST}:0")
    port = taken[0].socket.getsockname()[1]
    try:
        with pytest.raises(StartError) as caught:
            await open_status_listeners(f"tcp-listen:{HOST}:{port}")
    finally:
        await taken[0].aclose()
    assert str(caught.value).startswith(
        f"status listener 'tcp-listen:{HOST}:{port}': cannot listen on {HOST}:{port}:"
        " address already in use"
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            "http://127.0.0.1:9000",
            "status listener 'http://127.0.0.1:9000': unknown kind 'http'; write"
            " tcp-listen:HOST:PORT, tcp-listen:[IPV6]:PORT or unix-listen:PATH",
        ),
        (
            "9000",
            "status listener '9000': unknown kind '9000'; write tcp-listen:HOST:PORT,",
        ),
        (
            "tcp-listen:localhost",
            "status listener 'tcp-listen:localhost': 'localhost' is not a port number"
            " (0 to 65535); write tcp-listen:HOST:PORT",
        ),
        (
            "tcp-listen:127.0.0.1:65536",
            "'65536' is not a port number (0 to 65535)",
        ),
        ("tcp-listen:127.0.0.1:", "'' is not a port number"),
        # Fullwidth digits: str.isdigit() accepts them, a port number does not.
        ("tcp-listen:127.0.0.1:\uff19\uff10", "'\uff19\uff10' is not a port number"),
        (
            "tcp-listen:::1:9000",
            "status listener 'tcp-listen:::1:9000': write an IPv6 address in brackets,"
            " e.g. tcp-listen:[::1]:9000",
        ),
        (
            "tcp-listen:[::1]9000",
            "an IPv6 address is written [ADDRESS]:PORT, e.g. tcp-listen:[::1]:9000",
        ),
        ("tcp-listen:[::1:9000", "an IPv6 address is written [ADDRESS]:PORT"),
        (
            "tcp-listen:[127.0.0.1]:9000",
            "'127.0.0.1' in brackets is not an IPv6 address; brackets are only for IPv6",
        ),
        ("unix-listen:", "status listener 'unix-listen:': no path; write unix-listen:PATH"),
        (
            "unix:/" + "d" * 120,
            "the path is longer than the 107 bytes a unix socket allows; choose a shorter one",
        ),
    ],
)
async def test_a_spec_that_cannot_be_read_is_one_line_naming_it_and_the_fix(
    spec: str, words: str
) -> None:
    with pytest.raises(StatusSpecError) as caught:
        await open_status_listeners(spec)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)
