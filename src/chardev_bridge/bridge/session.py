"""One session from splice to verdict: run the data path, judge how it ended, act on it.

The judging itself is :func:`chardev_bridge.bridge.verdict.judge_end`, on typed facts; here
are the trio parts around it: the replay window a TLS 1.3 client keeps, holding our
close_notify until the server's verdict is in, freeing the slot before the peer can see the
end, and the one log line that says how the session went.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.datapath import Carry, Session, SessionStats
from chardev_bridge.bridge.line import LocalLine
from chardev_bridge.bridge.remote import RemoteSession
from chardev_bridge.bridge.replay import QUICK_REJECT_SECONDS, replay_window
from chardev_bridge.bridge.slots import ActiveSession, SessionSlots
from chardev_bridge.bridge.verdict import EndFacts, Failure, Loudness, Verdict, judge_end
from chardev_bridge.common.backoff import RepeatFilter
from chardev_bridge.tls.errors import describe_plain_rejection

log = logging.getLogger("chardev_bridge")

# A session that lasted this long resets the reconnect backoff and the repeat count.
STABLE_SESSION_SECONDS = 10.0


class SessionRunner:
    """Runs sessions of one bridge and remembers how the last one ended."""

    def __init__(
        self,
        line: LocalLine,
        slots: SessionSlots,
        counters: BridgeCounters,
        *,
        listening: bool,
        one_shot: bool,
        idle_timeout: float | None,
        grace: float,
    ) -> None:
        self.line = line
        self.slots = slots
        self.counters = counters
        self.listening = listening
        self.one_shot = one_shot
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.stopping = False
        #: Why the server rejected the last session right after its handshake, if it did.
        self.last_rejection: str | None = None
        #: Why the last session failed (None: it ended cleanly, or none ran).
        self.last_failure: Failure | None = None

    async def run(
        self,
        active: ActiveSession,
        local_stream: trio.abc.Stream,
        repeats: RepeatFilter | None = None,
    ) -> SessionStats:
        """Splice one remote session with the local end and log how it went; ``repeats``
        (a connecting bridge) keeps a failure that repeats from flooding the log."""
        remote, line = active.remote, self.line
        window = replay_window(remote.handshake_seconds) if remote.rejectable else 0.0
        remote_stream: trio.abc.Stream = remote.stream
        hold: _EofAfterVerdict | None = None
        if window and line.local.ends_by_itself:
            # A local end that can reach EOF at once (piped stdin) would otherwise send our
            # close_notify before the server's verdict arrives, and its close would read as
            # an answer to that: a failed session exiting 0.
            hold = remote_stream = _EofAfterVerdict(remote.stream, trio.current_time() + window)
        session = Session(
            local_stream,
            remote_stream,
            local_persistent=line.persistent,
            carry=line.carry if line.persistent else Carry(),
            idle_timeout=self.idle_timeout,
            tap_to_remote=line.taps.to_remote if line.taps else None,
            tap_to_local=line.taps.to_local if line.taps else None,
            grace=self.grace,
            replay_window=window,
            acknowledged=remote.bytes_acknowledged,
        )
        active.session = session
        self._began(remote, session.stats)
        if self.stopping:
            session.drain("bridge shutting down")
        began = trio.current_time()
        stats = session.stats
        if hold is not None:
            hold.settled = lambda: bool(stats.to_local or stats.remote_eof or stats.failure)
        try:
            await session.run()
        finally:
            lasted = trio.current_time() - began
            try:
                verdict, level, again = self._settle(session, remote, hold, lasted, repeats)
            finally:
                # The slot is free before the peer can see the session end: a client that
                # reconnects as soon as it sees our close must find the line free.
                self.slots.release(active)
                with trio.CancelScope(shield=True):
                    await remote.stream.aclose()
                    if not line.persistent:
                        await local_stream.aclose()
            self._ended(stats)
            _log_disconnect(remote, stats, lasted, level, again)
            if verdict.hint is not None:
                log.warning("%s", verdict.hint)
            active.done.set()
        return stats

    def _began(self, remote: RemoteSession, stats: SessionStats) -> None:
        counters = self.counters
        counters.sessions += 1
        counters.live.append(stats)
        counters.state = "connected"
        counters.peer = remote.peer
        counters.tls = remote.describe()
        counters.peer_dn = remote.peer_cert.dn if remote.peer_cert is not None else None

    def _ended(self, stats: SessionStats) -> None:
        counters = self.counters
        counters.live.remove(stats)
        counters.bytes_to_remote += stats.to_remote
        counters.bytes_from_remote += stats.to_local
        if not counters.live:
            counters.state = "listening" if self.listening else "connecting"
            counters.peer = counters.peer_dn = counters.tls = None

    def _settle(
        self,
        session: Session,
        remote: RemoteSession,
        hold: _EofAfterVerdict | None,
        lasted: float,
        repeats: RepeatFilter | None,
    ) -> tuple[Verdict, int, str]:
        """Judge how ``session`` ended and act on it before the slot is freed: a replay for
        the next session, the repeat count; returns the verdict, log level and repeat note."""
        stats = session.stats
        facts = EndFacts(
            failure=stats.failure,
            lasted=lasted,
            to_local=stats.to_local,
            to_remote=stats.to_remote,
            local_eof=stats.local_eof,
            remote_eof=stats.remote_eof,
            ragged_eof=remote.ragged_eof,
            ended_by=stats.ended_by,
            rejectable=session.replay_window > 0,
            quick_reject_seconds=QUICK_REJECT_SECONDS,
            close_notify_sent=stats.local_eof and (hold is None or hold.eof_sent),
            plain_client=remote.tls is None and not self.listening,
            one_shot=self.one_shot,
        )
        verdict = judge_end(
            facts,
            rejection=lambda: remote.silent_rejection or "",
            expects_tls=describe_plain_rejection,
        )
        stats.failure = verdict.failure
        line = self.line
        if verdict.rejected and line.persistent:
            if session.replay.kept:
                # The server threw them away unread: the next session sends them again. All
                # the session sent is here: nothing is kept once the server took the session.
                replay = bytes(session.replay.kept) + bytes(line.carry.pending)
                line.carry.pending = memoryview(replay)
            elif lasted > session.replay_window and stats.to_remote:
                log.warning(
                    "the server ended the session %.2fs after the handshake, after the replay"
                    " window (%.2fs): what it had not read of the %d bytes sent is lost",
                    lasted,
                    session.replay_window,
                    stats.to_remote,
                )
        level = logging.ERROR if verdict.loudness is Loudness.ERROR else logging.INFO
        again = ""
        if repeats is not None and (stats.to_local > 0 or lasted >= STABLE_SESSION_SECONDS):
            repeats.reset()  # a session that worked: its failure is news again
        if repeats is not None and stats.failure is not None:
            log_it, count = repeats.should_log(str(stats.failure))
            if not log_it:
                level = logging.DEBUG
            elif count > 1:
                again = f" ({count} times in a row)"
        self.last_rejection = str(stats.failure) if verdict.rejected else None
        self.last_failure = stats.failure
        if stats.failure is not None:
            self.counters.last_error = str(stats.failure)
        return verdict, level, again


class _EofAfterVerdict(trio.abc.HalfCloseableStream):
    """A TLS client's remote stream whose ``send_eof`` (our close_notify) waits until the
    server has spoken or ended, or until ``until``: a TLS 1.3 server judges our certificate
    only after the handshake, and a close that answers our close_notify says nothing about
    that verdict. Everything else goes straight to ``inner``."""

    def __init__(self, inner: trio.abc.Stream, until: float) -> None:
        self.inner = inner
        self.until = until
        self.eof_sent = False
        self.settled: Callable[[], bool] = lambda: False
        # Bound once, so the data path pays no extra call per send or receive.
        self.send_all = inner.send_all  # type: ignore[method-assign]
        self.receive_some = inner.receive_some  # type: ignore[method-assign]
        self.wait_send_all_might_not_block = (  # type: ignore[method-assign]
            inner.wait_send_all_might_not_block
        )

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)  # pragma: no cover (bound in __init__)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)  # pragma: no cover (bound)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()  # pragma: no cover (bound)

    async def send_eof(self) -> None:
        """Our close_notify, once the server's verdict is in or its time is up."""
        with trio.move_on_at(self.until):
            while not self.settled():
                await trio.sleep(0.01)
        assert isinstance(self.inner, trio.abc.HalfCloseableStream)
        self.eof_sent = True
        await self.inner.send_eof()

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.inner.aclose()


def _log_disconnect(
    remote: RemoteSession,
    stats: SessionStats,
    lasted: float,
    level: int = logging.INFO,
    again: str = "",
) -> None:
    if stats.failure is not None:
        how = f"{stats.failure.side} failed: {stats.failure}"
    elif stats.ended_by is not None:
        how = stats.ended_by
    elif stats.remote_eof:
        how = "remote closed without TLS close_notify" if remote.ragged_eof else "remote closed"
    elif stats.local_eof:
        how = "local end closed"
    else:
        how = "bridge shutting down"
    log.log(
        level,
        "disconnected from %s after %.1fs: %d bytes sent, %d bytes received; %s%s",
        remote.peer,
        lasted,
        stats.to_remote,
        stats.to_local,
        how,
        again,
    )
