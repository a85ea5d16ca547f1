"""A bridge's TLS settings as its options and config file give them, before anything is
loaded: the command line parses into these without importing the TLS stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chardev_bridge.tls.setup import Endpoint


@dataclass(frozen=True)
class TLSSettings:
    """A bridge's TLS settings, as QEMU's ``tls-creds-x509``/``tls-creds-psk`` objects and
    the chardev's ``tls-authz`` take them."""

    endpoint: Endpoint
    # Which setting made the TLS role what it is, for error messages.
    role_source: str
    creds: Path | None = None
    creds_psk: Path | None = None
    username: str | None = None
    verify_peer: bool = True
    hostname: str | None = None
    # The host a TLS client connects to: the name the server must carry unless `hostname`.
    connect_host: str = "localhost"
    key_password_file: Path | None = None
    priority: str | None = None
    authz: tuple[str, ...] = ()
    authz_file: Path | None = None
    split_last_byte: bool = True
