"""The ``chardev-bridge`` command: argument parsing over :func:`run_bridge`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat
import sys

import trio

from chardev_bridge.bridge.config import BridgeConfig, InvalidConfig
from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.datapath import keep_read_buffers_off_mmap
from chardev_bridge.bridge.options import build_parser, config_from_args, log_level
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from chardev_bridge.common.logcontext import configure_logging
from chardev_bridge.common.starterror import StartError, describe_listen_error, exception_leaves
from chardev_bridge.local import LocalSpec
from chardev_bridge.qemu.policy import CredentialError
from chardev_bridge.qemu.setup import ReloadableTLS

log = logging.getLogger("chardev_bridge")


class _AnnounceReady:
    """Receives ``run_bridge``'s ready signal and prints the pty path on stdout."""

    def __init__(self) -> None:
        self.ready: BridgeReady | None = None

    def started(self, value: BridgeReady | None = None) -> None:
        self.ready = value
        if value is not None and value.pty_path:
            # Scripts wait for this line, and stdout may be a pipe: flush it now.
            print(f"pty: {value.pty_path}", flush=True)


async def _run(cfg: BridgeConfig, status: str | None) -> int:
    result = 0
    shutdown = trio.Event()
    tls = ReloadableTLS(cfg.tls_settings)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chardev-bridge``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["creds"]:
        from chardev_bridge.qemu.creds_cli import main as creds_main

        return creds_main(argv[1:])
    if argv[:1] == ["serve"]:
        from chardev_bridge.serve.cli import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except InvalidConfig as exc:
        parser.error(str(exc))
    configure_logging(log_level(args))
    keep_read_buffers_off_mmap()
    try:
        return trio.run(_run, cfg, args.status)
    except (CredentialError, OSError, ValueError, BaseExceptionGroup) as exc:
        # Start-up failures (bad credentials, priority or allow-list, port in use, no such
        # tty) get one line each, no traceback.
        leaves = exception_leaves(exc)
        if not all(isinstance(leaf, CredentialError | OSError | ValueError) for leaf in leaves):
            raise
        said = set()
        for leaf in leaves:
            text = _describe_start_error(leaf, args) if isinstance(leaf, OSError) else str(leaf)
            for line in text.splitlines():
                if line not in said:  # one line per address trio tried, all alike
                    said.add(line)
                    log.error("%s", line)
        return 1


def _describe_start_error(exc: OSError, args: argparse.Namespace) -> str:
    """A start-up ``OSError`` as one sentence naming the option, the path or address, the
    cause and the fix (Python's own words name none of the first three)."""
    if isinstance(exc, StartError):
        return str(exc)
    local: LocalSpec = args.local
    if local.kind == "tty" and exc.filename == local.path:
        return _describe_tty_error(exc, local.path)
    binding = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    code = exc.errno
    if args.server and exc.filename is None and code is not None and (code in binding or code < 0):
        # The local end names its own failures (StartError, or the path); an address
        # error without one is the remote listener's. A negative errno: getaddrinfo's.
        option = f"--host {args.host} --port {args.port}"
        return describe_listen_error(exc, option, args.host, args.port)
    return str(exc)


def _describe_tty_error(exc: OSError, path: str) -> str:
    spec = f"--local tty:{path}"
    if exc.errno == errno.ENOENT:
        if path.startswith("/dev/pts/"):
            return (
                f"{spec}: {path} does not exist: a pty lives only as long as the program that"
                " made it (QEMU prints 'char device redirected to /dev/pts/N'); `ls /dev/pts`"
                " lists those there are"
            )
        return f"{spec}: {path} does not exist (a USB serial adapter: see /dev/serial/by-id/)"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if stat.S_ISSOCK(mode):  # opening one fails with ENXIO, "No such device or address"
        return (
            f"{spec}: {path} is not a terminal device (a tty); it is a unix socket:"
            f" use --local unix:{path}"
        )
    if exc.errno == errno.ENOTTY:
        what = "; it is a regular file" if stat.S_ISREG(mode) else ""
        return f"{spec}: {path} is not a terminal device (a tty){what}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        try:
            import grp  # for this message only

            group = grp.getgrgid(os.stat(path).st_gid).gr_name
            fix = f": add this user to group {group}, which may open it"
        except (OSError, KeyError):
            fix = ""
        return f"{spec}: permission denied: this user may not open {path} read-write{fix}"
    return f"{spec}: cannot open {path}: {exc.strerror or exc}"
