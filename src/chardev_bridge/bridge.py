"""Run a bridge: accept or make remote connections and splice each with the local end."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from chardev_bridge.backoff import (
    REFUSED_INITIAL,
    Backoff,
    ReconnectBackoff,
    RepeatFilter,
    is_refused,
)
from chardev_bridge.config import BridgeConfig
from chardev_bridge.datapath import (
    STREAM_ERRORS,
    Carry,
    Session,
    SessionStats,
    keep_read_buffers_off_mmap,
)
from chardev_bridge.fdqueue import unread_bytes
from chardev_bridge.holding import HeldBytes, dropped_line
from chardev_bridge.hostport import format_hostport
from chardev_bridge.local import LocalEnd, open_local_end
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.stdio import StdioEnd
from chardev_bridge.remote import RemoteSession, TLSSetup, peer_name, start_session
from chardev_bridge.scrollback import ScrollbackEnd
from chardev_bridge.session_end import EndFacts, Failure, Loudness, Verdict, judge_end
from chardev_bridge.sharestats import ShareCounters
from chardev_bridge.sharing import Taps, open_sharing
from chardev_bridge.socketstream import DirectSocketStream
from chardev_bridge.tlsconfig import build_tls_setup
from chardev_bridge.tlserrors import (
    RECONNECT_HINT,
    describe_plain_rejection,
    describe_quick_rejection,
    describe_tls_error,
)
from chardev_bridge.tlspolicy import PeerRejected
from chardev_bridge.tlsstream import TLSHandshakeError, TLSStream

log = logging.getLogger("chardev_bridge")

# Handshakes allowed in flight at once on a listening bridge: a burst of scanners or
# slowloris clients must not exhaust memory, nor stop a good client (it gets a slot as soon
# as a stalled one times out).
MAX_PENDING_HANDSHAKES = 64

# A TLS server that ends the connection within this time of the handshake, having sent nothing
# but perhaps an alert, rejected our certificate after the handshake (TLS 1.3 lets a client
# finish its handshake before the server has checked the certificate).
_QUICK_REJECT_SECONDS = 2.0

# How long what we send a TLS 1.3 server that has said nothing yet is kept for a replay. A
# rejection travels the path of the handshake's last flight: our Finished to the server, its
# certificate checks, its close back. Measured on loopback: QEMU 7.2 (tls-authz) closed
# 0.07-6.6 ms after our handshake completed, an OpenSSL server 0.5-7.5 ms, for handshakes of
# 2-15 ms. So a few handshake durations are enough; the floor absorbs a busy host's scheduling.
REPLAY_WINDOW_FLOOR = 0.2
REPLAY_WINDOW_HANDSHAKES = 4


def replay_window(handshake_seconds: float) -> float:
    """Seconds after a TLS 1.3 client handshake in which a server's silent close means it
    rejected us (and threw away unread what we sent): a few handshake durations, at least
    :data:`REPLAY_WINDOW_FLOOR`, at most :data:`_QUICK_REJECT_SECONDS`."""
    window = max(REPLAY_WINDOW_FLOOR, REPLAY_WINDOW_HANDSHAKES * handshake_seconds)
    return min(window, _QUICK_REJECT_SECONDS)


# A session that lasted this long resets the reconnect backoff.
_STABLE_SESSION_SECONDS = 10.0

# How long a listening bridge keeps a remote client waiting while its socket local end
# (QEMU's unix socket, say) is not there, retrying with backoff.
_LOCAL_WAIT_SECONDS = 30.0

# The longest delay between tries of a socket local end that is not there.
_LOCAL_RETRY_MAX = 1.0

# A unix local end that stays away is usually a QEMU that is not (yet) running.
_LOCAL_SOCKET_HINT = (
    " (is the program that serves it running, e.g. QEMU with -chardev"
    " socket,path=…,server=on,wait=off?)"
)

# How often a remote waiting for its local end is checked for having left; the states are
# Linux's (include/net/tcp_states.h), read from TCP_INFO.
_REMOTE_WATCH_SECONDS = 1.0
_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8

_CONNECT_ERRORS = (
    OSError,
    TLSHandshakeError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    PeerRejected,
)


@dataclass
class BridgeReady:
    """Passed to ``task_status.started()`` once the bridge is up (for tests and embedders)."""

    local: str
    pty_path: str | None = None
    ports: list[int] = field(default_factory=list)
    # Viewer and console-log counters, for a status endpoint to read.
    share: ShareCounters | None = None


async def run_bridge(
    cfg: BridgeConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[BridgeReady] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run until the local end is exhausted, the connection ends (without ``reconnect``),
    ``shutdown`` is set (graceful: in-flight bytes delivered, close_notify sent) or the caller
    cancels. Returns the process exit status."""
    tls = build_tls_setup(cfg)
    keep_read_buffers_off_mmap()
    counters = ShareCounters()
    async with (
        open_sharing(cfg, counters) as traffic,
        open_local_end(cfg.local, link=cfg.link) as local,
    ):
        await local.start()
        ready = BridgeReady(
            local=local.describe(),
            pty_path=local.path if isinstance(local, PtyEnd) else None,
            share=counters,
        )
        log.info("local end: %s", ready.local)
        bridge = Bridge(cfg, tls, local, traffic)
        async with trio.open_nursery() as nursery:
            if shutdown is not None:
                nursery.start_soon(bridge.shutdown_on, shutdown)
            if traffic is not None:
                nursery.start_soon(traffic.run)
            code = await bridge.run(ready, task_status)
            nursery.cancel_scope.cancel()
        return code


@dataclass
class _Active:
    """The session in progress on a bridge."""

    remote: RemoteSession
    session: Session | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class Bridge:
    """One bridge's sessions, serving (listening) or connecting: one at a time on a line,
    up to ``max_sessions`` for a socket local end."""

    def __init__(
        self,
        cfg: BridgeConfig,
        tls: TLSSetup | None,
        local: LocalEnd,
        traffic: Taps | None = None,
    ) -> None:
        self.cfg = cfg
        self.tls = tls
        self.local = local
        self.traffic = traffic
        self.carry = Carry()
        # Sessions in progress: one at most, unless max_sessions allows more for a socket
        # local end (each session then has a local connection of its own).
        self.sessions: list[_Active] = []
        self.max_sessions = cfg.max_sessions if not local.persistent else 1
        self.stopping = False
        self._main = trio.CancelScope()
        self._takeover = trio.Lock()
        self._pending_handshakes = 0
        self._local_stream: trio.abc.Stream | None = None
        self._idle_scope: trio.CancelScope | None = None
        self._idle_reader_gone = trio.Event()
        self._no_session = trio.Event()
        self._no_session.set()
        # Local bytes read between sessions, with their age (a pty's default, --hold-max).
        self._held: HeldBytes | None = None
        # Whether the last connect attempt was refused (retried sooner than other failures).
        self._refused = False
        self._dropped_while_idle = 0
        # Why the server rejected the last session right after its handshake, if it did.
        self._last_rejection: str | None = None
        # Why the last session failed (None: it ended cleanly, or none ran).
        self._session_failure: Failure | None = None
        self._scrollback_loss_logged = False

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, ready: BridgeReady, task_status: trio.TaskStatus[BridgeReady]) -> int:
        """Serve or connect until done; returns the exit status."""
        code = 0
        with self._main:
            async with trio.open_nursery() as nursery:
                if self.local.persistent:
                    self._local_stream = await self.local.next_stream()
                    if self.cfg.when_unread == "buffer":
                        scrollback = ScrollbackEnd(self._local_stream, self.cfg.scrollback)
                        self._local_stream = scrollback
                        nursery.start_soon(scrollback.run)
                    if self.cfg.when_disconnected == "drop":
                        nursery.start_soon(self._drop_while_disconnected)
                    elif self.cfg.hold_limit is not None:
                        self._held = HeldBytes(self.cfg.hold_limit)
                        nursery.start_soon(self._hold_while_disconnected, self._held)
                if self.cfg.listen:
                    await self._serve(ready, task_status)
                else:
                    task_status.started(ready)
                    code = await self._connect()
                    if self._session_failure is not None and not self.stopping:
                        # The local end may have ended (stdin EOF) in the same moment as the
                        # session failed; which came first must not decide the exit status.
                        code = 1
                await self._deliver_scrollback()
                nursery.cancel_scope.cancel()
        if code == 0:  # else the failure, which says why, stays the last line
            self._report_unsent()
        return code

    def _report_unsent(self) -> None:
        """Say how many local bytes the bridge read and could not send before it ended."""
        unsent = len(self.carry.pending) + (len(self._held) if self._held is not None else 0)
        if unsent:
            log.warning(
                "%d local bytes read from %s were never sent: no remote took them before the"
                " bridge ended",
                unsent,
                self.local.describe(),
            )

    async def shutdown_on(self, event: trio.Event) -> None:
        """Wait for ``event``, then end gracefully within ``shutdown_grace`` seconds."""
        await event.wait()
        self.stopping = True
        deadline = trio.current_time() + self.cfg.shutdown_grace
        with trio.move_on_at(deadline):
            for active in list(self.sessions):
                if active.session is not None:
                    active.session.drain("bridge shutting down")
            for active in list(self.sessions):
                await active.done.wait()
        await self._deliver_scrollback(deadline)
        self._main.cancel()

    async def _deliver_scrollback(self, deadline: float | None = None) -> None:
        """Before the bridge ends: give the local end until ``deadline`` (default: in
        ``shutdown_grace`` seconds) to read what waits in a ``--when-unread buffer``
        scrollback, and say what it left unread."""
        scrollback = self._local_stream
        if not isinstance(scrollback, ScrollbackEnd):
            return
        if deadline is None:
            deadline = trio.current_time() + self.cfg.shutdown_grace
        with trio.move_on_at(deadline):
            await scrollback.flush()
        if scrollback.undelivered and not self._scrollback_loss_logged:
            # A shutdown and the end of the last session can both get here.
            self._scrollback_loss_logged = True
            log.warning(
                "local end %s did not read the last %d bytes of the scrollback; they are lost",
                self.local.describe(),
                scrollback.undelivered,
            )

    # -- one session ---------------------------------------------------------------------

    async def _session(
        self,
        active: _Active,
        local_stream: trio.abc.Stream,
        repeats: RepeatFilter | None = None,
    ) -> SessionStats:
        """Splice one remote session with the local end and log how it went; ``repeats``
        (a connecting bridge) keeps a failure that repeats from flooding the log."""
        remote = active.remote
        tls = self.tls
        rejectable = (
            tls is not None
            and not tls.server_side
            and tls.policy is not None
            and remote.tls is not None
            and remote.tls.version == "TLSv1.3"
        )
        remote_stream: trio.abc.Stream = remote.stream
        hold: _EofAfterVerdict | None = None
        if rejectable and (isinstance(self.local, StdioEnd) or not self.local.persistent):
            # A local end that can reach EOF at once (piped stdin) would otherwise send our
            # close_notify before the server's verdict arrives, and its close would read as
            # an answer to that: a failed session exiting 0.
            hold = remote_stream = _EofAfterVerdict(
                remote.stream, trio.current_time() + replay_window(remote.handshake_seconds)
            )
        session = Session(
            local_stream,
            remote_stream,
            local_persistent=self.local.persistent,
            carry=self.carry if self.local.persistent else Carry(),
            idle_timeout=self.cfg.idle_timeout,
            tap_to_remote=self.traffic.to_remote if self.traffic else None,
            tap_to_local=self.traffic.to_local if self.traffic else None,
            grace=self.cfg.shutdown_grace,
            replay_window=replay_window(remote.handshake_seconds) if rejectable else 0.0,
        )
        active.session = session
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
                self._release(active)
                with trio.CancelScope(shield=True):
                    await remote.stream.aclose()
                    if not self.local.persistent:
                        await local_stream.aclose()
            _log_disconnect(remote, stats, lasted, level, again)
            if verdict.hint is not None:
                log.warning("%s", verdict.hint)
            active.done.set()
        return stats

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
        stats, tls = session.stats, self.tls
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
            quick_reject_seconds=_QUICK_REJECT_SECONDS,
            close_notify_sent=stats.local_eof and (hold is None or hold.eof_sent),
            plain_client=tls is None and not self.cfg.listen,
            one_shot=not self.cfg.listen and self.cfg.reconnect is None,
        )
        verdict = judge_end(
            facts,
            rejection=lambda: _probable_rejection(tls),
            expects_tls=describe_plain_rejection,
        )
        stats.failure = verdict.failure
        if verdict.rejected and self.local.persistent:
            if session.unconfirmed:
                # The server threw them away unread: the next session sends them again.
                replay = bytes(session.unconfirmed) + bytes(self.carry.pending)
                self.carry.pending = memoryview(replay)
            if lasted > session.replay_window and stats.to_remote:
                log.warning(
                    "the server ended the session %.2fs after the handshake, after the replay"
                    " window (%.2fs): what it had not read of the %d bytes sent is lost",
                    lasted,
                    session.replay_window,
                    stats.to_remote,
                )
        level = logging.ERROR if verdict.loudness is Loudness.ERROR else logging.INFO
        again = ""
        if repeats is not None and (stats.to_local > 0 or lasted >= _STABLE_SESSION_SECONDS):
            repeats.reset()  # a session that worked: its failure is news again
        if repeats is not None and stats.failure is not None:
            log_it, count = repeats.should_log(str(stats.failure))
            if not log_it:
                level = logging.DEBUG
            elif count > 1:
                again = f" ({count} times in a row)"
        self._last_rejection = str(stats.failure) if verdict.rejected else None
        self._session_failure = stats.failure
        return verdict, level, again

    async def _open_local(self) -> trio.abc.Stream:
        if self._local_stream is not None:
            return self._local_stream
        return await self.local.next_stream()

    async def _drop_while_disconnected(self) -> None:
        """``--when-disconnected drop``: between sessions, read and discard local bytes."""

        def drop(data: bytes | bytearray) -> None:
            if self._dropped_while_idle == 0:
                log.warning("no remote connected: dropping local bytes (--when-disconnected drop)")
            self._dropped_while_idle += len(data)

        await self._read_between_sessions(drop)

    async def _hold_while_disconnected(self, held: HeldBytes) -> None:
        """A hold limit: between sessions, read local bytes into ``held`` with the time they
        arrived, so that the next session gets only those young enough (see _claim). Reading
        stops while ``held`` is full, until its oldest bytes age out."""

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
        """Between sessions, read the local end and ``keep`` what it says (at most what
        ``room`` allows per read); :meth:`_claim` stops the read when a session begins."""
        assert self._local_stream is not None
        while True:
            # Re-read the event each time: _claim replaces it (unset) before it yields.
            while self.sessions or not self._no_session.is_set():
                await self._no_session.wait()
            if self.stopping:
                return  # no next session will take what would be read now
            if begin is not None:
                begin()
            self._idle_reader_gone = trio.Event()
            try:
                with trio.CancelScope() as self._idle_scope:
                    while True:
                        size = await room() if room is not None else None
                        try:
                            data = await self._local_stream.receive_some(size)
                        except STREAM_ERRORS as exc:
                            # The next session meets the same failure and reports it too.
                            log.error(
                                "local end %s failed while disconnected: %s",
                                self.local.describe(),
                                describe_tls_error(exc),
                            )
                            return
                        if not data:
                            return  # its end: the next session reads it again
                        if self.traffic is not None:
                            self.traffic.to_remote(data)
                        keep(data)
            finally:
                self._idle_scope = None
                self._idle_reader_gone.set()

    def _hand_over_held(self, held: HeldBytes) -> None:
        """A session begins: drop held bytes that are too old, give it the rest."""
        held.expire(trio.current_time())
        dropped = held.take_dropped()
        if dropped:
            log.warning("%s", dropped_line(dropped, held.max_age))
        if len(held):
            self.carry.pending = memoryview(held.take() + bytes(self.carry.pending))

    async def _claim(self, remote: RemoteSession) -> _Active:
        """Mark ``remote`` as the active session; stops the idle discarder or holder first
        and hands the session what may still be sent of the held bytes."""
        self._no_session = trio.Event()
        while self._idle_scope is not None:
            # Cancelling a trio receive loses nothing: the bytes go to the session instead.
            # The session may read only once the discarder has really left its receive.
            self._idle_scope.cancel()
            await self._idle_reader_gone.wait()
        if self._dropped_while_idle:
            log.warning("%d local bytes were dropped while disconnected", self._dropped_while_idle)
            self._dropped_while_idle = 0
        if self._held is not None:
            self._hand_over_held(self._held)
        active = _Active(remote)
        self.sessions.append(active)
        return active

    def _release(self, active: _Active) -> None:
        # Only the release that frees the slot may wake the idle reader: a second one (the
        # session's, then its handler's) must not wake it while a new session is claiming.
        if active not in self.sessions:
            return
        self.sessions.remove(active)
        if not self.sessions:
            self._no_session.set()

    # -- listening -----------------------------------------------------------------------

    async def _serve(self, ready: BridgeReady, task_status: trio.TaskStatus[BridgeReady]) -> None:
        """A listening bridge: one session at a time, as on a serial line."""
        cfg = self.cfg
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            kind = "TLS" if self.tls else "plain TCP"
            log.info("listening on %s (%s)", format_hostport(host, port), kind)
            if port not in ready.ports:
                ready.ports.append(port)
        task_status.started(ready)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)

    async def _handle_safely(self, tcp: DirectSocketStream) -> None:
        """One connection's failure, whatever it is, must not stop the listening bridge."""
        try:
            await self._handle(tcp)
        except Exception as exc:
            log.error("dropped %s: unexpected %s: %s", peer_name(tcp), type(exc).__name__, exc)
            await trio.aclose_forcefully(tcp)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while not self.stopping:
            try:
                tcp = DirectSocketStream.adopt(await listener.accept())
            except OSError as exc:
                # EMFILE and friends: say so, back off briefly, keep serving.
                log.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._handle_safely, tcp)

    async def _handle(self, tcp: DirectSocketStream) -> None:
        cfg = self.cfg
        peer = peer_name(tcp)
        busy = self._busy_reason()
        if busy is not None:
            log.warning("refused %s: %s", peer, busy)
            await trio.aclose_forcefully(tcp)
            return
        self._pending_handshakes += 1
        try:
            remote = await start_session(tcp, self.tls, handshake_timeout=cfg.handshake_timeout)
        except TLSHandshakeError as exc:
            log.warning("TLS handshake with %s failed: %s", peer, describe_tls_error(exc))
            return
        except trio.TooSlowError:
            log.warning("dropped %s: no TLS handshake within %gs", peer, cfg.handshake_timeout)
            return
        except PeerRejected as exc:
            log.warning("denied %s: %s", peer, exc)
            return
        finally:
            self._pending_handshakes -= 1
        async with self._takeover:
            old = self.sessions[0] if len(self.sessions) >= self.max_sessions else None
            if old is not None and cfg.second_client == "replace":
                log.warning(
                    "%s replaces the session with %s (--second-client replace)",
                    peer,
                    old.remote.peer,
                )
                if old.session is not None:
                    old.session.drain(f"replaced by {peer}")
                with trio.move_on_after(cfg.shutdown_grace):
                    await old.done.wait()
                old.cancel.cancel()
                await old.done.wait()
            elif old is not None:
                log.warning("refused %s: a session with %s is active", peer, old.remote.peer)
                await trio.aclose_forcefully(remote.stream)
                return
            if self.stopping:
                await trio.aclose_forcefully(remote.stream)
                return
            active = await self._claim(remote)
        try:
            # The whole session, local end included, can be cut by a replacing client.
            with active.cancel:
                log.info("session from %s: %s", peer, remote.describe())
                try:
                    local_stream = await self._open_local_for(remote, tcp)
                except OSError as exc:
                    log.error(
                        "closing %s: cannot open local end %s: %s%s",
                        peer,
                        self.local.describe(),
                        exc.strerror or exc,
                        _LOCAL_SOCKET_HINT if self.cfg.local.kind == "unix" else "",
                    )
                    return
                if local_stream is None:
                    return
                await self._session(active, local_stream)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(remote.stream)  # a no-op after a session
            active.done.set()
            self._release(active)
        if self.local.exhausted:
            log.info("local end %s has ended; stopping", self.local.describe())
            self.stopping = True  # no new sessions while the scrollback is read
            await self._deliver_scrollback()
            self._main.cancel()

    def _busy_reason(self) -> str | None:
        if self.stopping:
            return "the bridge is shutting down"
        if self._pending_handshakes >= MAX_PENDING_HANDSHAKES:
            return f"{MAX_PENDING_HANDSHAKES} handshakes already in progress"
        if len(self.sessions) >= self.max_sessions and self.cfg.second_client == "reject":
            if self.max_sessions == 1:
                peer = self.sessions[0].remote.peer
                return f"a session with {peer} is active (--second-client reject)"
            return f"{self.max_sessions} sessions are active (--max-sessions)"
        return None

    async def _open_local_for(
        self, remote: RemoteSession, tcp: DirectSocketStream
    ) -> trio.abc.Stream | None:
        """The local stream for a remote that has connected, or None if the remote left
        first: a listening local end may wait long for its client, and a remote that is
        gone must not hold the line meanwhile."""
        local_stream = None
        failure: OSError | None = None
        gave_up: str | None = None
        async with trio.open_nursery() as nursery:

            async def watch_remote() -> None:
                nonlocal gave_up
                while not _peer_gone(tcp.socket):
                    await trio.sleep(_REMOTE_WATCH_SECONDS)
                left = await _bytes_left(remote.stream, tcp.socket)
                local = self.local.describe()
                if left == 0:
                    gave_up = f"it left before local end {local} was ready"
                else:
                    # It left bytes (a one-shot command): they wait for the local client,
                    # for as long as a waiting remote would, then free the line.
                    await trio.sleep(_LOCAL_WAIT_SECONDS)
                    what = "bytes" if left is None else f"{left} bytes"
                    gave_up = (
                        f"it left, and local end {local} had no client for"
                        f" {_LOCAL_WAIT_SECONDS:g}s; the {what} it sent are dropped"
                    )
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_remote)
            try:
                local_stream = await self._open_local_with_retry()
            except OSError as exc:
                failure = exc  # raised below, not wrapped in the nursery's ExceptionGroup
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if local_stream is None and gave_up is not None:
            # Only now: a local client that came in the same instant still gets the bytes.
            log.warning("closing %s: %s", remote.peer, gave_up)
        return local_stream

    async def _open_local_with_retry(self) -> trio.abc.Stream:
        """The local stream; a socket end that is not there yet is retried for a while."""
        # Often QEMU restarting: a unix socket that is not there costs nothing to try again,
        # and what the guest prints before we connect is lost.
        backoff = Backoff(REFUSED_INITIAL, _LOCAL_RETRY_MAX)
        repeats = RepeatFilter()
        deadline = trio.current_time() + _LOCAL_WAIT_SECONDS
        while True:
            try:
                return await self._open_local()
            except OSError as exc:
                if trio.current_time() >= deadline:
                    raise
                delay = backoff.next_delay()
                why = str(exc.strerror or exc)
                log_it, count = repeats.should_log(why)
                log.log(
                    logging.WARNING if log_it else logging.DEBUG,
                    "local end %s not there (%s%s); retrying in %.1fs",
                    self.local.describe(),
                    why,
                    f", {count} tries" if count > 1 else "",
                    delay,
                )
                await trio.sleep(delay)

    # -- connecting ----------------------------------------------------------------------

    async def _connect(self) -> int:
        """A connecting bridge: one session, or sessions forever with ``reconnect``."""
        if self.max_sessions > 1:
            await self._connect_per_local_client()
            return 0
        cfg = self.cfg
        target = format_hostport(cfg.host, cfg.port)
        backoff = ReconnectBackoff(cfg.reconnect or 0.0, cfg.reconnect_max)
        repeats = RepeatFilter()
        while not self.stopping:
            began = trio.current_time()
            self._refused = False
            failure = await self._connect_once(target, repeats)
            if self.stopping:
                return 0
            # A local end that ended (stdin EOF) may still have bytes waiting to be sent:
            # they keep the bridge trying, as long as it tries at all.
            if self.local.exhausted and not self._holds_bytes():
                if failure is None:
                    # (After a failure, the failure stays the last line.)
                    log.info("local end %s has ended; stopping", self.local.describe())
                return 0 if failure is None else 1
            if cfg.reconnect is None:
                return 0 if failure is None else 1
            if trio.current_time() - began >= _STABLE_SESSION_SECONDS:
                backoff.reset()
            delay = backoff.next_delay(refused=self._refused)
            log.debug("reconnecting to %s in %.1fs", target, delay)
            await trio.sleep(delay)
        return 0

    def _holds_bytes(self) -> bool:
        """Whether local bytes wait for a session (carried over, or held meanwhile)."""
        return bool(self.carry.pending) or (self._held is not None and len(self._held) > 0)

    async def _connect_per_local_client(self) -> None:
        """``--max-sessions N`` with a listening local end: each local client gets its own
        remote connection, as with stunnel; the N+1st waits in the listen backlog."""
        slots = trio.Semaphore(self.max_sessions)
        target = format_hostport(self.cfg.host, self.cfg.port)

        async def one(local_stream: trio.abc.Stream) -> None:
            try:
                await self._connect_once(target, RepeatFilter(), local_stream)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while not self.stopping:
                await slots.acquire()
                try:
                    local_stream = await self.local.next_stream()
                except OSError as exc:
                    slots.release()
                    log.error("local accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(one, local_stream)

    async def _connect_once(
        self, target: str, repeats: RepeatFilter, local_stream: trio.abc.Stream | None = None
    ) -> str | None:
        """One attempt: local stream, TCP, TLS, session. Returns the failure, if any."""
        cfg = self.cfg
        if local_stream is None:
            try:
                local_stream = await self._open_local()
            except OSError as exc:
                # A socket that is not there yet (QEMU restarting) is retried fast too.
                self._refused = isinstance(exc, FileNotFoundError) or is_refused(exc)
                failure = f"cannot open local end {self.local.describe()}: {exc.strerror or exc}"
                log_it, count = repeats.should_log(failure)
                if log_it or self.cfg.reconnect is None:
                    again = f" ({count} times in a row)" if count > 1 else ""
                    log.error("%s%s", failure, again)
                return failure
        tcp: DirectSocketStream | None = None
        try:
            # A black-holed address would otherwise cost the kernel's ~2 minutes of SYNs.
            with trio.fail_after(cfg.handshake_timeout):
                tcp = DirectSocketStream.adopt(await trio.open_tcp_stream(cfg.host, cfg.port))
            remote = await start_session(tcp, self.tls, handshake_timeout=cfg.handshake_timeout)
        except _CONNECT_ERRORS as exc:
            # Nothing listens there (yet): cheap to ask again soon.
            self._refused = tcp is None and is_refused(exc)
            if not self.local.persistent:
                await trio.aclose_forcefully(local_stream)
            if tcp is not None:
                await trio.aclose_forcefully(tcp)
            if isinstance(exc, trio.TooSlowError):
                what = "TLS handshake" if tcp is not None else "TCP connection"
                failure = f"no {what} within {cfg.handshake_timeout:g}s"
            elif isinstance(exc, PeerRejected):
                failure = f"server denied by our policy: {exc}"
            else:
                failure = describe_tls_error(exc)
                if self._refused and cfg.reconnect is None:
                    failure += RECONNECT_HINT
            log_it, count = repeats.should_log(failure)
            if log_it or cfg.reconnect is None:
                again = f" ({count} times in a row)" if count > 1 else ""
                log.error("cannot connect to %s: %s%s", target, failure, again)
            return failure
        # While a server keeps rejecting us after the handshake, "connected" is quiet too.
        rejection = self._last_rejection
        level = logging.DEBUG if rejection and repeats.quiet(rejection) else logging.INFO
        log.log(level, "connected to %s: %s", remote.peer, remote.describe())
        active = await self._claim(remote)
        try:
            with active.cancel:
                stats = await self._session(active, local_stream, repeats)
        finally:
            self._release(active)
        if stats.failure is None:
            repeats.reset()
            return None
        return str(stats.failure)


def _probable_rejection(tls: TLSSetup | None) -> str:
    """What a server that closed right after the handshake probably rejected: our client
    certificate, or the lack of one (the credentials decide which we sent)."""
    assert tls is not None and tls.policy is not None
    creds = tls.policy.creds
    cert = str(creds.cert) if creds.cert is not None and creds.key is not None else None
    return describe_quick_rejection(cert, str(creds.directory))


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


def _peer_gone(sock: trio.socket.SocketType) -> bool:
    """Whether the peer of a connection has sent its FIN or reset it (TCP_INFO state)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


async def _bytes_left(stream: trio.abc.Stream, sock: trio.socket.SocketType) -> int | None:
    """How many bytes a peer that is gone left for the local end (0: none; None: some, not
    counted). Those (a one-shot command) keep its session for a while, so that they are
    delivered once the local end is there."""
    if isinstance(stream, TLSStream):
        left = bytearray()
        try:
            with trio.move_on_after(_REMOTE_WATCH_SECONDS):
                while data := await stream.receive_some():
                    left += data
                return len(left)  # its end (EOF stays EOF for the session's own receive)
        except STREAM_ERRORS:
            return len(left)
        finally:
            stream.unreceive(bytes(left))
        return len(left) or None  # still decrypting after a second: assume something is there
    try:
        with trio.move_on_after(_REMOTE_WATCH_SECONDS):
            if await sock.recv(1, socket.MSG_PEEK) == b"":
                return 0
            return unread_bytes(sock.fileno())
    except OSError:
        return 0
    return None


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
