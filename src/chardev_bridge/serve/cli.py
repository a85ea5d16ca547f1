"""``chardev-bridge serve --config FILE``: the console server's command line."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from pathlib import Path

import trio

from chardev_bridge.bridge.datapath import keep_read_buffers_off_mmap
from chardev_bridge.bridge.options import OneLineErrors, add_logging_arguments, log_level
from chardev_bridge.common.logcontext import configure_logging
from chardev_bridge.common.starterror import exception_leaves
from chardev_bridge.serve.configfile import ConfigFileError
from chardev_bridge.serve.server import ConsoleServer, Prepared, prepare
from chardev_bridge.serve.systemd import (
    Notifier,
    SocketActivationError,
    run_watchdog,
    take_listen_fds,
    watchdog_interval,
)

log = logging.getLogger("chardev_bridge")


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` subcommand's options."""
    p = OneLineErrors(
        prog="chardev-bridge serve",
        description="Run every bridge of a config file in one process. SIGHUP reloads the"
        " file and every credential directory; SIGTERM/SIGINT stop every bridge gracefully.",
    )
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="the TOML file")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the file and every credential directory it names, then exit 0 (all"
        " good) or 1 (each problem on one line); starts nothing",
    )
    add_logging_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``chardev-bridge serve``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(log_level(args))
    try:
        if args.check:
            prepared = _check(args.config)
            log.info("%s: %d bridges, no problems", args.config, len(prepared.config.bridges))
            return 0
        fds = take_listen_fds()
        prepared = prepare(args.config, {}, fds)
    except ConfigFileError as exc:
        for line in exc.lines:
            log.error("%s", line)
        log.error("%s: %d problem(s); nothing started", args.config, len(exc.lines))
        return 1
    except SocketActivationError as exc:
        log.error("%s", exc)
        return 1
    _raise_open_files_limit()
    keep_read_buffers_off_mmap()
    server = ConsoleServer(args.config, Notifier.from_environ(), fds)
    try:
        return trio.run(_serve, server, prepared)
    except (OSError, BaseExceptionGroup) as exc:
        # The status endpoint's address in use, say: one line each, no traceback.
        leaves = exception_leaves(exc)
        if not all(isinstance(leaf, OSError) for leaf in leaves):
            raise
        for leaf in leaves:
            log.error("%s", leaf)
        return 1


def _raise_open_files_limit() -> None:
    """Every bridge holds a few descriptors (listener, pty, sessions): hundreds of bridges
    need more than the usual soft limit of 1024, and the hard limit is there to be used."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.debug("open files limit stays %d: %s", soft, exc)


def _check(path: Path) -> Prepared:
    """Every check of a start but socket activation (systemd passes no sockets to a check)."""
    prepared = prepare(path, {}, None)
    for name, cfg in prepared.config.bridges.items():
        if cfg.listen_fd is not None:
            log.info("[bridge.%s] listen-fd: checked when systemd passes the socket", name)
    return prepared


async def _serve(server: ConsoleServer, prepared: Prepared) -> int:
    # A logrotate that sends SIGUSR1 to every console process must not kill one without a
    # log file (the default action); bridges with a log reopen it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    async with trio.open_nursery() as nursery:
        status = prepared.config.status_listen
        if status is not None:
            from chardev_bridge.serve.status import open_status_listeners, serve_status

            listeners = await open_status_listeners(status)
            nursery.start_soon(serve_status, listeners, server.status)
            log.info("status endpoint on %s", status)
        interval = watchdog_interval()
        if interval is not None:
            nursery.start_soon(run_watchdog, server.notifier, interval)

        async def run_server(task_status: trio.TaskStatus[None]) -> None:
            await server.run(prepared, task_status)
            nursery.cancel_scope.cancel()  # every bridge has stopped: the endpoint goes too

        await nursery.start(run_server)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
