"""TCP and unix sockets as the local end: ``tcp:``, ``tcp-listen:``, ``unix:``, ``unix-listen:``."""

from __future__ import annotations

import logging

import trio

from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.common.starterror import StartError, describe_listen_error
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.net.socketstream import DirectSocketStream
from chardev_bridge.net.unixlisten import listen_unix, remove_socket_file

log = logging.getLogger("chardev_bridge")


class TcpConnectEnd(LocalEnd):
    """Connects to HOST:PORT for each session."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def start(self) -> None:
        """Nothing to prepare: the connection is made per session."""
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """A new TCP connection to the local service."""
        return DirectSocketStream.adopt(await trio.open_tcp_stream(self.host, self.port))

    def describe(self) -> str:
        """``tcp HOST:PORT``."""
        return f"tcp {format_hostport(self.host, self.port)}"


class UnixConnectEnd(LocalEnd):
    """Connects to a unix socket (e.g. QEMU's ``-chardev socket,path=...,server=on``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def start(self) -> None:
        """Nothing to prepare: the connection is made per session."""
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """A new connection to the unix socket."""
        return DirectSocketStream.adopt(await trio.open_unix_socket(self.path))

    def describe(self) -> str:
        """``unix PATH``."""
        return f"unix {self.path}"


class _ListenEnd(LocalEnd):
    """Accepts one local client per session; others wait in the backlog meanwhile."""

    def __init__(self) -> None:
        self._listeners: list[trio.SocketListener] = []

    async def next_stream(self) -> trio.abc.Stream:
        """Wait for the next local client."""
        if len(self._listeners) == 1:
            stream = await self._listeners[0].accept()
        else:
            stream = await _accept_any(self._listeners)
        log.info("local client connected on %s", self.describe())
        return DirectSocketStream.adopt(stream)

    async def aclose(self) -> None:
        """Stop listening."""
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []


async def _accept_any(listeners: list[trio.SocketListener]) -> trio.SocketStream:
    """Accept on whichever listener gets a client first (IPv4 and IPv6 of one name)."""
    if len(listeners) == 1:
        return await listeners[0].accept()  # OSError as itself, not in an ExceptionGroup
    send, receive = trio.open_memory_channel[trio.SocketStream](0)
    failures: list[OSError] = []
    async with trio.open_nursery() as nursery:

        async def accept(listener: trio.SocketListener) -> None:
            try:
                stream = await listener.accept()
            except OSError as exc:
                failures.append(exc)  # raised below as itself: callers handle OSError
                nursery.cancel_scope.cancel()
                return
            try:
                await send.send(stream)
            except BaseException:
                # Another listener won the race: this client must not be left hanging.
                await trio.aclose_forcefully(stream)
                raise

        for listener in listeners:
            nursery.start_soon(accept, listener)
        stream = await receive.receive()
        nursery.cancel_scope.cancel()
    if failures:
        raise failures[0]
    return stream


class TcpListenEnd(_ListenEnd):
    """Listens on HOST:PORT for local clients."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    async def start(self) -> None:
        """Bind and listen."""
        try:
            self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            option = f"--local tcp-listen:{format_hostport(self.host, self.port)}"
            why = describe_listen_error(exc, option, self.host, self.port)
            raise StartError(exc.errno, why) from exc
        if self.port == 0:
            self.port = self._listeners[0].socket.getsockname()[1]
        log.info("listening for local clients on %s", self.describe())

    def describe(self) -> str:
        """``tcp-listen HOST:PORT``."""
        return f"tcp-listen {format_hostport(self.host, self.port)}"


class UnixListenEnd(_ListenEnd):
    """Listens on a unix socket path for local clients; the path is removed at exit."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._bound_inode: int | None = None

    async def start(self) -> None:
        """Bind and listen, replacing a stale socket file left by a previous run (one that
        another process still listens on, another bridge or QEMU, is an error)."""
        listener, self._bound_inode = await listen_unix(
            self.path, f"--local unix-listen:{self.path}"
        )
        self._listeners = [listener]
        log.info("listening for local clients on %s", self.describe())

    def describe(self) -> str:
        """``unix-listen PATH``."""
        return f"unix-listen {self.path}"

    async def aclose(self) -> None:
        """Stop listening and remove the socket file, if it is still the one we made."""
        await super().aclose()
        remove_socket_file(self.path, self._bound_inode)
