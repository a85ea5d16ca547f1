"""One bridge of the console server, kept running: started, restarted after failures with
backoff, stopped gracefully; its pty kept across a restart that leaves its local end as is.

A bridge that fails (its port taken at run time, its tty gone, an unexpected error) says so
in one line naming it and is started again later; the other bridges never notice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from chardev_bridge.common.backoff import Backoff
from chardev_bridge.common.logcontext import bridge_name
from chardev_bridge.local import open_local_end
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.qemu.setup import ReloadableTLS
from chardev_bridge.serve.statusmodel import BridgeStatus
from chardev_bridge.tls.errors import describe_tls_error
from chardev_bridge.tls.setup import TLSSetup

log = logging.getLogger("chardev_bridge")

RESTART_INITIAL = 1.0
RESTART_MAX = 30.0
# A bridge that ran this long before it ended starts again after the initial delay.
_STABLE_SECONDS = 60.0


def same_local_end(a: BridgeConfig, b: BridgeConfig) -> bool:
    """Whether two configurations make the same local end (a restart may keep its pty)."""
    return a.local == b.local and a.link == b.link


@dataclass
class SupervisedBridge:
    """A named bridge of the console server and what it is running with."""

    cfg: BridgeConfig
    tls: ReloadableTLS
    listeners: list[trio.SocketListener] | None = None
    # A pty end kept open across restarts (None: each run opens its own local end).
    kept_local: LocalEnd | None = None
    counters: BridgeCounters = field(default_factory=BridgeCounters)
    ready: BridgeReady | None = None
    shutdown: trio.Event = field(default_factory=trio.Event)
    stopped: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Set by stop(keep_local=True): the pty survives for the bridge that replaces this one.
    keep_local: bool = False

    @property
    def name(self) -> str:
        """The bridge's name (its ``[bridge.NAME]``)."""
        assert self.cfg.name is not None
        return self.cfg.name

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge until stopped; reports started after the first attempt is up or
        has failed (a bridge that cannot start must not hold up the others)."""
        bridge_name.set(self.name)
        backoff = Backoff(RESTART_INITIAL, RESTART_MAX)
        announce = _Started(self, task_status)
        try:
            with self.scope:
                while not self.shutdown.is_set():
                    began = trio.current_time()
                    outcome, level = await self._run_once(announce)
                    announce.release()
                    if self.shutdown.is_set():
                        break
                    if trio.current_time() - began >= _STABLE_SECONDS:
                        backoff.reset()
                    delay = backoff.next_delay()
                    log.log(level, "%s; starting it again in %.1fs", outcome, delay)
                    with trio.move_on_after(delay):
                        await self.shutdown.wait()
        finally:
            announce.release()
            self.counters.state = "stopped"
            if self.kept_local is not None and not self.keep_local:
                with trio.CancelScope(shield=True):
                    await self.kept_local.aclose()
            self.stopped.set()

    async def _open_pty(self) -> LocalEnd:
        local = open_local_end(self.cfg.local, link=self.cfg.link)
        await local.start()
        return local

    async def _run_once(self, announce: _Started) -> tuple[str, int]:
        """One run of the bridge; returns why it ended, in words, and how loud that is."""
        try:
            if self.kept_local is None and self.cfg.local.kind == "pty":
                self.kept_local = await self._open_pty()
            code = await run_bridge(
                self.cfg,
                listeners=self.listeners,
                local=self.kept_local,
                tls=self.tls,
                counters=self.counters,
                shutdown=self.shutdown,
                task_status=announce,
            )
        except (OSError, ValueError) as exc:
            words = str(exc) if isinstance(exc, ValueError) else describe_tls_error(exc)
            self.counters.last_error = words
            return f"the bridge failed: {words}", logging.ERROR
        except Exception as exc:
            log.debug("the traceback of that error:", exc_info=True)
            self.counters.last_error = f"unexpected {type(exc).__name__}: {exc}"
            return f"the bridge failed: unexpected {type(exc).__name__}: {exc}", logging.ERROR
        if code == 0:
            return "the bridge's session ended", logging.INFO
        return f"the bridge ended with exit status {code}", logging.WARNING

    async def stop(self, *, keep_local: bool = False) -> None:
        """Stop gracefully, as on SIGTERM (in-flight bytes first, close_notify, link
        removed unless ``keep_local``): within the shutdown grace, then cut."""
        self.keep_local = keep_local
        self.shutdown.set()
        with trio.move_on_after(self.cfg.shutdown_grace + 1.0):
            await self.stopped.wait()
        self.scope.cancel()
        await self.stopped.wait()

    def status(self) -> BridgeStatus:
        """The bridge as the status endpoint shows it."""
        return bridge_status(self.name, self.cfg, self.counters, self.ready, self.tls.setup)


def bridge_status(
    name: str,
    cfg: BridgeConfig,
    counters: BridgeCounters,
    ready: BridgeReady | None,
    setup: TLSSetup | None,
) -> BridgeStatus:
    """A bridge as the status endpoint shows it, from its counters."""
    to_remote, from_remote = counters.totals()
    share = ready.share.snapshot() if ready and ready.share else None
    listening = f"listening on fd {cfg.listen_fd}" if cfg.listen_fd else None
    return BridgeStatus(
        name=name,
        state=counters.state,
        local=ready.local if ready else str(cfg.local),
        remote=listening or _hostport(cfg.host, cfg.port),
        peer=counters.peer,
        peer_dn=counters.peer_dn,
        tls=counters.tls,
        link=str(cfg.link) if cfg.link else None,
        sessions=counters.sessions,
        bytes_to_remote=to_remote,
        bytes_from_remote=from_remote,
        last_error=counters.last_error,
        cert_not_after=setup.cert_not_after if setup else None,
        viewers=share.viewers_attached if share else 0,
        reconnects=counters.reconnects,
        handshake_failures=dict(counters.handshake_failures),
        dropped_bytes=dict(counters.dropped_bytes),
    )


class _Started:
    """Takes ``run_bridge``'s ready signal for a supervised bridge."""

    def __init__(self, bridge: SupervisedBridge, outer: trio.TaskStatus[None]) -> None:
        self.bridge = bridge
        self.outer: trio.TaskStatus[None] | None = outer

    def started(self, value: BridgeReady | None = None) -> None:
        self.bridge.ready = value
        self.release()

    def release(self) -> None:
        """Let the caller go on (once): the bridge is up, or its first try is over."""
        if self.outer is not None:
            self.outer.started()
            self.outer = None


def _hostport(host: str, port: int) -> str:
    from chardev_bridge.common.hostport import format_hostport

    return format_hostport(host, port)
