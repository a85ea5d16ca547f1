"""What the status endpoint reports: plain snapshots of each bridge and of the process.

No trio and no I/O here, so the JSON shape is tested without sockets, and no field can
hold key material: only names, addresses, counters and times are modelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

BridgeState = Literal["connected", "listening", "connecting", "retrying", "stopped"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BridgeStatus:
    """One named bridge at one instant.

    Counters (``sessions``, bytes, ``reconnects``, failures, drops) only grow for the life
    of the bridge; a bridge recreated by a reload starts again from zero.
    """

    name: str
    state: BridgeState
    local: str
    remote: str | None = None
    peer: str | None = None
    peer_dn: str | None = None
    tls: str | None = None
    link: str | None = None
    sessions: int = 0
    bytes_to_remote: int = 0
    bytes_from_remote: int = 0
    last_error: str | None = None
    cert_not_after: float | None = None
    """Unix time at which this bridge's own certificate expires."""
    viewers: int = 0
    reconnects: int = 0
    handshake_failures: dict[str, int] = field(default_factory=dict)
    """Failed TLS handshakes by reason."""
    dropped_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes discarded by reason."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessStatus:
    """The whole console server at one instant."""

    bridges: list[BridgeStatus]
    last_reload: float | None = None
    """Unix time of the last successful load or reload of the configuration."""
    last_reload_error: str | None = None
    config: str | None = None
    """Path of the configuration file."""


def iso_utc(unix_time: float | None) -> str | None:
    """``2024-05-01T12:00:00Z`` for a unix time, ``None`` for ``None``."""
    if unix_time is None:
        return None
    moment = datetime.fromtimestamp(unix_time, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _bridge_json(bridge: BridgeStatus) -> dict[str, object]:
    # Listed field by field rather than dataclasses.asdict: a field added to BridgeStatus
    # later must be a decision to publish, not a side effect.
    return {
        "state": bridge.state,
        "remote": bridge.remote,
        "peer": bridge.peer,
        "peer_dn": bridge.peer_dn,
        "tls": bridge.tls,
        "local": bridge.local,
        "link": bridge.link,
        "sessions": bridge.sessions,
        "bytes_to_remote": bridge.bytes_to_remote,
        "bytes_from_remote": bridge.bytes_from_remote,
        "last_error": bridge.last_error,
        "cert_not_after": iso_utc(bridge.cert_not_after),
        "viewers": bridge.viewers,
        "reconnects": bridge.reconnects,
        "handshake_failures": dict(sorted(bridge.handshake_failures.items())),
        "dropped_bytes": dict(sorted(bridge.dropped_bytes.items())),
    }


def status_json(status: ProcessStatus) -> bytes:
    """The ``/_status`` body: UTF-8 JSON, bridges keyed and sorted by name, times in UTC.

    Raises :class:`ValueError` if two bridges share a name (one would hide the other).
    """
    bridges: dict[str, object] = {}
    for bridge in sorted(status.bridges, key=lambda b: b.name):
        if bridge.name in bridges:
            raise ValueError(f"two bridges are named {bridge.name!r}")
        bridges[bridge.name] = _bridge_json(bridge)
    document = {
        "bridges": bridges,
        "last_reload": iso_utc(status.last_reload),
        "last_reload_error": status.last_reload_error,
        "config": status.config,
    }
    # Indented with a final newline: people read this with curl as often as programs do.
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
