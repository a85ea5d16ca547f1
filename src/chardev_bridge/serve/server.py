"""The console server: every bridge of a config file in one process, reloaded on SIGHUP.

Start: the file and every credential directory are checked first; any problem is reported
(all of them) and nothing starts. Reload: the same checks; a file or credential directory
that fails leaves everything as it was. Otherwise a bridge whose settings did not change
keeps running untouched (its credentials, if their files changed, are used by new
handshakes), a changed one is restarted (keeping its pty when its local end is the same),
removed ones stop, added ones start.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.common.logcontext import bridge_name
from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.setup import PreparedTLS, ReloadableTLS, SetupCache
from chardev_bridge.serve.configfile import ConfigFileError, ServeConfig, load_config
from chardev_bridge.serve.statusmodel import ProcessStatus
from chardev_bridge.serve.supervisor import SupervisedBridge, same_local_end
from chardev_bridge.serve.systemd import (
    Notifier,
    SocketActivationError,
    listeners_from,
    named_sockets,
)

log = logging.getLogger("chardev_bridge")

# How often the systemd STATUS= line is brought up to date (one timer for the process).
_STATUS_LINE_SECONDS = 5.0


@dataclass
class Prepared:
    """A checked config file with a TLS provider for each bridge, not yet in use."""

    config: ServeConfig
    tls: dict[str, ReloadableTLS]
    # For bridges already running: the setups built from their credential files now.
    renewed: dict[str, PreparedTLS] = field(default_factory=dict)


def prepare(
    path: Path,
    running: dict[str, SupervisedBridge],
    fds: dict[str, list[socket.socket]] | None,
) -> Prepared:
    """Read and check ``path`` and every credential directory it names, and that systemd
    passed each ``listen-fd`` socket (unless ``fds`` is None); raises
    :class:`ConfigFileError` with every problem, one line each."""
    errors: list[str] = []
    try:
        config = load_config(path)
    except ConfigFileError as exc:
        if exc.partial is None:
            raise
        config, errors = exc.partial, exc.lines
    tls: dict[str, ReloadableTLS] = {}
    renewed: dict[str, PreparedTLS] = {}
    cache: SetupCache = {}
    for name, cfg in config.bridges.items():
        where = f"{path}: [bridge.{name}]"
        if cfg.listen_fd is not None and fds is not None:
            errors += [f"{where} listen-fd: {line}" for line in _fd_problems(cfg, fds)]
        old = running.get(name)
        # The credential checks' warnings name the bridge, as its own log lines do.
        token = bridge_name.set(name)
        try:
            if old is not None and old.cfg == cfg:
                renewed[name] = old.tls.prepare(cache)
            else:
                tls[name] = ReloadableTLS(cfg.tls_settings, cache)
        except (CredentialError, ValueError) as exc:
            errors += [f"{where} {_tls_key(cfg)}: {line}" for line in str(exc).splitlines()]
        finally:
            bridge_name.reset(token)
    if errors:
        raise ConfigFileError(errors)
    return Prepared(config, tls, renewed)


def _tls_key(cfg: BridgeConfig) -> str:
    return "tls-creds-psk" if cfg.tls_creds_psk is not None else "tls-creds"


def _fd_problems(cfg: BridgeConfig, fds: dict[str, list[socket.socket]]) -> list[str]:
    assert cfg.listen_fd is not None
    try:
        named_sockets(fds, cfg.listen_fd)
    except SocketActivationError as exc:
        return [str(exc)]
    return []


class ConsoleServer:
    """Runs the bridges of one config file until SIGTERM/SIGINT."""

    def __init__(self, path: Path, notifier: Notifier, fds: dict[str, list[socket.socket]]) -> None:
        self.path = path
        self.notifier = notifier
        self.fds = fds
        self.bridges: dict[str, SupervisedBridge] = {}
        self.last_reload: float | None = None
        self.last_reload_error: str | None = None
        self._listeners: dict[str, list[trio.SocketListener]] = {}
        self._nursery: trio.Nursery | None = None

    def status(self) -> ProcessStatus:
        """Every bridge's status, and the last reload's."""
        return ProcessStatus(
            bridges=[bridge.status() for bridge in self.bridges.values()],
            last_reload=self.last_reload,
            last_reload_error=self.last_reload_error,
            config=str(self.path),
        )

    def status_line(self) -> str:
        """``12 bridges: 9 connected, 2 listening, 1 retrying``."""
        states = Counter(bridge.counters.state for bridge in self.bridges.values())
        parts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        return f"{len(self.bridges)} bridges: {parts}" if parts else "no bridges"

    async def run(self, prepared: Prepared, task_status: trio.TaskStatus[None]) -> None:
        """Start every bridge, then serve signals until told to stop."""
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._apply(prepared)
                self.last_reload = time.time()
                log.info("%s", self.status_line())
                self.notifier.ready()
                self.notifier.status(self.status_line())
                nursery.start_soon(self._keep_status_line)
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
                        continue
                    log.info("%s: stopping every bridge", signal.Signals(signum).name)
                    self.notifier.stopping()
                    await self._stop(list(self.bridges.values()))
                    nursery.cancel_scope.cancel()

    async def reload(self) -> None:
        """Read the file and the credentials again and apply the changes (SIGHUP)."""
        self.notifier.reloading()
        log.info("SIGHUP: reading %s again", self.path)
        try:
            prepared = prepare(self.path, self.bridges, self.fds)
        except ConfigFileError as exc:
            for line in exc.lines:
                log.error("%s", line)
            self.last_reload_error = f"{len(exc.lines)} error(s); first: {exc.lines[0]}"
            log.error("reload refused: nothing changed, every bridge runs as before")
        else:
            await self._apply(prepared)
            self.last_reload = time.time()
            self.last_reload_error = None
            log.info("reloaded: %s", self.status_line())
        self.notifier.ready()
        self.notifier.status(self.status_line())

    async def _apply(self, prepared: Prepared) -> None:
        new = prepared.config.bridges
        for name, setup in prepared.renewed.items():
            if self.bridges[name].tls.install(setup):
                log.info("[%s] credentials changed: new handshakes use the new files", name)
        removed = [b for n, b in self.bridges.items() if n not in new]
        changed = [b for n, b in self.bridges.items() if n in new and b.cfg != new[n]]
        for bridge in removed:
            log.info("[%s] removed from the config: stopping it", bridge.name)
        for bridge in changed:
            log.info("[%s] settings changed: restarting it", bridge.name)
        kept = {b.name: b for b in changed if same_local_end(b.cfg, new[b.name])}
        async with trio.open_nursery() as stops:
            for bridge in removed + changed:
                stops.start_soon(partial(bridge.stop, keep_local=bridge.name in kept))
        for bridge in removed + changed:
            del self.bridges[bridge.name]
        for name, cfg in new.items():
            if name in self.bridges:
                continue
            old = kept.get(name)
            bridge = SupervisedBridge(
                cfg,
                prepared.tls[name],
                listeners=self._listeners_for(cfg),
                kept_local=old.kept_local if old is not None else None,
            )
            self.bridges[name] = bridge
            assert self._nursery is not None
            await self._nursery.start(bridge.run)

    def _listeners_for(self, cfg: BridgeConfig) -> list[trio.SocketListener] | None:
        """The systemd-passed listeners of a bridge, made once and kept across restarts."""
        if cfg.listen_fd is None:
            return None
        if cfg.listen_fd not in self._listeners:
            self._listeners[cfg.listen_fd] = listeners_from(self.fds[cfg.listen_fd])
        return self._listeners[cfg.listen_fd]

    async def _stop(self, bridges: list[SupervisedBridge]) -> None:
        async with trio.open_nursery() as stops:
            for bridge in bridges:
                stops.start_soon(bridge.stop)

    async def _keep_status_line(self) -> None:
        said = self.status_line()
        while True:
            await trio.sleep(_STATUS_LINE_SECONDS)
            line = self.status_line()
            if line != said:
                self.notifier.status(line)
                said = line
