"""The ``chardev-bridge`` command: argument parsing over :func:`run_bridge`, and start-up
errors in one line each.

Nothing here imports trio or cryptography: the credential checks start in a child as soon as
the options are parsed, and run on another core while this process loads the bridge."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys

from chardev_bridge.bridge.config import InvalidConfig
from chardev_bridge.bridge.options import build_parser, config_from_args, log_level
from chardev_bridge.common.logcontext import configure_logging
from chardev_bridge.common.starterror import StartError, describe_listen_error, exception_leaves
from chardev_bridge.local import LocalSpec
from chardev_bridge.qemu._isolated import start_checks
from chardev_bridge.qemu.credfiles import CredentialError

log = logging.getLogger("chardev_bridge")


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
    started = start_checks(cfg.tls_settings)
    from chardev_bridge._cli_bridge import run_command

    try:
        return run_command(cfg, args.status, started)
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
