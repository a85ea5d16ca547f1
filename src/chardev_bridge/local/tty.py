"""An existing terminal device as the local end (``tty:PATH``), e.g. QEMU's ``-chardev pty``."""

from __future__ import annotations

import errno
import os

import trio

from chardev_bridge.local.base import LocalEnd
from chardev_bridge.local.termios_raw import make_raw


class TtyEnd(LocalEnd, trio.abc.Stream):
    """A tty or pty slave opened read-write and put in raw mode.

    EIO from the device (the pty master was closed: QEMU exited) is an end of stream.
    """

    persistent = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: trio.lowlevel.FdStream | None = None

    async def start(self) -> None:
        """Open the device without making it our controlling terminal."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            make_raw(fd)
        except OSError:
            os.close(fd)
            raise
        self._stream = trio.lowlevel.FdStream(fd)
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """The device itself, for every session."""
        await trio.lowlevel.checkpoint()
        return self

    def describe(self) -> str:
        """``tty PATH``."""
        return f"tty {self.path}"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from the device; ``b""`` once its other side is gone."""
        assert self._stream is not None
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.EIO):
                raise
            data = b""
        if not data:
            self.exhausted = True
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write bytes to the device."""
        assert self._stream is not None
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the device can take more bytes."""
        assert self._stream is not None
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the device."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        await trio.lowlevel.checkpoint()
