"""The bridge's configuration, as the library API takes it, and every rule about which
settings go together (the CLI and the config file only fill it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chardev_bridge.common.configerror import ConfigError, InvalidConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.local.holding import check_hold_max, hold_limit
from chardev_bridge.qemu.settings import TLSSettings
from chardev_bridge.share.config import TrafficLogConfig, ViewersConfig
from chardev_bridge.tls.setup import Endpoint

__all__ = ["BridgeConfig", "ConfigError", "InvalidConfig", "TrafficLogConfig"]

#: The port QEMU's documentation uses in its TLS chardev examples.
DEFAULT_PORT = 9000
DEFAULT_HOST = "localhost"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_RECONNECT_MAX = 30.0
DEFAULT_SCROLLBACK = 1024 * 1024
DEFAULT_SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True)
class BridgeConfig:
    """Everything one bridge needs; see ``chardev-bridge --help`` for each field's meaning."""

    listen: bool = False
    # The bridge's name in log lines and status (a config file's [bridge.NAME]).
    name: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    local: LocalSpec = field(default_factory=lambda: LocalSpec("pty"))
    link: Path | None = None
    # A listening bridge: accept on the socket systemd passed under this name instead of
    # binding host/port (the caller hands the listeners to run_bridge).
    listen_fd: str | None = None
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
        errors = self.problems()
        if errors:
            raise InvalidConfig(errors)

    def problems(self) -> list[ConfigError]:
        """What is wrong with this combination of settings (empty: nothing)."""
        errors: list[ConfigError] = []

        def problem(setting: str, message: str) -> None:
            errors.append(ConfigError(setting, message))

        kind = self.local.kind
        if self.link is not None and kind != "pty":
            problem("link", "--link only applies to --local pty")
        if self.listen_fd is not None and not self.listen:
            problem("listen-fd", "--listen-fd applies to a listening bridge (--server)")
        if self.reconnect is not None and self.listen:
            problem("reconnect", "--reconnect applies to a connecting bridge, not --server")
        if self.max_sessions < 1:
            problem("max-sessions", "--max-sessions must be at least 1")
        elif self.max_sessions > 1:
            if kind in ("pty", "tty", "stdio"):
                problem("max-sessions", f"--max-sessions: a {kind} carries one session at a time")
            elif not self.listen and not kind.endswith("-listen"):
                problem(
                    "max-sessions",
                    "--max-sessions with a connecting bridge needs a tcp-listen/unix-listen"
                    " --local",
                )
            if self.second_client == "replace":
                problem("second-client", "--second-client replace needs --max-sessions 1")
        if self.tls_creds is not None and self.tls_creds_psk is not None:
            problem("tls-creds-psk", "give --tls-creds or --tls-creds-psk, not both")
        if self.tls_authz and self.tls_authz_file is not None:
            problem("tls-authz-file", "give --tls-authz or --tls-authz-file, not both")
        try:
            check_hold_max(kind, self.when_disconnected, self.hold_max)
        except ValueError as exc:
            problem("hold-max", str(exc))
        return errors

    @property
    def tls_settings(self) -> TLSSettings:
        """The TLS part of the configuration, as the TLS set-up takes it."""
        if self.tls_endpoint is not None:
            source = f"--tls-endpoint {self.tls_endpoint}"
        else:
            source = "it listens: --server" if self.listen else "it connects: no --server"
        return TLSSettings(
            endpoint=self.endpoint,
            role_source=source,
            creds=self.tls_creds,
            creds_psk=self.tls_creds_psk,
            username=self.tls_username,
            verify_peer=self.verify_peer,
            hostname=self.tls_hostname,
            connect_host=self.host,
            key_password_file=self.key_password_file,
            priority=self.tls_priority,
            authz=self.tls_authz,
            authz_file=self.tls_authz_file,
            split_last_byte=self.qemu_stall_workaround,
        )

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
