"""The local end as the bridge holds it across sessions.

A persistent end (pty, tty, stdio) is one line that outlives remote sessions. Between
sessions something must read it, or a writer there would block: ``--when-disconnected
drop`` discards what it reads, a hold limit keeps it (aged, see ``local.holding``) for the
next session, ``block`` leaves it unread. Remote bytes the line does not take go to a
bounded scrollback with ``--when-unread buffer``. A socket end hands out one stream per
session and none of this applies.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Literal

import trio

from chardev_bridge.bridge.datapath import STREAM_ERRORS, Carry
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.local.holding import HeldBytes, dropped_line
from chardev_bridge.local.scrollback import ScrollbackEnd
from chardev_bridge.share.taps import Taps
from chardev_bridge.tls.errors import describe_tls_error

log = logging.getLogger("chardev_bridge")


class LocalLine:
    """A local end, its persistent stream if it has one, and what is read between sessions."""

    def __init__(
        self,
        local: LocalEnd,
        *,
        taps: Taps | None,
        when_unread: Literal["block", "buffer"],
        scrollback: int,
        when_disconnected: Literal["block", "drop"] | None,
        hold_limit: float | None,
        grace: float,
        dropped: Counter[str] | None = None,
    ) -> None:
        self.local = local
        self.taps = taps
        self.carry = Carry()
        self.grace = grace
        self._when_unread = when_unread
        self._scrollback_size = scrollback
        self._when_disconnected = when_disconnected
        self._hold_limit = hold_limit
        self._stream: trio.abc.Stream | None = None
        self._scrollback: ScrollbackEnd | None = None
        self._held: HeldBytes | None = None
        self._idle_scope: trio.CancelScope | None = None
        self._idle_reader_gone = trio.Event()
        self._dropped_while_idle = 0
        self._scrollback_loss_logged = False
        self._wait_idle: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint
        self._stopping: Callable[[], bool] = lambda: False
        #: Bytes dropped, by reason (status counters).
        self.dropped: Counter[str] = dropped if dropped is not None else Counter()

    @property
    def persistent(self) -> bool:
        """Whether the local end is one line for the bridge's life."""
        return self.local.persistent

    def describe(self) -> str:
        """The local end in words, for log lines."""
        return self.local.describe()

    async def open(
        self,
        nursery: trio.Nursery,
        wait_idle: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        """Open a persistent line and start what serves it between sessions in ``nursery``;
        ``wait_idle`` returns once no session holds the line; once ``stopping``, no next
        session will take what would be read."""
        self._wait_idle = wait_idle
        self._stopping = stopping
        if not self.local.persistent:
            return
        self._stream = await self.local.next_stream()
        if self._when_unread == "buffer":
            self._scrollback = ScrollbackEnd(self._stream, self._scrollback_size)
            self._stream = self._scrollback
            nursery.start_soon(self._scrollback.run)
        if self._when_disconnected == "drop":
            nursery.start_soon(self._drop_while_disconnected)
        elif self._hold_limit is not None:
            self._held = HeldBytes(self._hold_limit)
            nursery.start_soon(self._hold_while_disconnected, self._held)

    async def stream(self) -> trio.abc.Stream:
        """The local stream for a session: the line itself, or a new connection."""
        if self._stream is not None:
            return self._stream
        return await self.local.next_stream()

    def holds_bytes(self) -> bool:
        """Whether local bytes wait for a session (carried over, or held meanwhile)."""
        return bool(self.carry.pending) or (self._held is not None and len(self._held) > 0)

    async def begin_session(self) -> None:
        """A session is about to use the line: stop reading it here, and hand the session
        what may still be sent of the bytes held meanwhile."""
        while self._idle_scope is not None:
            # Cancelling a trio receive loses nothing: the bytes go to the session instead.
            # The session may read only once the idle reader has really left its receive.
            self._idle_scope.cancel()
            await self._idle_reader_gone.wait()
        if self._dropped_while_idle:
            log.warning("%d local bytes were dropped while disconnected", self._dropped_while_idle)
            self._dropped_while_idle = 0
        if self._held is not None:
            self._hand_over_held(self._held)

    def report_unsent(self) -> None:
        """Say how many local bytes were read and never sent, as the bridge ends."""
        unsent = len(self.carry.pending) + (len(self._held) if self._held is not None else 0)
        if unsent:
            log.warning(
                "%d local bytes read from %s were never sent: no remote took them before the"
                " bridge ended",
                unsent,
                self.describe(),
            )

    async def deliver_scrollback(self, deadline: float | None = None) -> None:
        """Before the bridge ends: give the local end until ``deadline`` (default: in
        ``grace`` seconds) to read what waits in the scrollback, and say what it left."""
        scrollback = self._scrollback
        if scrollback is None:
            return
        if deadline is None:
            deadline = trio.current_time() + self.grace
        with trio.move_on_at(deadline):
            await scrollback.flush()
        if scrollback.undelivered and not self._scrollback_loss_logged:
            # A shutdown and the end of the last session can both get here.
            self._scrollback_loss_logged = True
            self.dropped["unread"] += scrollback.undelivered
            log.warning(
                "local end %s did not read the last %d bytes of the scrollback; they are lost",
                self.describe(),
                scrollback.undelivered,
            )

    async def _drop_while_disconnected(self) -> None:
        def drop(data: bytes | bytearray) -> None:
            if self._dropped_while_idle == 0:
                log.warning("no remote connected: dropping local bytes (--when-disconnected drop)")
            self._dropped_while_idle += len(data)
            self.dropped["disconnected"] += len(data)

        await self._read_between_sessions(drop)

    async def _hold_while_disconnected(self, held: HeldBytes) -> None:
        """Read local bytes into ``held`` with the time they arrived; reading stops while
        ``held`` is full, until its oldest bytes age out."""

        def begin() -> None:
            if self.carry.pending:
                # What the last session read but could not send is held from its end on.
                held.add(bytes(self.carry.pending), trio.current_time())
                self.carry.pending = memoryview(b"")

        async def room() -> int:
            held.expire(trio.current_time())
            while not held.room():
                await trio.sleep_until(held.next_expiry())
                held.expire(trio.current_time())
            return held.room()

        await self._read_between_sessions(
            lambda data: held.add(data, trio.current_time()), room=room, begin=begin
        )

    async def _read_between_sessions(
        self,
        keep: Callable[[bytes | bytearray], None],
        *,
        room: Callable[[], Awaitable[int | None]] | None = None,
        begin: Callable[[], None] | None = None,
    ) -> None:
        """Between sessions, read the line and ``keep`` what it says (at most what ``room``
        allows per read); :meth:`begin_session` stops the read when a session begins."""
        assert self._stream is not None
        while True:
            await self._wait_idle()
            if self._stopping():
                return  # no next session will take what would be read now
            if begin is not None:
                begin()
            self._idle_reader_gone = trio.Event()
            try:
                with trio.CancelScope() as self._idle_scope:
                    while True:
                        size = await room() if room is not None else None
                        try:
                            data = await self._stream.receive_some(size)
                        except STREAM_ERRORS as exc:
                            # The next session meets the same failure and reports it too.
                            log.error(
                                "local end %s failed while disconnected: %s",
                                self.describe(),
                                describe_tls_error(exc),
                            )
                            return
                        if not data:
                            return  # its end: the next session reads it again
                        if self.taps is not None:
                            self.taps.to_remote(data)
                        keep(data)
            finally:
                self._idle_scope = None
                self._idle_reader_gone.set()

    def _hand_over_held(self, held: HeldBytes) -> None:
        held.expire(trio.current_time())
        dropped = held.take_dropped()
        if dropped:
            self.dropped["held_too_long"] += dropped
            log.warning("%s", dropped_line(dropped, held.max_age))
        if len(held):
            self.carry.pending = memoryview(held.take() + bytes(self.carry.pending))
