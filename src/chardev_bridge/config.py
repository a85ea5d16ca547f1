"""The bridge's configuration, as the library API takes it (the CLI only fills it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chardev_bridge.holding import check_hold_max, hold_limit
from chardev_bridge.local import LocalSpec
from chardev_bridge.tlspolicy import Endpoint
from chardev_bridge.viewers import ViewersConfig

#: The port QEMU's documentation uses in its TLS chardev examples.
DEFAULT_PORT = 9000
DEFAULT_HOST = "localhost"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_RECONNECT_MAX = 30.0
DEFAULT_SCROLLBACK = 1024 * 1024
DEFAULT_SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class TrafficLogConfig:
    """QEMU's ``logfile``/``logappend``, plus direction and format choices for debugging."""

    path: Path
    append: bool = False
    # "to-remote": what the bridge sends to the remote (QEMU's meaning); "from-remote": what
    # the remote sent (a VM's console output); "both": both ways.
    direction: Literal["to-remote", "from-remote", "both"] = "to-remote"
    # "raw": the bytes as they are; "hex": timestamped hex dump lines; "lines": one
    # timestamped, escaped log line per console line.
    format: Literal["raw", "hex", "lines"] = "raw"
    # Rotate FILE -> FILE.1 ... FILE.<backups> before it would grow past this (None: never).
    max_bytes: int | None = None
    backups: int = 5


@dataclass(frozen=True)
class BridgeConfig:
    """Everything one bridge needs; see ``chardev-bridge --help`` for each field's meaning."""

    listen: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    local: LocalSpec = field(default_factory=lambda: LocalSpec("pty"))
    link: Path | None = None
    tls_creds: Path | None = None
    # QEMU tls-creds-psk directory (keys.psk) instead of x509; the client's identity.
    tls_creds_psk: Path | None = None
    tls_username: str | None = None
    # None: the TLS role follows the TCP role (server when listening), as QEMU defaults.
    tls_endpoint: Endpoint | None = None
    verify_peer: bool = True
    tls_hostname: str | None = None
    key_password_file: Path | None = None
    # gnutls priority string (None: the application policy file, else the default).
    tls_priority: str | None = None
    # Allow-list globs for the peer's DN (QEMU tls-authz), or a QEMU authz-list JSON file.
    tls_authz: tuple[str, ...] = ()
    tls_authz_file: Path | None = None
    # Seconds before the first retry of a connecting bridge; None: exit instead of retrying.
    reconnect: float | None = None
    reconnect_max: float = DEFAULT_RECONNECT_MAX
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    # End a session with no bytes either way for this long (None: never).
    idle_timeout: float | None = None
    # Concurrent sessions for a socket local end (each with its own local connection);
    # a pty, tty or stdio is one line and always carries one session.
    max_sessions: int = 1
    # A second client while a session is active: refuse it, or let it take over.
    second_client: Literal["reject", "replace"] = "reject"
    # Local bytes while no remote is connected: wait for the next session, or drop (QEMU).
    # None: the local end's default (see hold_limit: a pty holds them for a short while).
    when_disconnected: Literal["block", "drop"] | None = None
    # Held local bytes older than this many seconds are dropped, not sent, when the next
    # session begins (None: the default for the local end; see hold_limit).
    hold_max: float | None = None
    # Remote bytes the local end does not read: back-pressure, or a bounded scrollback.
    when_unread: Literal["block", "buffer"] = "block"
    scrollback: int = DEFAULT_SCROLLBACK
    traffic_log: TrafficLogConfig | None = None
    # Read-only viewers of what the remote sends (None: no viewer socket).
    viewers: ViewersConfig | None = None
    # End each TLS write with a 1-byte record so QEMU 7.2 processes it at once.
    qemu_stall_workaround: bool = True
    # On SIGTERM/SIGINT: how long in-flight bytes may take to drain before we cut.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE

    def __post_init__(self) -> None:
        check_hold_max(self.local.kind, self.when_disconnected, self.hold_max)

    @property
    def hold_limit(self) -> float | None:
        """How old held local bytes may get before they are dropped (None: no limit)."""
        if self.when_disconnected == "drop":
            return None
        return hold_limit(self.local.kind, self.when_disconnected, self.hold_max)

    @property
    def endpoint(self) -> Endpoint:
        """The TLS role actually used."""
        if self.tls_endpoint is not None:
            return self.tls_endpoint
        return "server" if self.listen else "client"
