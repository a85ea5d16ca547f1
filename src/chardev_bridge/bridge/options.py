"""The command line's vocabulary of one bridge: the options, their parsing and the checks
of what goes together. The single-bridge CLI and the config file of ``serve`` share it."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import NoReturn

from chardev_bridge._version import __version__
from chardev_bridge.bridge.config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_RECONNECT_MAX,
    DEFAULT_SCROLLBACK,
    BridgeConfig,
    ConfigError,
    InvalidConfig,
    TrafficLogConfig,
)
from chardev_bridge.local import LocalSpec, parse_local_spec
from chardev_bridge.local.holding import DEFAULT_PTY_HOLD_MAX
from chardev_bridge.share.options import (
    add_rotation_arguments,
    add_viewer_arguments,
    byte_size,
    logfile_backups,
    sharing_problems,
    viewers_from_args,
)

_EPILOG = """\
examples:
  chardev-bridge --server --tls-creds /etc/pki/qemu
      listen on localhost:9000 with TLS; the local end is a new pty (its path is printed)
  chardev-bridge --host vmhost --port 9000 --tls-creds ~/qemu-client --link ~/vm-console
      connect to a QEMU TLS chardev (server=on) and expose it as a pty, linked at ~/vm-console
  chardev-bridge creds init ./pki
      make a CA, server and client credential directories in QEMU's layout

The TLS role follows the TCP role unless --tls-endpoint says otherwise, as in QEMU.

credentials (chardev-bridge creds SUBCOMMAND --help):
  creds init DIR      make a CA and DIR/server, DIR/client credential directories (QEMU layout)
  creds issue DIR     issue another server or client certificate from DIR/ca
  creds check DIR     run QEMU's load-time checks on a credentials directory
  creds revoke DIR    revoke certificates: DIR/ca/ca-crl.pem, installed in DIR/server

output:
  With a pty local end, "pty: /dev/pts/N" is printed on stdout (flushed) once the pty exists;
  scripts wait for that line. Log lines go to stderr: -v adds debugging detail, -q leaves
  warnings and errors only.

reconnecting:
  With --reconnect SECONDS, a refused connection (nothing listens yet: QEMU restarting) is
  retried after 0.1 s, doubling up to SECONDS; any other failure or an ended session waits
  SECONDS, doubling up to --reconnect-max; with jitter; a session that lasted resets the
  delay. Without it a connecting bridge exits after its session.

signals:
  SIGTERM or SIGINT: stop taking new sessions, deliver the bytes in flight and send TLS
  close_notify (up to 5 s), remove the --link, exit 0. A second signal stops at once.
  SIGUSR1: reopen the --logfile by its name, after an external logrotate (ignored without).

exit status:
  0  the session ended cleanly, the local end ended (stdin EOF), or SIGTERM/SIGINT
  1  a start-up error (credentials, address, local end: one line naming it), or a failed
     connection or session of a connecting bridge without --reconnect, or the last one
     before its local end ended (stdin EOF) with --reconnect
  2  a command line error
"""

_USAGE = (
    "%(prog)s [--server] [--host HOST] [--port PORT] [--local SPEC]"
    " [--tls-creds DIR] [options]\n"
    "       %(prog)s creds {init,issue,check,revoke} ... (see: %(prog)s creds --help)\n"
    "       %(prog)s serve --config FILE [--check] (see: %(prog)s serve --help)"
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def _local_spec(text: str) -> LocalSpec:
    try:
        return parse_local_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


class OneLineErrors(argparse.ArgumentParser):
    """Says what is wrong in one line, without the 17 lines of usage around it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _RaisingParser(argparse.ArgumentParser):
    """Raises what is wrong instead of exiting: a config file reports every error."""

    def error(self, message: str) -> NoReturn:
        raise OptionError(message)


class OptionError(ValueError):
    """An option argparse refused (unknown, wrong type, missing value)."""


def build_parser(*, raise_errors: bool = False) -> argparse.ArgumentParser:
    """The argument parser; the option spellings are a documented contract. With
    ``raise_errors`` it raises :class:`OptionError` instead of exiting."""
    p = (_RaisingParser if raise_errors else OneLineErrors)(
        prog="chardev-bridge",
        usage=_USAGE,
        description=(
            "Carry a character device's byte stream between a local end (a pty by default)"
            " and a remote TCP peer, optionally over TLS with QEMU tls-creds-x509 directories."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_remote_arguments(p)
    _add_tls_arguments(p)
    _add_local_arguments(p)
    _add_traffic_log_arguments(p)
    add_viewer_arguments(p)
    _add_output_arguments(p)
    return p


def _add_remote_arguments(p: argparse.ArgumentParser) -> None:
    """The remote peer: where it is, which side listens, reconnecting, sessions."""
    net = p.add_argument_group("remote connection")
    net.add_argument(
        "--server", action="store_true", help="listen for the remote peer (TCP server)"
    )
    net.add_argument(
        "--listen-fd",
        metavar="NAME",
        help="with --server: accept on the socket systemd passed with FileDescriptorName=NAME"
        " (socket activation) instead of binding --host/--port",
    )
    net.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on or connect to: IPv4, IPv6 or a name (default {DEFAULT_HOST})",
    )
    net.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    net.add_argument(
        "--reconnect",
        type=_positive_float,
        metavar="SECONDS",
        help="connecting bridge: retry after failures and disconnects. A refused connection"
        " (nothing listens yet: QEMU restarting) is retried after 0.1 s, doubling up to"
        " SECONDS; anything else (a host that is down, a timeout, a session that ended) after"
        " SECONDS, doubling up to --reconnect-max",
    )
    net.add_argument(
        "--reconnect-max",
        type=_positive_float,
        default=DEFAULT_RECONNECT_MAX,
        metavar="SECONDS",
        help=f"longest delay between retries (default {DEFAULT_RECONNECT_MAX:g})",
    )
    net.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="drop a peer that has not finished its TLS handshake by then; also the"
        f" TCP connect timeout (default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    net.add_argument(
        "--idle-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="end a session after SECONDS with no bytes either way (default: never)",
    )
    net.add_argument(
        "--max-sessions",
        type=int,
        default=1,
        metavar="N",
        help="concurrent sessions for a socket --local (each local client or remote client"
        " gets its own connection on the other side, like stunnel); default 1",
    )
    net.add_argument(
        "--second-client",
        choices=("reject", "replace"),
        default="reject",
        help="a listening bridge with a session active: refuse a new client (default), or let"
        " the new authenticated client take over (ser2net's kickolduser)",
    )


def _add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """TLS: QEMU credential directories, the endpoint roles, peer checks, priority."""
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--tls-creds",
        type=Path,
        metavar="DIR",
        help="QEMU tls-creds-x509 directory (ca-cert.pem, server-*.pem or client-*.pem, ...);"
        " without it the connection is plain TCP",
    )
    tls.add_argument(
        "--tls-creds-psk",
        type=Path,
        metavar="DIR",
        help="QEMU tls-creds-psk directory (keys.psk: 'username:hexkey' lines) instead of"
        " certificates; needs Python 3.13+ or pip install 'chardev-bridge[psk]'",
    )
    tls.add_argument(
        "--tls-username",
        metavar="NAME",
        help="PSK identity a TLS client sends (default qemu, as QEMU)",
    )
    tls.add_argument(
        "--tls-endpoint",
        choices=("server", "client"),
        help="TLS role (default: server with --server, else client)",
    )
    tls.add_argument(
        "--no-verify-peer",
        dest="verify_peer",
        action="store_false",
        help="do not verify the peer's certificate (QEMU verify-peer=off)",
    )
    tls.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="name the server certificate must carry (TLS client; default: --host)",
    )
    tls.add_argument(
        "--tls-key-password-file",
        type=Path,
        metavar="FILE",
        help="password for an encrypted private key (QEMU passwordid)",
    )
    tls.add_argument(
        "--no-qemu-stall-workaround",
        dest="qemu_stall_workaround",
        action="store_false",
        help="do not end each TLS write with a 1-byte record (needed by QEMU 7.2, which"
        " otherwise leaves received bytes unprocessed until more arrive)",
    )
    tls.add_argument(
        "--tls-priority",
        metavar="STRING",
        help="gnutls priority string as QEMU takes it (NORMAL, SECURE256:-VERS-TLS1.2, @SYSTEM"
        " ...); default: CHARDEV_BRIDGE in"
        " /etc/crypto-policies/local.d/gnutls-chardev-bridge.config, else TLS 1.2 minimum",
    )
    tls.add_argument(
        "--tls-authz",
        action="append",
        default=[],
        metavar="PATTERN",
        help="allow peers whose certificate DN matches (glob, repeatable, first match wins;"
        " default deny once given), e.g. 'O=Example,CN=*.example.org'",
    )
    tls.add_argument(
        "--tls-authz-file",
        type=Path,
        metavar="FILE",
        help='QEMU authz-list rules as JSON: {"policy": "deny", "rules": [...]}',
    )


def _add_local_arguments(p: argparse.ArgumentParser) -> None:
    """The local end, and its bytes while no remote is connected or nobody reads."""
    loc = p.add_argument_group("local end")
    loc.add_argument(
        "--local",
        type=_local_spec,
        default=LocalSpec("pty"),
        metavar="SPEC",
        help="pty (default), tty:PATH, unix:PATH, unix-listen:PATH, tcp:HOST:PORT,"
        " tcp-listen:HOST:PORT, stdio",
    )
    loc.add_argument("--link", type=Path, metavar="PATH", help="symlink PATH to the new pty")
    loc.add_argument(
        "--when-disconnected",
        choices=("block", "drop"),
        help="local bytes while no remote is connected: keep them for the next session"
        " (block: writers wait once the local end is full; the default, except for a pty)"
        " or drop them (QEMU's behaviour). A pty's default is to hold them for at most"
        f" {DEFAULT_PTY_HOLD_MAX:g} s (--hold-max {DEFAULT_PTY_HOLD_MAX:g}): a keystroke typed"
        " during a brief reconnect still arrives, a command typed while the VM rebooted does"
        " not run in the next boot. Give block alone to hold every byte without a limit",
    )
    loc.add_argument(
        "--hold-max",
        type=_positive_float,
        metavar="SECONDS",
        help="drop, and count in one log line, held local bytes older than SECONDS when the"
        f" next session begins (pty, tty, stdio; default {DEFAULT_PTY_HOLD_MAX:g} for a pty"
        " unless --when-disconnected is given, else no limit)",
    )
    loc.add_argument(
        "--when-unread",
        choices=("block", "buffer"),
        default="block",
        help="remote bytes the local end does not read: back-pressure (block, default), or"
        " keep the newest --scrollback bytes and drop the oldest (buffer)",
    )
    loc.add_argument(
        "--scrollback",
        type=byte_size,
        default=DEFAULT_SCROLLBACK,
        metavar="BYTES",
        help=f"scrollback size for --when-unread buffer (default {DEFAULT_SCROLLBACK}; K/M/G ok)",
    )


def _add_traffic_log_arguments(p: argparse.ArgumentParser) -> None:
    """The traffic log: QEMU's logfile, plus directions, formats and rotation."""
    trace = p.add_argument_group("traffic log")
    trace.add_argument(
        "--logfile",
        type=Path,
        metavar="FILE",
        help="copy what the bridge sends to the remote into FILE (QEMU's logfile)",
    )
    trace.add_argument(
        "--logappend", action="store_true", help="append to --logfile instead of truncating it"
    )
    trace.add_argument(
        "--logfile-direction",
        choices=("to-remote", "from-remote", "both"),
        default="to-remote",
        help="log what goes to the remote (QEMU's meaning, default), what comes from it"
        " (a VM's console output), or both directions",
    )
    trace.add_argument(
        "--log-format",
        choices=("raw", "hex", "lines"),
        default="raw",
        help="raw bytes (default), timestamped hex dump lines, or lines: one line per console"
        " line with an ISO-8601 timestamp, control characters escaped (> / < mark directions)",
    )
    add_rotation_arguments(trace)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """The status endpoint, logging and the version."""
    out = p.add_argument_group("output")
    out.add_argument(
        "--status",
        metavar="SPEC",
        help="serve /_status (JSON) and /metrics (Prometheus) over HTTP on tcp-listen:HOST:PORT"
        " or unix-listen:PATH (tcp:/unix: too)",
    )
    add_logging_arguments(out)
    out.add_argument("--version", action="version", version=f"chardev-bridge {__version__}")


def add_logging_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet``; :func:`log_level` reads them."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")


def log_level(args: argparse.Namespace) -> int:
    """The logging level ``-v``/``-q`` ask for."""
    return logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO


def config_from_argv(argv: list[str], *, name: str | None = None) -> BridgeConfig:
    """The configuration the command line ``argv`` describes, without exiting: raises
    :class:`OptionError` or :class:`InvalidConfig` (every problem, one line each)."""
    args = _raising_parser().parse_args(argv)
    return config_from_args(args, name=name)


@functools.cache
def _raising_parser() -> argparse.ArgumentParser:
    # Built once: a config file of 500 bridges would otherwise build 500 parsers (~1 ms each).
    return build_parser(raise_errors=True)


def config_from_args(args: argparse.Namespace, *, name: str | None = None) -> BridgeConfig:
    """Turn parsed arguments into the library's configuration; raises
    :class:`InvalidConfig` naming every setting that cannot be used as given."""
    errors = option_problems(args)
    try:
        cfg = _config(args, name)
    except InvalidConfig as exc:
        errors += exc.errors
    if errors:
        raise InvalidConfig(errors)
    return cfg


def option_problems(args: argparse.Namespace) -> list[ConfigError]:
    """Options given without the option they modify (they would be silently ignored)."""
    errors = sharing_problems(args)
    if args.logappend and args.logfile is None:
        errors.append(ConfigError("logappend", "--logappend needs --logfile"))
    return errors


def _config(args: argparse.Namespace, name: str | None) -> BridgeConfig:
    return BridgeConfig(
        name=name,
        listen_fd=args.listen_fd,
        listen=args.server,
        host=args.host,
        port=args.port,
        local=args.local,
        link=args.link,
        tls_creds=args.tls_creds,
        tls_creds_psk=args.tls_creds_psk,
        tls_username=args.tls_username,
        tls_endpoint=args.tls_endpoint,
        verify_peer=args.verify_peer,
        tls_hostname=args.tls_hostname,
        key_password_file=args.tls_key_password_file,
        tls_priority=args.tls_priority,
        tls_authz=tuple(args.tls_authz),
        tls_authz_file=args.tls_authz_file,
        reconnect=args.reconnect,
        reconnect_max=args.reconnect_max,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        max_sessions=args.max_sessions,
        qemu_stall_workaround=args.qemu_stall_workaround,
        second_client=args.second_client,
        when_disconnected=args.when_disconnected,
        hold_max=args.hold_max,
        when_unread=args.when_unread,
        scrollback=args.scrollback,
        traffic_log=(
            TrafficLogConfig(
                path=args.logfile,
                append=args.logappend,
                direction=args.logfile_direction,
                format=args.log_format,
                max_bytes=args.logfile_max,
                backups=logfile_backups(args),
            )
            if args.logfile
            else None
        ),
        viewers=viewers_from_args(args),
    )
