"""Run one bridge: the library API, and the seam where a caller hands in what it owns.

:func:`run_bridge` composes the roles: the local line (``line``), the session slots
(``slots``), the session runner (``session``), and either the server (``serve``) or the
connector (``connect``). A caller may hand in the listening sockets (systemd socket
activation), a TLS provider (swapped on reload), counters (read by a status endpoint) and a
shutdown event; without them the bridge binds, builds and keeps its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.connect import Connector
from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.line import LocalLine
from chardev_bridge.bridge.parts import BridgeParts
from chardev_bridge.bridge.serve import Server, describe_listeners
from chardev_bridge.bridge.session import SessionRunner
from chardev_bridge.bridge.slots import SessionSlots
from chardev_bridge.common.logcontext import bridge_name
from chardev_bridge.local import open_local_end
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.qemu.setup import build_tls_setup
from chardev_bridge.share.stats import ShareCounters
from chardev_bridge.share.taps import Taps, open_sharing
from chardev_bridge.tls.setup import TLSProvider, TLSSetup

log = logging.getLogger("chardev_bridge")


@dataclass
class BridgeReady:
    """Passed to ``task_status.started()`` once the bridge is up (for tests and embedders)."""

    local: str
    pty_path: str | None = None
    ports: list[int] = field(default_factory=list)
    # Viewer and console-log counters, for a status endpoint to read.
    share: ShareCounters | None = None
    counters: BridgeCounters | None = None


def fixed_tls(setup: TLSSetup | None) -> TLSProvider:
    """A TLS provider that always gives ``setup``."""
    return lambda: setup


async def run_bridge(
    cfg: BridgeConfig,
    *,
    listeners: list[trio.SocketListener] | None = None,
    local: LocalEnd | None = None,
    tls: TLSProvider | None = None,
    counters: BridgeCounters | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[BridgeReady] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run until the local end is exhausted, the connection ends (without ``reconnect``),
    ``shutdown`` is set (graceful: in-flight bytes delivered, close_notify sent) or the caller
    cancels. Returns the process exit status.

    ``listeners`` (a listening bridge) replaces binding ``cfg.host``/``cfg.port``; ``local``
    an end the caller has opened and started, and keeps open (a pty that outlives a restart
    of its bridge); ``tls`` replaces building the TLS setup from ``cfg`` once (raises
    ``CredentialError`` for bad credentials); ``counters`` is where the bridge counts.
    """
    if cfg.name is not None:
        bridge_name.set(cfg.name)
    provider = tls if tls is not None else fixed_tls(build_tls_setup(cfg.tls_settings))
    counters = counters if counters is not None else BridgeCounters()
    share = ShareCounters()
    async with (
        open_sharing(cfg.traffic_log, cfg.viewers, share) as taps,
        _local_end(cfg, local) as local,
        _listeners(cfg, listeners) as listeners,
    ):
        ready = BridgeReady(
            local=local.describe(), pty_path=local.pty_path, share=share, counters=counters
        )
        log.info("local end: %s", ready.local)
        bridge = Bridge(_parts(cfg, provider, local, taps, counters))
        async with trio.open_nursery() as nursery:
            if shutdown is not None:
                nursery.start_soon(bridge.shutdown_on, shutdown)
            if taps is not None:
                nursery.start_soon(taps.run)
            code = await bridge.run(ready, listeners, task_status)
            nursery.cancel_scope.cancel()
        counters.state = "stopped"
        return code


@asynccontextmanager
async def _local_end(cfg: BridgeConfig, given: LocalEnd | None) -> AsyncIterator[LocalEnd]:
    if given is not None:
        yield given
        return
    async with open_local_end(cfg.local, link=cfg.link) as local:
        await local.start()
        yield local


@asynccontextmanager
async def _listeners(
    cfg: BridgeConfig, given: list[trio.SocketListener] | None
) -> AsyncIterator[list[trio.SocketListener]]:
    """The listeners handed in (the caller's to close), or bound here and closed at the end."""
    if given is not None or not cfg.listen:
        yield given or []
        return
    bound = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
    try:
        yield bound
    finally:
        for listener in bound:
            await trio.aclose_forcefully(listener)


def _parts(
    cfg: BridgeConfig,
    tls: TLSProvider,
    local: LocalEnd,
    taps: Taps | None,
    counters: BridgeCounters,
) -> BridgeParts:
    line = LocalLine(
        local,
        taps=taps,
        when_unread=cfg.when_unread,
        scrollback=cfg.scrollback,
        when_disconnected=cfg.when_disconnected,
        hold_limit=cfg.hold_limit,
        grace=cfg.shutdown_grace,
        dropped=counters.dropped_bytes,
    )
    # A line carries one session at a time; a socket end one per local connection.
    capacity = 1 if local.persistent else cfg.max_sessions
    slots = SessionSlots(capacity, cfg.second_client, cfg.shutdown_grace)
    runner = SessionRunner(
        line,
        slots,
        counters,
        listening=cfg.listen,
        one_shot=not cfg.listen and cfg.reconnect is None,
        idle_timeout=cfg.idle_timeout,
        grace=cfg.shutdown_grace,
    )
    return BridgeParts(cfg, tls, line, slots, runner, counters)


class Bridge:
    """One bridge's life: its line opened, serving or connecting, a graceful end."""

    def __init__(self, parts: BridgeParts) -> None:
        self.parts = parts

    async def run(
        self,
        ready: BridgeReady,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[BridgeReady],
    ) -> int:
        """Serve or connect until done; returns the exit status."""
        parts = self.parts
        code = 0
        with parts.main:
            async with trio.open_nursery() as nursery:
                await parts.line.open(nursery, parts.slots.wait_idle, lambda: parts.stopping)
                if parts.cfg.listen:
                    ready.ports = describe_listeners(listeners, parts.tls() is not None)
                    parts.counters.state = "listening"
                    task_status.started(ready)
                    await Server(parts).serve(listeners)
                else:
                    task_status.started(ready)
                    code = await Connector(parts).run()
                    if parts.runner.last_failure is not None and not parts.stopping:
                        # The local end may have ended (stdin EOF) in the same moment as the
                        # session failed; which came first must not decide the exit status.
                        code = 1
                await parts.line.deliver_scrollback()
                nursery.cancel_scope.cancel()
        if code == 0:  # else the failure, which says why, stays the last line
            parts.line.report_unsent()
        return code

    async def shutdown_on(self, event: trio.Event) -> None:
        """Wait for ``event``, then end gracefully within ``shutdown_grace`` seconds."""
        await event.wait()
        parts = self.parts
        parts.stop_accepting()
        deadline = trio.current_time() + parts.cfg.shutdown_grace
        with trio.move_on_at(deadline):
            parts.slots.drain_all("bridge shutting down")
            await parts.slots.wait_all_done()
        await parts.line.deliver_scrollback(deadline)
        parts.main.cancel()
