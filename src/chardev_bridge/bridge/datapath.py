"""The data path: two pumps between a local and a remote stream.

Read this top to bottom; it is the whole of how bytes move.

* **Back-pressure, not buffering.** Each pump holds at most one chunk: it reads only after
  the previous chunk was fully written. A slow side stalls the other, nothing piles up.
* **Exactly once.** A chunk read from the local end is kept in :class:`Carry` until the remote
  has taken it. If the session dies first, a persistent local end (pty, tty) hands it to the
  next session instead of losing it (the piece being sent when it died, at most
  ``CARRY_PIECE``, may then arrive twice: TCP cannot say how much of it the dead peer got).
  Bytes a remote may have thrown away unread (sent while it said nothing, until
  :mod:`chardev_bridge.bridge.replay`'s rules say it took the session) are kept in
  :attr:`Session.replay`, so that the bridge can give them to the next session when it
  judges the remote rejected us.
* **Half-close.** Local EOF → close_notify (``send_eof``) to the remote, and the reverse
  direction keeps flowing until the remote ends too. Remote EOF → everything that arrived is
  delivered; then a socket local end gets ``send_eof`` and may still answer (the session ends
  once it has been quiet for ``grace`` seconds), while a persistent end (a serial line) simply
  ends the session: it outlives remote peers.
* **Graceful end.** :meth:`Session.drain` (shutdown, a replacing client, the idle timeout) stops
  both reads, lets the bytes already read reach their destination, then sends close_notify.
  Once draining, or once the remote has failed, the session gets ``grace`` seconds more: a
  local end nobody reads must not hold the line for a remote that is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from chardev_bridge.bridge.replay import ReplayStep, next_step
from chardev_bridge.bridge.verdict import Failure, Side, failure_from, first_or_telling
from chardev_bridge.bridge.watch import (
    Unread,
    WatchFacts,
    end_reason,
    looks_each_interval,
    next_look,
    unread_change,
)
from chardev_bridge.local.base import LocalEnd

log = logging.getLogger("chardev_bridge")

# Bytes per read: large enough that bulk transfers make few wake-ups and few TLS records
# per write, bounded so memory per session stays small.
CHUNK = 256 * 1024

# Bytes handed to the remote per send when the local end outlives the session (a pty, a
# tty): the most a cut session can leave half-sent, for the next session to send again. A
# socket local end ends with its session, so its chunks go whole: one TLS write and one
# send per read (on the bench machine 8-13 % less CPU per byte than two pieces).
CARRY_PIECE = 128 * 1024

STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def keep_read_buffers_off_mmap() -> None:
    """Make glibc serve the data path's read buffers from its heap; call once at start-up.

    Every receive allocates its whole size (:data:`CHUNK`) before the kernel fills a byte of
    it. Above glibc's mmap threshold (128 KiB until a larger block has been freed) each such
    buffer is an mmap, page faults and an munmap: in a bare trio TLS relay on the bench
    machine that added 45 µs of system CPU and 55 µs of latency to every 1-byte echo round
    trip. Freeing one block larger than any buffer raises glibc's dynamic threshold for the
    life of the process. Other allocators just allocate and free the block once.
    """
    bytes(4 * CHUNK)


Tap = Callable[[bytes | bytearray], None]


@dataclass
class Carry:
    """Local bytes read but not yet accepted by a remote; survives the session."""

    # A view, so that taking a piece off the front copies nothing.
    pending: memoryview = field(default_factory=lambda: memoryview(b""))


@dataclass
class SessionStats:
    """What one session moved and how it ended."""

    to_remote: int = 0
    to_local: int = 0
    local_eof: bool = False
    remote_eof: bool = False
    # Why a side failed (not a clean EOF), else None.
    failure: Failure | None = None
    # Why the session was drained (shutdown, replaced, idle), else None.
    ended_by: str | None = None
    last_activity: float = field(default_factory=trio.current_time)


class ReplayCopy:
    """What was sent to a remote that has not yet shown it took the session, kept until
    :mod:`chardev_bridge.bridge.replay`'s rules say it did (no window: nothing is kept)."""

    def __init__(self, window: float, acknowledged: Callable[[], int | None] | None) -> None:
        #: The bytes sent so far; a remote that now closes may have thrown them away unread
        #: (a TLS 1.3 server rejecting our certificate after the handshake).
        self.kept = bytearray()
        self._until = trio.current_time() + window if window > 0 else None
        # What the remote's TCP has acknowledged in all, the sign that it reads (None: unknown).
        self._acknowledged = acknowledged
        self._spoke = trio.Event()

    @property
    def keeping(self) -> bool:
        """Whether what is sent now is still kept."""
        return self._until is not None

    async def before_send(self, size: int) -> None:
        """Apply the rules before ``size`` more bytes go out: keep copying, forget the copy,
        or wait for room to keep more."""
        if self._until is None:
            return
        acknowledged = self._acknowledged() if self._acknowledged is not None else None
        step = next_step(
            kept=len(self.kept),
            piece=size,
            acknowledged=acknowledged,
            window_left=self._until - trio.current_time(),
        )
        if step is ReplayStep.WAIT:
            with trio.move_on_at(self._until):
                await self._spoke.wait()
            # A remote that ended meanwhile cancelled the sender (its bytes stay kept).
            step = ReplayStep.CONFIRMED
        if step is ReplayStep.CONFIRMED:
            self.confirmed()

    def sent(self, piece: memoryview) -> None:
        """``piece`` went out: kept while the copy is."""
        if self._until is not None:
            self.kept += piece

    def confirmed(self) -> None:
        """The remote took the session (it spoke, read, or the window ended): forget."""
        if self._until is not None:
            self._until = None
            self.kept = bytearray()
            self._spoke.set()


class _Reader:
    """Receives from one stream; :meth:`stop` ends a receive in progress.

    The pump runs its whole loop inside :attr:`scope`, and :meth:`stop` cancels that scope
    only while a receive is in progress: cancelling a trio receive loses no data, cancelling
    a send would. One scope per pump rather than one per receive, because entering and
    leaving a cancel scope was a fifth of the bridge's CPU on the 1-byte echo path. A receive
    can still return bytes after a stop (the stream had them in hand at its last checkpoint);
    the pump then sees :attr:`stopped` and delivers them outside the scope.
    """

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self.scope = trio.CancelScope()
        self._receiving = False
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        if self._receiving:
            self.scope.cancel()

    async def receive(self) -> bytes | bytearray | None:
        """The next bytes; ``b""`` at EOF; None once stopped."""
        if self.stopped:
            return None
        self._receiving = True
        try:
            return await self._stream.receive_some(CHUNK)
        finally:
            self._receiving = False


class Session:
    """One local⇄remote splice; :meth:`run` moves the bytes until the session is over."""

    def __init__(
        self,
        local: trio.abc.Stream,
        remote: trio.abc.Stream,
        *,
        local_persistent: bool,
        carry: Carry | None = None,
        idle_timeout: float | None = None,
        tap_to_remote: Tap | None = None,
        tap_to_local: Tap | None = None,
        grace: float = 5.0,
        replay_window: float = 0.0,
        acknowledged: Callable[[], int | None] | None = None,
    ) -> None:
        self.local = local
        self.remote = remote
        self.local_persistent = local_persistent
        self.carry = carry if carry is not None else Carry()
        self.idle_timeout = idle_timeout
        self.tap_to_remote = tap_to_remote
        self.tap_to_local = tap_to_local
        self.stats = SessionStats()
        self._piece = CARRY_PIECE if local_persistent else CHUNK
        self._local_reader = _Reader(local)
        self._remote_reader = _Reader(remote)
        self._up_scope = trio.CancelScope()
        self.grace = grace
        # What the bridge gives the next session when it judges the remote rejected us.
        self.replay = ReplayCopy(replay_window, acknowledged)
        self.replay_window = replay_window
        self._pumps: trio.Nursery | None = None
        # Seconds the session may still take, once it is ending (None: not ending).
        self._end_grace: float | None = None
        self.watch = SessionWatch(self)

    def _end_within_grace(self, grace: float | None = None) -> None:
        grace = self.grace if grace is None else grace
        self._end_grace = grace if self._end_grace is None else min(self._end_grace, grace)
        if self._pumps is not None:
            scope = self._pumps.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + self._end_grace)

    def drain(self, why: str, grace: float | None = None) -> None:
        """End the session gracefully: stop reading, deliver what was read, close_notify;
        cut it after ``grace`` seconds (default: the session's)."""
        if self.stats.ended_by is None:
            self.stats.ended_by = why
        self._local_reader.stop()
        self._remote_reader.stop()
        self._end_within_grace(grace)

    def _fail(self, side: Side, exc: BaseException) -> None:
        stats = self.stats
        # A send can fail on the closed socket before the receive reads the alert the peer
        # sent first; the alert says why, so it is the failure to report.
        stats.failure = first_or_telling(stats.failure, failure_from(exc, side))
        if side == "remote":
            # Stop talking to the dead remote, but let bytes that already arrived from it
            # (still in the kernel or the TLS engine when a send failed) reach the local end.
            self._up_scope.cancel()
            self._end_within_grace()
        elif self._pumps is not None:
            self._pumps.cancel_scope.cancel()

    async def run(self) -> SessionStats:
        """Move bytes both ways until both directions are done; never closes a stream."""
        async with trio.open_nursery() as outer:
            outer.start_soon(self.watch.run)
            async with trio.open_nursery() as pumps:
                self._pumps = pumps
                if self._end_grace is not None:
                    self._end_within_grace(self._end_grace)
                pumps.start_soon(self._local_to_remote)
                pumps.start_soon(self._remote_to_local)
            outer.cancel_scope.cancel()
        return self.stats

    async def _local_to_remote(self) -> None:
        carry, reader = self.carry, self._local_reader
        with self._up_scope:
            with reader.scope:
                while not reader.stopped:
                    if not carry.pending:
                        try:
                            data = await reader.receive()
                        except STREAM_ERRORS as exc:
                            return self._fail("local", exc)
                        if data is None:
                            break
                        if not data:
                            self.stats.local_eof = True
                            break
                        if self.tap_to_remote is not None:
                            self.tap_to_remote(data)
                        carry.pending = memoryview(data)
                        if reader.stopped:
                            break  # stopped while these arrived: sent below, out of the scope
                    if not await self._send_piece():
                        return
            # Stopped (drain): the bytes already read still go.
            while carry.pending:
                if not await self._send_piece():
                    return
            await _send_eof(self.remote)

    async def _send_piece(self) -> bool:
        """Send the next piece of the carry to the remote; False once the remote failed."""
        carry = self.carry
        # In pieces, so that a session cut mid-chunk leaves at most one piece that the next
        # session may get again (part of it may have been sent).
        piece = carry.pending[: self._piece]
        if self.replay.keeping:  # (a coroutine call per piece otherwise, on the echo path too)
            await self.replay.before_send(len(piece))
        try:
            await self.remote.send_all(piece)
        except STREAM_ERRORS as exc:
            self._fail("remote", exc)
            return False
        self.stats.to_remote += len(piece)
        self.stats.last_activity = trio.current_time()
        self.replay.sent(piece)
        carry.pending = carry.pending[len(piece) :]
        return True

    async def _remote_to_local(self) -> None:
        stats, reader = self.stats, self._remote_reader
        held: bytes | bytearray | None = None
        ended = False
        with reader.scope:
            while True:
                try:
                    data = await reader.receive()
                except STREAM_ERRORS as exc:
                    return self._fail("remote", exc)
                if data is None:
                    return
                if not data:
                    ended = True
                    break
                if reader.stopped:
                    held = data  # stopped while these arrived: delivered below, out of the scope
                    break
                if not await self._deliver(data):
                    return
        if held is not None:
            await self._deliver(held)
        if not ended:
            return  # stopped: the session is draining
        stats.remote_eof = True
        stats.last_activity = trio.current_time()
        self.watch.poke()
        if self.local_persistent:
            # The line stays; this remote session is over. Cancelling is safe: a chunk
            # the other pump holds stays in `carry` for the next session.
            self._up_scope.cancel()
        else:
            await _send_eof(self.local)

    async def _deliver(self, data: bytes | bytearray) -> bool:
        """Write bytes from the remote to the local end; False once the local end failed."""
        self.replay.confirmed()  # the remote talks to us: it has accepted the session
        if self.tap_to_local is not None:
            self.tap_to_local(data)
        self.watch.delivery_started()
        try:
            await self.local.send_all(data)
        except STREAM_ERRORS as exc:
            self._fail("local", exc)
            return False
        self.watch.delivery_done()
        self.stats.to_local += len(data)
        self.stats.last_activity = trio.current_time()
        return True


class SessionWatch:
    """Applies :mod:`chardev_bridge.bridge.watch`'s rules to one session: reports a local end
    nobody reads, ends a session that has gone quiet for good.

    It sleeps until the rules' next deadline, or for good when there is nothing to watch; a
    delivery (unless it already looks each interval) or the remote's end wakes it.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        #: When the delivery the local end is taking began (None: no delivery in progress).
        self.delivering_since: float | None = None
        self._poke = trio.Event()
        self._each_interval = False
        self._to_local_at_last_look = 0

    def delivery_started(self) -> None:
        """Bytes from the remote are being written to the local end."""
        self.delivering_since = trio.current_time()
        if not self._each_interval:
            self._poke.set()

    def delivery_done(self) -> None:
        """The local end took the delivery."""
        self.delivering_since = None

    def poke(self) -> None:
        """Something the rules depend on changed (the remote ended): look again now."""
        self._poke.set()

    def _local_written(self) -> int | None:
        """What the local end has handed to the OS so far; None for an end that does not
        count (a socket's stream), where the end of a delivery is the only progress."""
        local = self._session.local
        return local.bytes_written if isinstance(local, LocalEnd) else None

    def _facts(self) -> WatchFacts:
        session, stats = self._session, self._session.stats
        return WatchFacts(
            now=trio.current_time(),
            last_activity=stats.last_activity,
            delivering_since=self.delivering_since,
            idle_timeout=session.idle_timeout,
            grace=session.grace,
            remote_eof=stats.remote_eof,
            local_eof=stats.local_eof,
            local_persistent=session.local_persistent,
        )

    async def run(self) -> None:
        """Watch until cancelled (the session's end)."""
        session, stats = self._session, self._session.stats
        warned = False
        written = self._local_written()
        while True:
            moving = stats.to_local != self._to_local_at_last_look
            self._to_local_at_last_look = stats.to_local
            delivering = self.delivering_since is not None
            self._each_interval = looks_each_interval(
                moving=moving, delivering=delivering, warned=warned
            )
            self._poke = trio.Event()
            with trio.move_on_at(next_look(self._facts(), each_interval=self._each_interval)):
                await self._poke.wait()
                continue  # woken early: work out the next look again
            # A slow reader (a 9600-baud line) takes a chunk over many seconds: what the
            # local end has written since the last look is progress, not a stall.
            was, written = written, self._local_written()
            if written != was:
                stats.last_activity = trio.current_time()
                if self.delivering_since is not None:
                    self.delivering_since = stats.last_activity
            facts = self._facts()
            change = unread_change(facts, warned=warned)
            since = facts.delivering_since
            if change is Unread.STALLED and since is not None:  # (a stall has a delivery)
                warned = True
                log.warning(
                    "the local end has taken no bytes for %.0fs: the remote peer is stalled"
                    " until something reads it (see --when-unread)",
                    facts.now - since,
                )
            elif change is Unread.READING_AGAIN:
                warned = False
                log.info("the local end is being read again")
            reason = end_reason(facts)
            if reason is not None:
                session.drain(reason, grace=0)


async def splice(
    local: trio.abc.Stream,
    remote: trio.abc.Stream,
    *,
    local_persistent: bool,
    carry: Carry | None = None,
) -> SessionStats:
    """Run a :class:`Session` with default settings and return its statistics."""
    session = Session(local, remote, local_persistent=local_persistent, carry=carry)
    return await session.run()


async def _send_eof(stream: trio.abc.Stream) -> None:
    """Half-close ``stream`` when it can; a peer that is already gone is no error here."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        try:
            await stream.send_eof()
        except STREAM_ERRORS:
            pass
