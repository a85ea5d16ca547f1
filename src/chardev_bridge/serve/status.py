"""The console server's status and metrics endpoint: a small HTTP/1.1 server on h11.

``GET /_status`` answers JSON (see :mod:`chardev_bridge.serve.statusmodel`), ``GET /metrics``
and ``GET /_metrics/prometheus`` the Prometheus text format. It shares the process with the
bridges, so every client is bounded: a number of connections, a time to send each request,
a size for its head. A client beyond those bounds loses its connection and the bridges
never notice.
"""

from __future__ import annotations

import errno
import http
import ipaddress
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import h11
import trio

from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.common.starterror import StartError, describe_listen_error
from chardev_bridge.net.unixlisten import listen_unix, remove_socket_file
from chardev_bridge.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from chardev_bridge.serve.metrics import metrics_text
from chardev_bridge.serve.statusmodel import ProcessStatus, status_json

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_REQUEST_HEAD",
    "REQUEST_TIMEOUT",
    "StatusAddress",
    "StatusSpecError",
    "open_status_listeners",
    "parse_status_spec",
    "serve_status",
]

log = logging.getLogger("chardev_bridge")

MAX_CONNECTIONS = 64
"""Concurrent connections served; one more is closed as soon as it is accepted."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send a whole request (and to take the response)."""
MAX_REQUEST_HEAD = 16 * 1024
"""Bytes a request line and headers may take."""

# GET and HEAD carry no body; one is read and discarded up to this size so that a keep-alive
# connection stays usable, and anything larger is refused rather than read.
_MAX_REQUEST_BODY = 16 * 1024
_RECEIVE_SIZE = 16 * 1024
# After a response that ends the connection, the client gets this long to read it: closing
# a socket with unread input resets it, and a reset can destroy the response in flight.
_LINGER = 1.0
# Accept errors that mean "the system is short of something right now", as trio's
# serve_listeners: waiting helps. Any other accept error is a bug or a closed listener.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY = 0.1

_LOOPBACK = "127.0.0.1"
_UNIX_MODE = 0o600
_UNIX_BACKLOG = 128
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_UNIX_PATH_MAX = 107
_SPEC_FORMS = "tcp-listen:HOST:PORT, tcp-listen:[IPV6]:PORT or unix-listen:PATH"

_ALLOWED_METHODS = (b"GET", b"HEAD")
_ROUTES: dict[bytes, Literal["status", "metrics"]] = {
    b"/_status": "status",
    b"/metrics": "metrics",
    b"/_metrics/prometheus": "metrics",
}
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"


class StatusSpecError(ValueError):
    """A status listener spec that cannot be understood; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class StatusAddress:
    """Where the status endpoint listens: TCP ``host``:``port`` or the unix socket ``path``."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def describe(self) -> str:
        """``127.0.0.1:9000`` or ``unix /run/x.sock``, for log lines."""
        if self.kind == "tcp":
            return format_hostport(self.host, self.port)
        return f"unix {self.path}"


def parse_status_spec(spec: str) -> StatusAddress:
    """Read ``tcp-listen:HOST:PORT`` (``tcp:`` too) or ``unix-listen:PATH`` (``unix:`` too).

    The host may be an IPv6 literal in brackets (``[::1]:9000``). Without a host
    (``tcp-listen:9000`` or ``tcp-listen::9000``) the endpoint listens on 127.0.0.1 only:
    status is published beyond this machine only when an address says so.
    Raises :class:`StatusSpecError`.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("tcp-listen", "tcp", "unix-listen", "unix"):
        raise StatusSpecError(
            f"status listener {spec!r}: unknown kind {kind!r}; write {_SPEC_FORMS}"
        )
    if kind.startswith("unix"):
        return StatusAddress("unix", path=_parse_path(spec, rest))
    host, port = _parse_hostport(spec, rest)
    return StatusAddress("tcp", host=host, port=port)


def _parse_path(spec: str, path: str) -> str:
    if not path:
        raise StatusSpecError(f"status listener {spec!r}: no path; write unix-listen:PATH")
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise StatusSpecError(
            f"status listener {spec!r}: the path is longer than the {_UNIX_PATH_MAX} bytes"
            " a unix socket allows; choose a shorter one"
        )
    return path


def _parse_hostport(spec: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        inside, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise StatusSpecError(
                f"status listener {spec!r}: an IPv6 address is written [ADDRESS]:PORT,"
                " e.g. tcp-listen:[::1]:9000"
            )
        try:
            is_v6 = ipaddress.ip_address(inside).version == 6
        except ValueError:
            is_v6 = False
        if not is_v6:
            raise StatusSpecError(
                f"status listener {spec!r}: {inside!r} in brackets is not an IPv6 address;"
                " brackets are only for IPv6 literals, e.g. tcp-listen:[::1]:9000"
            )
        host, port_text = inside, after[1:]
    else:
        host, _, port_text = rest.rpartition(":")
        if ":" in host:
            raise StatusSpecError(
                f"status listener {spec!r}: write an IPv6 address in brackets,"
                f" e.g. tcp-listen:[{host}]:{port_text}"
            )
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise StatusSpecError(
            f"status listener {spec!r}: {port_text!r} is not a port number (0 to 65535);"
            f" write {_SPEC_FORMS}"
        )
    return host or _LOOPBACK, int(port_text)


# Unix socket files made by open_status_listeners, with their inode: serve_status removes a
# file on exit only if it is still the one made here, not a successor's.
_unix_files: weakref.WeakKeyDictionary[trio.SocketListener, tuple[str, int]] = (
    weakref.WeakKeyDictionary()
)


async def open_status_listeners(
    spec: str, *, unix_mode: int = _UNIX_MODE
) -> list[trio.SocketListener]:
    """Listen where ``spec`` says (see :func:`parse_status_spec`), for :func:`serve_status`.

    A unix socket is created with ``unix_mode`` (0600: only this user may read the status).
    A socket file left by an earlier run is replaced; one that a process still listens on is
    not. :func:`serve_status` closes the listeners, and removes the socket file, when it
    returns. Raises :class:`StatusSpecError` for a spec that cannot be read and
    :class:`~chardev_bridge.common.starterror.StartError` (an ``OSError``) when listening fails.
    """
    address = parse_status_spec(spec)
    if address.kind == "unix":
        return [await _open_unix(spec, address.path, unix_mode)]
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        why = describe_listen_error(exc, f"status listener {spec!r}", address.host, address.port)
        raise StartError(exc.errno, why) from exc


async def _open_unix(spec: str, path: str, mode: int) -> trio.SocketListener:
    listener, inode = await listen_unix(
        path, f"status listener {spec!r}", mode=mode, backlog=_UNIX_BACKLOG
    )
    _unix_files[listener] = (path, inode)
    return listener


async def serve_status(
    listeners: list[trio.SocketListener],
    snapshot: Callable[[], ProcessStatus],
    *,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
    max_request_head: int = MAX_REQUEST_HEAD,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer HTTP/1.1 status and metrics requests on ``listeners`` until cancelled.

    ``snapshot`` is called for each ``/_status`` or metrics request, in the event loop: it
    must be quick and must not block. Clients that misbehave (malformed, too slow, too
    large, too many) are logged at debug level and lose their connection; nothing they do
    raises out of here. The listeners are closed on return, and a unix socket file made by
    :func:`open_status_listeners` is removed.
    """
    server = _StatusServer(snapshot, max_connections, request_timeout, max_request_head)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        task_status.started()


class _StatusServer:
    def __init__(
        self,
        snapshot: Callable[[], ProcessStatus],
        max_connections: int,
        request_timeout: float,
        max_request_head: int,
    ) -> None:
        self.snapshot = snapshot
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.max_request_head = max_request_head
        self.active = 0

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        try:
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error(
                            "status endpoint: cannot accept a connection: %s (%s);"
                            " retrying in %g s",
                            os.strerror(exc.errno),
                            errno.errorcode[exc.errno],
                            _ACCEPT_RETRY,
                        )
                        await trio.sleep(_ACCEPT_RETRY)
                        continue
                    # Counted here, not in the task: the limit then holds for connections
                    # accepted back to back, before any of their tasks has run.
                    if self.active >= self.max_connections:
                        log.debug(
                            "status endpoint: closed %s at once: %d connections already",
                            _peer(stream),
                            self.active,
                        )
                        await trio.aclose_forcefully(stream)
                        continue
                    self.active += 1
                    nursery.start_soon(self.connection, stream)
        finally:
            _remove_socket_file(listener)

    async def connection(self, stream: trio.SocketStream) -> None:
        peer = _peer(stream)
        try:
            await self.converse(stream, peer)
        except Exception as exc:
            # Resets, broken pipes, a response nobody reads: the client's problem, not ours.
            log.debug("status endpoint: dropped %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def converse(self, stream: trio.SocketStream, peer: str) -> None:
        """Requests and responses until either side ends the connection."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_head)
        while True:
            request: h11.Request | None = None
            refusal: tuple[int, str] | None = None
            with trio.move_on_after(self.request_timeout) as deadline:
                try:
                    request = await _read_request(conn, stream, self.max_request_head)
                except h11.RemoteProtocolError as exc:
                    log.debug("status endpoint: bad request from %s: %s", peer, exc)
                    refusal = exc.error_status_hint, f"bad request: {exc}\n"
                except _BodyTooLarge:
                    log.debug("status endpoint: %s sent a request body; refused", peer)
                    refusal = 413, "GET needs no body\n"
            # Answered outside the deadline: the response has a deadline of its own.
            if refusal is not None:
                await self.respond_and_close(conn, stream, *refusal)
                return
            if deadline.cancelled_caught:
                partial = conn.their_state is not h11.IDLE or bool(conn.trailing_data[0])
                if partial:
                    log.debug(
                        "status endpoint: %s sent no whole request in %g s; closed",
                        peer,
                        self.request_timeout,
                    )
                    await self.respond_and_close(conn, stream, 408, "request too slow\n")
                # else an idle keep-alive connection: closed without a word, as is usual.
                return
            if request is None:
                return  # the client closed between requests
            await self.answer(conn, stream, request)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                await _close_gracefully(stream)
                return
            conn.start_next_cycle()

    async def answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> None:
        path = request.target.partition(b"?")[0]
        route = _ROUTES.get(path)
        head = request.method == b"HEAD"
        if route is None:
            paths = ", ".join(p.decode() for p in _ROUTES)
            await self.send(conn, stream, 404, _TEXT, f"not found; try {paths}\n".encode(), head)
            return
        if request.method not in _ALLOWED_METHODS:
            allow = b", ".join(_ALLOWED_METHODS)
            body = f"only {allow.decode()} here\n".encode()
            await self.send(conn, stream, 405, _TEXT, body, head, [(b"allow", allow)])
            return
        try:
            if route == "status":
                content_type, body = _JSON, status_json(self.snapshot())
            else:
                content_type, body = METRICS_CONTENT_TYPE.encode(), metrics_text(self.snapshot)
        except Exception as exc:
            # Our fault, not the client's: logged where it will be seen.
            log.error(
                "status endpoint: cannot build %s: %s: %s", path.decode(), type(exc).__name__, exc
            )
            await self.send(conn, stream, 500, _TEXT, b"status unavailable; see the log\n", head)
            return
        await self.send(conn, stream, 200, content_type, body, head)

    async def respond_and_close(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: str
    ) -> None:
        """An error response, if the exchange still allows one, then the end of it."""
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self.send(conn, stream, status, _TEXT, text.encode(), False, close=True)
        await _close_gracefully(stream)

    async def send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        content_type: bytes,
        body: bytes,
        head: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            # Live figures: a cached copy would be wrong by the time it is read.
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            *(extra or []),
        ]
        if close:
            headers.append((b"connection", b"close"))
        reason = http.HTTPStatus(status).phrase.encode()
        data = conn.send(h11.Response(status_code=status, reason=reason, headers=headers))
        if body and not head:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        # A client that does not read its response must not hold a connection slot forever.
        with trio.fail_after(self.request_timeout):
            await stream.send_all(data)


class _BodyTooLarge(Exception):
    pass


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, max_head: int
) -> h11.Request | None:
    """The next request, its body read and discarded; ``None`` if the client closed first."""
    event = await _next_event(conn, stream, max_head)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
    size = 0
    while True:
        part = await _next_event(conn, stream, max_head)
        if isinstance(part, h11.Data):
            size += len(part.data)
            if size > _MAX_REQUEST_BODY:
                raise _BodyTooLarge
        elif isinstance(part, h11.EndOfMessage):
            return event
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(part).__name__} in a request")


async def _next_event(conn: h11.Connection, stream: trio.SocketStream, max_head: int) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            size = _RECEIVE_SIZE
            if conn.their_state is h11.IDLE:
                # h11 bounds only a head still incomplete: a whole oversized head arriving in
                # one read would pass. Reading at most one byte past the limit closes that.
                size = max(1, min(size, max_head + 1 - len(conn.trailing_data[0])))
            conn.receive_data(await stream.receive_some(size))
        elif isinstance(event, h11.Event):
            return event
        else:
            # PAUSED: only after a whole request, and converse() then never reads.
            raise RuntimeError("h11 paused while a request was being read")


async def _close_gracefully(stream: trio.SocketStream) -> None:
    """Half-close, then read what the client still sends for a moment, so it gets our reply."""
    with trio.move_on_after(_LINGER):
        try:
            await stream.send_eof()
            while await stream.receive_some(_RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone: nothing left to protect


def _peer(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "a client"
    if isinstance(name, tuple):
        return format_hostport(name[0], name[1])
    return "a unix-socket client"


def _remove_socket_file(listener: trio.SocketListener) -> None:
    made = _unix_files.pop(listener, None)
    if made is not None:
        remove_socket_file(*made)
