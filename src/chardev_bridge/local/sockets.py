"""TCP and unix sockets as the local end: ``tcp:``, ``tcp-listen:``, ``unix:``, ``unix-listen:``."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

import trio

from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.common.starterror import StartError, describe_listen_error
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.net.socketstream import DirectSocketStream

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
        """Bind and listen, replacing a stale socket file left by a previous run.

        A socket file that another process still listens on (another bridge, QEMU) is not
        stale: taking its name would silently cut that process off, so start-up fails.
        """
        try:
            if stat.S_ISSOCK(os.stat(self.path).st_mode) and _is_stale(self.path):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(self.path)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            folder = os.path.dirname(os.path.abspath(self.path))
            why = (
                f"the folder {folder} does not exist"
                if exc.errno == errno.ENOENT and not os.path.isdir(folder)
                else exc.strerror or str(exc)
            )
            raise StartError(
                exc.errno, f"--local unix-listen:{self.path}: cannot listen there: {why}"
            ) from exc
        self._bound_inode = os.stat(self.path).st_ino
        self._listeners = [trio.SocketListener(sock)]
        log.info("listening for local clients on %s", self.describe())

    def describe(self) -> str:
        """``unix-listen PATH``."""
        return f"unix-listen {self.path}"

    async def aclose(self) -> None:
        """Stop listening and remove the socket file, if it is still the one we made."""
        await super().aclose()
        try:
            st = os.stat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._bound_inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _is_stale(path: str) -> bool:
    """Whether nobody listens on the unix socket file ``path`` (it may be removed).

    A listener bound to that path in /proc/net/unix settles it without disturbing anybody.
    Otherwise only a refused connection proves it (a listener would see one connection
    that closes at once). Raises :class:`OSError` when the socket is alive or its state
    cannot be told.
    """
    if _listening_in_proc(path):
        raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on this socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Non-blocking: a unix connect completes or fails at once (EAGAIN: a full backlog).
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except BlockingIOError:
        pass  # the listener's backlog is full: it is alive
    except FileNotFoundError:
        raise  # gone meanwhile: nothing to remove
    except OSError as exc:
        raise OSError(
            exc.errno, f"{path}: cannot tell whether another process listens on it: {exc.strerror}"
        ) from exc
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on this socket")


# /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; __SO_ACCEPTCON in Flags
# marks a listening socket.
_SO_ACCEPTCON = 0x10000


def _listening_in_proc(path: str) -> bool:
    """Whether /proc/net/unix shows a listening socket bound to ``path`` (False if unknown)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _SO_ACCEPTCON:
            return True
    return False
