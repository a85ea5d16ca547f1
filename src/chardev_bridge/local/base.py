"""What every kind of local end offers the bridge."""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from types import TracebackType

import trio


class LocalEnd(trio.abc.AsyncResource, ABC):
    """A source of local byte streams: one for the bridge's life, or one per session.

    A *persistent* end (pty, tty, stdio) is one stream that outlives remote sessions: the
    bridge never closes it between sessions, and a remote EOF ends the session but not the
    line. Other ends (sockets) hand out a new stream per session, closed with it.
    """

    persistent: bool = False
    #: Whether the end can reach its EOF by itself at any moment (piped stdin, a socket
    #: client), not only when someone closes a device.
    ends_by_itself: bool = True
    #: Set by a persistent end once its stream has ended for good (stdin EOF): nothing more
    #: will ever come from it, so the bridge stops after the current session.
    exhausted: bool = False
    #: Bytes send_all has handed to the OS so far; lets the data path tell a slow reader
    #: from a stuck one.
    bytes_written: int = 0
    _writing: bool = False

    @property
    def pty_path(self) -> str | None:
        """The path of the pty the bridge made (None: not a pty end)."""
        return None

    @abstractmethod
    async def start(self) -> None:
        """Open, bind or create the end; called once before any session."""

    @abstractmethod
    async def next_stream(self) -> trio.abc.Stream:
        """The stream for the next session (connects or accepts for socket ends)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for log lines, e.g. ``pty /dev/pts/4``."""

    def _before_write(self) -> None:
        """Called before each write of :meth:`_send_counted` (a pty re-asserts raw mode)."""

    async def _send_counted(
        self, stream: trio.lowlevel.FdStream, data: bytes | bytearray | memoryview
    ) -> None:
        """``stream.send_all(data)``, adding each write to :attr:`bytes_written` as it happens.

        FdStream.send_all only returns once the whole chunk is written, which a 9600-baud
        reader takes many seconds over; counting each write shows that progress. Errors are
        FdStream's: ClosedResourceError once closed, BrokenResourceError from the OSError.
        """
        if self._writing:
            # As FdStream would say: two writers at once would interleave their bytes.
            raise trio.BusyResourceError("another task is writing to this local end")
        self._writing = True
        try:
            await self._write_counted(stream, data)
        finally:
            self._writing = False

    async def _write_counted(
        self, stream: trio.lowlevel.FdStream, data: bytes | bytearray | memoryview
    ) -> None:
        await trio.lowlevel.checkpoint()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                self._before_write()
                try:
                    # fileno() is -1 once the stream is closed: EBADF below, not another fd.
                    with view[sent:] as remaining:
                        n = os.write(stream.fileno(), remaining)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(stream.fileno())
                    continue
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        raise trio.ClosedResourceError("file was already closed") from None
                    raise trio.BrokenResourceError from exc
                sent += n
                self.bytes_written += n

    async def aclose(self) -> None:
        """Release everything (remove links, listening sockets)."""
        await trio.lowlevel.checkpoint()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: the link and socket files must go even when shutdown is a cancellation.
        with trio.CancelScope(shield=True):
            await self.aclose()
