"""``--when-unread buffer``: remote bytes wait in a bounded scrollback, never stall the remote.

With the default (``block``) a local end nobody reads stalls the remote peer, which for a VM
console stalls the guest. Here the remote's bytes are accepted at once into a buffer of at most
``limit`` bytes that a background task writes to the local end as it takes them; past the bound
the oldest bytes are dropped, counted and logged.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger("chardev_bridge")

_WRITE_CHUNK = 64 * 1024
_REPORT_EVERY = 10.0


class ScrollbackEnd(trio.abc.Stream):
    """Wraps a persistent local end; ``send_all`` never blocks, :meth:`run` delivers."""

    def __init__(self, inner: trio.abc.Stream, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self._buffer = bytearray()
        # Bytes taken out of the buffer by a write to the local end that has not finished.
        self._in_flight = 0
        self._wakeup = trio.Event()
        self.dropped = 0
        self._reported_dropped = 0
        self._next_report = 0.0
        # Why the local end stopped taking bytes for good; the session then fails as it
        # would in block mode.
        self._failure: BaseException | None = None

    async def run(self) -> None:
        """Deliver the scrollback to the local end forever (run it in the bridge's nursery)."""
        while True:
            if not self._buffer:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            chunk = bytes(self._buffer[:_WRITE_CHUNK])
            del self._buffer[: len(chunk)]
            self._in_flight = len(chunk)
            try:
                await self.inner.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._failure = exc
                self._buffer.clear()
                return
            finally:
                self._in_flight = 0
            if not self._buffer and self.dropped > self._reported_dropped:
                log.warning(
                    "local end read again; %d bytes were dropped from the scrollback in all",
                    self.dropped,
                )
                self._reported_dropped = self.dropped

    @property
    def undelivered(self) -> int:
        """Bytes in the scrollback not yet handed to the local end (a write in progress
        counts whole: how much of it the local end took is not known)."""
        return len(self._buffer) + self._in_flight

    async def flush(self) -> None:
        """Wait until everything in the scrollback was handed to the local end."""
        while self.undelivered:
            await trio.sleep(0.02)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Append to the scrollback, dropping the oldest bytes past the limit."""
        if self._failure is not None:
            raise trio.BrokenResourceError(str(self._failure)) from self._failure
        self._buffer += data
        excess = len(self._buffer) - self.limit
        if excess > 0:
            del self._buffer[:excess]
            self.dropped += excess
            self._report()
        self._wakeup.set()
        await trio.lowlevel.checkpoint()

    def _report(self) -> None:
        now = trio.current_time()
        if now >= self._next_report:
            self._next_report = now + _REPORT_EVERY
            log.warning(
                "the local end is not reading: scrollback full at %d bytes, %d oldest bytes"
                " dropped so far (--when-unread buffer)",
                self.limit,
                self.dropped,
            )

    async def wait_send_all_might_not_block(self) -> None:
        """Never blocks."""
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Reads come straight from the local end."""
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        """The wrapped end is owned (and closed) by the bridge."""
        await trio.lowlevel.checkpoint()
