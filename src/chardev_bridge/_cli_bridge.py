"""The running ``chardev-bridge`` command: one bridge under trio, with its signals, its
status endpoint and its credential reloads. :mod:`chardev_bridge.cli` imports this only
once its options are parsed and the credential checks have started."""

from __future__ import annotations

import logging
import signal

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.datapath import keep_read_buffers_off_mmap
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from chardev_bridge.qemu._isolated import ChildCheck
from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.setup import ReloadableTLS

log = logging.getLogger("chardev_bridge")


def run_command(cfg: BridgeConfig, status: str | None, started: ChildCheck | None) -> int:
    """Run the bridge of ``cfg`` until it ends; ``status``: ``--status``; ``started``: its
    credential checks, already running. Returns the exit status; start-up failures raise."""
    keep_read_buffers_off_mmap()
    return trio.run(_run, cfg, status, started)


class _AnnounceReady:
    """Receives ``run_bridge``'s ready signal and prints the pty path on stdout."""

    def __init__(self) -> None:
        self.ready: BridgeReady | None = None

    def started(self, value: BridgeReady | None = None) -> None:
        self.ready = value
        if value is not None and value.pty_path:
            # Scripts wait for this line, and stdout may be a pipe: flush it now.
            print(f"pty: {value.pty_path}", flush=True)


async def _run(cfg: BridgeConfig, status: str | None, started: ChildCheck | None) -> int:
    result = 0
    shutdown = trio.Event()
    tls = ReloadableTLS(cfg.tls_settings, started=started)
    counters = BridgeCounters()
    announce = _AnnounceReady()
    listeners = _activated_listeners(cfg.listen_fd) if cfg.listen_fd is not None else None
    # A logrotate that sends SIGUSR1 to every console process must not kill one without a
    # log file (the default action); one with a log reopens it (share/taps.py).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        reload_credentials(tls)
                    elif shutdown.is_set():
                        log.info("%s again: stopping now", name)
                        nursery.cancel_scope.cancel()
                    else:
                        log.info("%s: shutting down (in-flight bytes first)", name)
                        shutdown.set()

            async def bridge() -> None:
                nonlocal result
                result = await run_bridge(
                    cfg,
                    listeners=listeners,
                    tls=tls,
                    counters=counters,
                    shutdown=shutdown,
                    task_status=announce,
                )
                nursery.cancel_scope.cancel()

            if status is not None:
                await _start_status(nursery, status, cfg, counters, announce, tls)
            nursery.start_soon(stop_on_signal)
            nursery.start_soon(bridge)
    return result


async def _start_status(
    nursery: trio.Nursery,
    spec: str,
    cfg: BridgeConfig,
    counters: BridgeCounters,
    announce: _AnnounceReady,
    tls: ReloadableTLS,
) -> None:
    """``--status``: the status endpoint, for this one bridge."""
    from chardev_bridge.serve.status import open_status_listeners, serve_status
    from chardev_bridge.serve.statusmodel import ProcessStatus
    from chardev_bridge.serve.supervisor import bridge_status

    def snapshot() -> ProcessStatus:
        one = bridge_status(cfg.name or "bridge", cfg, counters, announce.ready, tls.setup)
        return ProcessStatus(bridges=[one])

    listeners = await open_status_listeners(spec)
    nursery.start_soon(serve_status, listeners, snapshot)
    log.info("status endpoint on %s", spec)


def reload_credentials(tls: ReloadableTLS) -> None:
    """SIGHUP: read the credential files again; new handshakes use them, sessions in
    progress keep theirs. Files that fail a check change nothing."""
    try:
        changed = tls.install(tls.prepare())
    except (CredentialError, ValueError) as exc:
        for line in str(exc).splitlines():
            log.error("%s", line)
        log.error("SIGHUP: credentials not reloaded; new handshakes use the ones loaded before")
        return
    if changed:
        log.info("SIGHUP: credentials changed: new handshakes use the new files")
    else:
        log.info("SIGHUP: credential files unchanged")


def _activated_listeners(name: str) -> list[trio.SocketListener]:
    """The sockets systemd passed under ``name`` (``--listen-fd``), as trio listeners."""
    from chardev_bridge.serve.systemd import (
        SocketActivationError,
        listeners_from,
        named_sockets,
        take_listen_fds,
    )

    try:
        return listeners_from(named_sockets(take_listen_fds(), name))
    except SocketActivationError as exc:
        raise SocketActivationError(f"--listen-fd {name}: {exc}") from None
