"""``--viewers``: read-only attachments that watch what the remote sends.

A viewer gets, on attach, the last ``replay`` bytes the remote sent, then everything it
sends, live; never what the local end sent. What a viewer sends is read, counted and thrown
away: a viewer can never write to the console, whoever else comes or goes.

The data path only calls :meth:`ViewerHub.feed`, which appends to each viewer's own bounded
queue and returns: a viewer that stops reading costs nobody time, and once it is more than
``queue_max`` bytes (plus its replay) behind it is disconnected. Memory is therefore bounded
by ``max_viewers * (queue_max + replay)`` plus the replay ring, whatever viewers do; in practice
far less, since every queue is a suffix of the same stream made of the same chunk objects.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import deque
from dataclasses import dataclass, field

import trio

from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.common.starterror import StartError, describe_listen_error
from chardev_bridge.net.unixlisten import listen_unix, remove_socket_file
from chardev_bridge.share.config import ViewersConfig
from chardev_bridge.share.stats import ShareCounters

log = logging.getLogger("chardev_bridge")

#: A viewer's writes are read in pieces of this size and thrown away.
_DISCARD_CHUNK = 64 * 1024
#: Queued chunks smaller than this are joined into one send.
_JOIN_BELOW = 64 * 1024
# Chunks smaller than this are gathered into one per viewer: a console echoing keystrokes to
# a stalled viewer must cost its bound in bytes, not a Python object per byte.
_GATHER_BELOW = 4096


@dataclass(eq=False)
class _Viewer:
    """One attached viewer and what waits to be sent to it."""

    number: int
    peer: str
    stream: trio.SocketStream
    chunks: deque[bytes | bytearray] = field(default_factory=deque)
    queued: int = 0
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sent: int = 0
    discarded: int = 0
    # Set when it fell too far behind: how many bytes it had not taken.
    behind: int | None = None


class ViewerHub:
    """The viewer socket, the replay ring and the viewers; :meth:`feed` is the tap."""

    def __init__(self, cfg: ViewersConfig, counters: ShareCounters | None = None) -> None:
        self.cfg = cfg
        self.counters = counters if counters is not None else ShareCounters()
        self._ring = bytearray()
        self._viewers: dict[int, _Viewer] = {}
        self._numbers = 0
        self._listeners: list[trio.SocketListener] = []
        self._bound_inode: int | None = None
        # The replay a viewer starts with does not count against how far behind it may fall.
        self._limit = cfg.queue_max + cfg.replay

    @property
    def watching(self) -> int:
        """Viewers attached right now."""
        return len(self._viewers)

    # -- the data path's side -----------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes the remote sent: into the replay ring and each viewer's queue; never waits."""
        replay = self.cfg.replay
        if replay and len(data) >= replay:
            self._ring = bytearray(data[-replay:])
        elif replay:
            self._ring += data
            if len(self._ring) > replay:
                del self._ring[: len(self._ring) - replay]
        if not self._viewers:
            return
        chunk = bytes(data)  # the caller may reuse its buffer; viewers share this copy
        for viewer in self._viewers.values():
            if viewer.behind is not None:
                continue
            if viewer.queued + len(chunk) > self._limit:
                viewer.behind = viewer.queued + len(chunk)
                viewer.chunks.clear()
                viewer.queued = 0
                viewer.scope.cancel()
                continue
            last = viewer.chunks[-1] if viewer.chunks else None
            if len(chunk) >= _GATHER_BELOW:
                viewer.chunks.append(chunk)
            elif isinstance(last, bytearray):
                last += chunk  # a gathering of small chunks (never one being sent)
            else:
                viewer.chunks.append(bytearray(chunk))
            viewer.queued += len(chunk)
            viewer.wake.set()

    # -- the socket ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen; a failure is a :class:`StartError` naming ``--viewers``."""
        if self.cfg.kind == "unix-listen":
            self._listeners = [await self._listen_unix()]
        else:
            try:
                self._listeners = await trio.open_tcp_listeners(self.cfg.port, host=self.cfg.host)
            except OSError as exc:
                option = f"--viewers tcp-listen:{format_hostport(self.cfg.host, self.cfg.port)}"
                why = describe_listen_error(exc, option, self.cfg.host, self.cfg.port)
                raise StartError(exc.errno, why) from exc
        log.info(
            "viewers may attach on %s (read-only, up to %d)", self.describe(), self.cfg.max_viewers
        )

    def describe(self) -> str:
        """Where viewers attach, with the port a ``tcp-listen:…:0`` got."""
        if self.cfg.kind == "unix-listen":
            return str(self.cfg.path)
        host, port = self._listeners[0].socket.getsockname()[:2]
        return format_hostport(host, port)

    async def _listen_unix(self) -> trio.SocketListener:
        path = str(self.cfg.path)
        listener, self._bound_inode = await listen_unix(
            path, f"--viewers unix-listen:{path}", mode=self.cfg.mode
        )
        return listener

    async def aclose(self) -> None:
        """Stop listening and remove the socket file, if it is still the one we made."""
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []
        if self.cfg.kind == "unix-listen":
            remove_socket_file(str(self.cfg.path), self._bound_inode)

    async def serve(self) -> None:
        """Accept viewers until cancelled."""
        async with trio.open_nursery() as nursery:
            for listener in self._listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors, say: the console goes on, viewers wait.
                log.warning("viewers: cannot accept: %s", exc.strerror or exc)
                await trio.sleep(0.5)
                continue
            nursery.start_soon(self._attend, stream)

    # -- one viewer ---------------------------------------------------------------------

    async def _attend(self, stream: trio.SocketStream) -> None:
        peer = self._peer_name(stream)
        if len(self._viewers) >= self.cfg.max_viewers:
            self.counters.viewer_refused()
            log.warning(
                "viewer from %s refused: %d viewers are watching (--max-viewers)",
                peer,
                len(self._viewers),
            )
            with trio.move_on_after(1):
                try:
                    await stream.send_all(
                        b"chardev-bridge: too many viewers (--max-viewers), try later\r\n"
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        self._numbers += 1
        viewer = _Viewer(self._numbers, peer, stream)
        if self._ring:
            viewer.chunks.append(bytes(self._ring))
            viewer.queued = len(self._ring)
        self._viewers[viewer.number] = viewer
        self.counters.viewer_attached()
        log.info("viewer %d attached from %s (%d watching)", viewer.number, peer, self.watching)
        began = trio.current_time()
        try:
            with viewer.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._discard_input, viewer)
                    await self._send_loop(viewer)
                    nursery.cancel_scope.cancel()
        finally:
            del self._viewers[viewer.number]
            self.counters.viewer_detached(dropped=viewer.behind is not None)
            await trio.aclose_forcefully(stream)
            if viewer.behind is not None:
                log.warning(
                    "viewer %d disconnected: it fell %d bytes behind (more than %d unread);"
                    " a viewer that stops reading never slows the console",
                    viewer.number,
                    viewer.behind,
                    self._limit,
                )
            log.info(
                "viewer %d detached after %.1fs: %d bytes sent, %d bytes discarded (%d watching)",
                viewer.number,
                trio.current_time() - began,
                viewer.sent,
                viewer.discarded,
                self.watching,
            )

    async def _send_loop(self, viewer: _Viewer) -> None:
        while True:
            while not viewer.chunks:
                viewer.wake = trio.Event()
                await viewer.wake.wait()
            parts = [viewer.chunks.popleft()]
            size = len(parts[0])
            while viewer.chunks and size < _JOIN_BELOW:
                parts.append(viewer.chunks.popleft())
                size += len(parts[-1])
            chunk = b"".join(parts) if len(parts) > 1 else parts[0]
            try:
                await viewer.stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # the viewer left
            viewer.queued -= len(chunk)
            viewer.sent += len(chunk)
            self.counters.viewer_traffic(sent=len(chunk))

    async def _discard_input(self, viewer: _Viewer) -> None:
        """Read what the viewer types and throw it away: viewers are read-only."""
        while True:
            try:
                data = await viewer.stream.receive_some(_DISCARD_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                viewer.scope.cancel()
                return
            if not data:
                # The viewer left. (A viewer that only half-closed is let go too: a full
                # close looks the same, and a departed viewer must not hold its slot while
                # the console is quiet.)
                viewer.scope.cancel()
                return
            viewer.discarded += len(data)
            self.counters.viewer_traffic(discarded=len(data))

    def _peer_name(self, stream: trio.SocketStream) -> str:
        sock = stream.socket
        if sock.family == socket.AF_UNIX:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                pid, uid, _gid = struct.unpack("3i", creds)
                return f"{self.cfg.path} (uid {uid}, pid {pid})"
            except OSError:
                return str(self.cfg.path)
        try:
            host, port = sock.getpeername()[:2]
        except OSError:
            return "a peer that has already left"  # reset before it was accepted
        return format_hostport(host, port)
