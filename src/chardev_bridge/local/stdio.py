"""Standard input and output as the local end (``stdio``)."""

from __future__ import annotations

import os
import stat

import trio

from chardev_bridge.local.base import LocalEnd


def _private_fd(fd: int, flags: int) -> int:
    """A descriptor for what ``fd`` refers to, with an open file description of our own.

    trio sets O_NONBLOCK on the file description, which a plain ``dup`` shares with every
    process on the same terminal or pipe. Reopening through /proc gives ttys and pipes a
    description of our own. Regular files are dup'ed (a reopened one would lose its offset and
    O_APPEND: ``>> log`` would be overwritten), and so are sockets, which cannot be reopened.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        try:
            return os.open(f"/proc/self/fd/{fd}", flags | os.O_NOCTTY)
        except OSError:
            pass
    return os.dup(fd)


class StdioEnd(LocalEnd, trio.abc.HalfCloseableStream):
    """Reads standard input, writes standard output; EOF on stdin ends it for good."""

    persistent = True

    def __init__(self) -> None:
        self._in: trio.lowlevel.FdStream | None = None
        self._out: trio.lowlevel.FdStream | None = None

    async def start(self) -> None:
        """Take private descriptors for fds 0 and 1."""
        self._in = trio.lowlevel.FdStream(_private_fd(0, os.O_RDONLY))
        self._out = trio.lowlevel.FdStream(_private_fd(1, os.O_WRONLY))
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """stdio itself, for every session."""
        await trio.lowlevel.checkpoint()
        return self

    def describe(self) -> str:
        """``stdio``."""
        return "stdio"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from stdin; ``b""`` at its end."""
        if self._in is None:
            raise trio.ClosedResourceError("stdio is closed")
        data = await self._in.receive_some(max_bytes)
        if not data:
            self.exhausted = True
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write to stdout."""
        if self._out is None:
            raise trio.ClosedResourceError("stdout was closed by send_eof")
        await self._send_counted(self._out, data)

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until stdout can take more bytes."""
        if self._out is None:
            raise trio.ClosedResourceError("stdout was closed by send_eof")
        await self._out.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Close stdout so that the reader sees EOF: no copy of it may stay open."""
        if self._out is not None:
            await self._out.aclose()
            self._out = None
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close our descriptors (fds 0 and 1 themselves stay)."""
        # Closed without a checkpoint in between, so that a cancellation cannot leave one open.
        for stream in (self._in, self._out):
            if stream is not None:
                stream.close()
        self._in = self._out = None
        await trio.lowlevel.checkpoint()
