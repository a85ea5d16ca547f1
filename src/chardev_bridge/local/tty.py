"""An existing terminal device as the local end (``tty:PATH``), e.g. QEMU's ``-chardev pty``
or a USB serial adapter.

The device may vanish (QEMU restarted, adapter unplugged): reads and writes then wait while
the path is reopened with backoff, and carry on once it is back. The remote session never
notices, and no byte is dropped on our side.
"""

from __future__ import annotations

import errno
import logging
import os

import trio

from chardev_bridge.backoff import Backoff, RepeatFilter
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.local.termios_raw import make_raw

log = logging.getLogger("chardev_bridge")

_REOPEN_MIN, _REOPEN_MAX = 0.1, 5.0


def _open_raw(path: str) -> int:
    """Open ``path`` read-write in raw mode; an :class:`OSError` naming the path if it fails."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        make_raw(fd)
    except OSError as exc:
        os.close(fd)
        # make_raw only knows the fd; say which path, and "not a tty" rather than ENOTTY's
        # "Inappropriate ioctl for device" (e.g. --local tty:/dev/null or a regular file).
        why = "not a tty" if exc.errno == errno.ENOTTY else exc.strerror
        raise OSError(exc.errno, why, path) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


class TtyEnd(LocalEnd, trio.abc.Stream):
    """A tty or pty slave opened read-write, in raw mode, reopened when it comes back."""

    persistent = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: trio.lowlevel.FdStream | None = None
        self._generation = 0
        self._reopen_lock = trio.Lock()
        self._closed = False
        # Kept across reopens and reset only by a successful read or write, so a device
        # that opens but fails at once is retried with growing delays, not in a tight loop.
        self._backoff = Backoff(_REOPEN_MIN, _REOPEN_MAX)

    async def start(self) -> None:
        """Open the device now: a wrong path is a start-up error, not a retry loop."""
        self._stream = trio.lowlevel.FdStream(_open_raw(self.path))
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """The device itself, for every session."""
        await trio.lowlevel.checkpoint()
        return self

    def describe(self) -> str:
        """``tty PATH``."""
        return f"tty {self.path}"

    async def _current(self) -> tuple[trio.lowlevel.FdStream, int]:
        if self._closed:
            raise trio.ClosedResourceError
        if self._stream is None:
            await self._reopen(self._generation)
        assert self._stream is not None
        return self._stream, self._generation

    async def _lost(self, generation: int, why: str) -> None:
        """The device went away under ``generation``: close it and reopen (once)."""
        async with self._reopen_lock:
            if generation != self._generation:
                return  # the other direction already reopened it
            log.warning("%s is gone (%s); reopening when it comes back", self.describe(), why)
            if self._stream is not None:
                await self._stream.aclose()
                self._stream = None
        await self._reopen(generation)

    async def _reopen(self, generation: int) -> None:
        async with self._reopen_lock:
            if self._stream is not None and generation != self._generation:
                return
            repeats = RepeatFilter()
            await trio.sleep(self._backoff.next_delay())
            while True:
                try:
                    fd = _open_raw(self.path)
                    break
                except OSError as exc:
                    show, count = repeats.should_log(str(exc.strerror))
                    if show and count > 1:
                        log.info(
                            "%s still gone (%s, %d tries)", self.describe(), exc.strerror, count
                        )
                await trio.sleep(self._backoff.next_delay())
            self._stream = trio.lowlevel.FdStream(fd)
            self._generation += 1
            log.info("%s is back", self.describe())

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from the device, waiting across disappearances."""
        while True:
            stream, generation = await self._current()
            try:
                data = await stream.receive_some(max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._closed:
                    raise
                await self._lost(generation, _why(exc))
                continue
            if data:
                self._backoff.reset()
                return data
            await self._lost(generation, "end of file (hangup)")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write bytes to the device, waiting across disappearances.

        A write cut short by the device vanishing is repeated whole on the reopened device:
        the device that vanished took its unread input with it, so nothing is duplicated
        that a reader could have seen.
        """
        while True:
            stream, generation = await self._current()
            try:
                await self._send_counted(stream, data)
                self._backoff.reset()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._closed:
                    raise
                await self._lost(generation, _why(exc))

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the device can take more bytes."""
        stream, _ = await self._current()
        await stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the device."""
        self._closed = True
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        await trio.lowlevel.checkpoint()


def _why(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno is not None:
        return errno.errorcode.get(cause.errno, str(cause.errno))
    return str(exc) or type(exc).__name__
