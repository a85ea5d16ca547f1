"""A connecting bridge: make the remote connection, run the session, reconnect with backoff.

One session at a time on a line; with ``--max-sessions N`` and a listening local end, each
local client gets a remote connection of its own, as with stunnel.
"""

from __future__ import annotations

import logging

import trio

from chardev_bridge.bridge import session
from chardev_bridge.bridge.parts import BridgeParts
from chardev_bridge.bridge.remote import start_session
from chardev_bridge.common.backoff import ReconnectBackoff, RepeatFilter, is_refused
from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.net.socketstream import DirectSocketStream
from chardev_bridge.tls.errors import RECONNECT_HINT, describe_tls_error
from chardev_bridge.tls.setup import PeerRejected
from chardev_bridge.tls.stream import TLSHandshakeError

log = logging.getLogger("chardev_bridge")

_CONNECT_ERRORS = (
    OSError,
    TLSHandshakeError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    PeerRejected,
)


class Connector:
    """Connects one bridge to its remote, again and again with ``reconnect``."""

    def __init__(self, parts: BridgeParts) -> None:
        self.parts = parts
        self.target = format_hostport(parts.cfg.host, parts.cfg.port)
        # Whether the last attempt was refused (retried sooner than other failures).
        self._refused = False

    async def run(self) -> int:
        """One session, or sessions until stopped with ``reconnect``; the exit status."""
        parts = self.parts
        cfg, line, counters = parts.cfg, parts.line, parts.counters
        if parts.slots.capacity > 1:
            await self._one_per_local_client()
            return 0
        backoff = ReconnectBackoff(cfg.reconnect or 0.0, cfg.reconnect_max)
        repeats = RepeatFilter()
        while not parts.stopping:
            began = trio.current_time()
            self._refused = False
            counters.state = "connecting"
            failure = await self._connect_once(repeats)
            if parts.stopping:
                return 0
            # A local end that ended (stdin EOF) may still have bytes waiting to be sent:
            # they keep the bridge trying, as long as it tries at all.
            if line.local.exhausted and not line.holds_bytes():
                if failure is None:
                    # (After a failure, the failure stays the last line.)
                    log.info("local end %s has ended; stopping", line.describe())
                return 0 if failure is None else 1
            if cfg.reconnect is None:
                return 0 if failure is None else 1
            if trio.current_time() - began >= session.STABLE_SESSION_SECONDS:
                backoff.reset()
            delay = backoff.next_delay(refused=self._refused)
            log.debug("reconnecting to %s in %.1fs", self.target, delay)
            counters.state = "retrying"
            counters.reconnects += 1
            await trio.sleep(delay)
        return 0

    async def _one_per_local_client(self) -> None:
        """Each local client gets its own remote connection; the N+1st waits in the
        listen backlog."""
        parts = self.parts
        slots = trio.Semaphore(parts.slots.capacity)

        async def one(local_stream: trio.abc.Stream) -> None:
            try:
                await self._connect_once(RepeatFilter(), local_stream)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while not parts.stopping:
                await slots.acquire()
                try:
                    local_stream = await parts.line.local.next_stream()
                except OSError as exc:
                    slots.release()
                    log.error("local accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(one, local_stream)

    async def _connect_once(
        self, repeats: RepeatFilter, local_stream: trio.abc.Stream | None = None
    ) -> str | None:
        """One attempt: local stream, TCP, TLS, session. Returns the failure, if any."""
        parts = self.parts
        cfg, line = parts.cfg, parts.line
        if local_stream is None:
            try:
                local_stream = await line.stream()
            except OSError as exc:
                # A socket that is not there yet (QEMU restarting) is retried fast too.
                self._refused = isinstance(exc, FileNotFoundError) or is_refused(exc)
                failure = f"cannot open local end {line.describe()}: {exc.strerror or exc}"
                self._log_failure(repeats, "%s", failure)
                return failure
        tcp: DirectSocketStream | None = None
        try:
            # A black-holed address would otherwise cost the kernel's ~2 minutes of SYNs.
            with trio.fail_after(cfg.handshake_timeout):
                tcp = DirectSocketStream.adopt(await trio.open_tcp_stream(cfg.host, cfg.port))
            remote = await start_session(tcp, parts.tls(), handshake_timeout=cfg.handshake_timeout)
        except _CONNECT_ERRORS as exc:
            # Nothing listens there (yet): cheap to ask again soon.
            self._refused = tcp is None and is_refused(exc)
            if not line.persistent:
                await trio.aclose_forcefully(local_stream)
            if tcp is not None:
                await trio.aclose_forcefully(tcp)
            failure = self._describe(exc, reached=tcp is not None)
            self._log_failure(repeats, "cannot connect to %s: %s", self.target, failure)
            return failure
        # While a server keeps rejecting us after the handshake, "connected" is quiet too.
        rejection = parts.runner.last_rejection
        level = logging.DEBUG if rejection and repeats.quiet(rejection) else logging.INFO
        log.log(level, "connected to %s: %s", remote.peer, remote.describe())
        active = await parts.slots.claim(remote, parts.line.begin_session)
        try:
            with active.cancel:
                stats = await parts.runner.run(active, local_stream, repeats)
        finally:
            parts.slots.release(active)
        if stats.failure is None:
            repeats.reset()
            return None
        return str(stats.failure)

    def _describe(self, exc: BaseException, *, reached: bool) -> str:
        """A failed attempt in words; counted by its kind."""
        cfg, counters = self.parts.cfg, self.parts.counters
        if isinstance(exc, trio.TooSlowError):
            what = "TLS handshake" if reached else "TCP connection"
            failure = f"no {what} within {cfg.handshake_timeout:g}s"
            counters.note_failure("timeout", failure)
        elif isinstance(exc, PeerRejected):
            failure = f"server denied by our policy: {exc}"
            counters.note_failure("policy", failure)
        else:
            failure = describe_tls_error(exc)
            if isinstance(exc, TLSHandshakeError):
                counters.note_failure("tls", failure)
            else:
                counters.last_error = failure
            if self._refused and cfg.reconnect is None:
                failure += RECONNECT_HINT
        return failure

    def _log_failure(self, repeats: RepeatFilter, fmt: str, *args: str) -> None:
        """Log a failed attempt at error level, unless it repeats a failure just logged."""
        failure = args[-1]
        log_it, count = repeats.should_log(failure)
        if log_it or self.parts.cfg.reconnect is None:
            again = f" ({count} times in a row)" if count > 1 else ""
            log.error(fmt + "%s", *args, again)
