"""What a bridge counts, for a status endpoint or an embedder to read at any time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from chardev_bridge.bridge.datapath import SessionStats

State = Literal["connected", "listening", "connecting", "retrying", "stopped"]


@dataclass
class BridgeCounters:
    """Counts and the current state of one bridge; the bridge writes, readers only read."""

    state: State = "stopped"
    #: Sessions that began (a handshake and policy passed).
    sessions: int = 0
    #: Bytes of the sessions that have ended (the bridge adds those of live ones).
    bytes_to_remote: int = 0
    bytes_from_remote: int = 0
    #: Connect attempts after the first (a connecting bridge).
    reconnects: int = 0
    #: Clients refused before their handshake (busy, shutting down).
    refused: int = 0
    handshake_failures: Counter[str] = field(default_factory=Counter)
    dropped_bytes: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    #: The remote of the session in progress ("host:port"), its TLS and certificate.
    peer: str | None = None
    peer_dn: str | None = None
    tls: str | None = None
    #: The sessions in progress, whose bytes are not in the totals yet.
    live: list[SessionStats] = field(default_factory=list)

    def totals(self) -> tuple[int, int]:
        """Bytes to and from the remote so far, live sessions included."""
        to_remote = self.bytes_to_remote + sum(s.to_remote for s in self.live)
        from_remote = self.bytes_from_remote + sum(s.to_local for s in self.live)
        return to_remote, from_remote

    def note_failure(self, reason: str, words: str) -> None:
        """A handshake or policy failure: counted by ``reason``, remembered in ``words``."""
        self.handshake_failures[reason] += 1
        self.last_error = words
