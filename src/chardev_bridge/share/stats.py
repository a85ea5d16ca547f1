"""Counters of a bridge's viewers and console log, for a status endpoint to read.

The viewers and the log writer update them; anything else only reads a :meth:`snapshot`.
The log writer updates its counters from its worker thread, so updates and snapshots hold
a lock (plain integer additions, cheap next to a write).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ShareSnapshot:
    """The counters at one moment."""

    #: Viewers attached right now.
    viewers_attached: int
    #: Viewers ever attached (refused ones not included).
    viewers_total: int
    #: Viewers refused because ``--max-viewers`` were attached.
    viewers_refused: int
    #: Viewers disconnected because they fell more than their queue's bound behind.
    viewers_dropped: int
    #: Bytes viewers sent, read and thrown away.
    viewer_bytes_discarded: int
    #: Bytes sent to viewers (replay included).
    viewer_bytes_sent: int
    #: Lines of the console log that were not written (full disk, slow disk).
    log_lines_lost: int
    #: Bytes of the console log that were not written.
    log_bytes_lost: int


class ShareCounters:
    """Mutable counters behind :class:`ShareSnapshot`; read them with :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._viewers_attached = 0
        self._viewers_total = 0
        self._viewers_refused = 0
        self._viewers_dropped = 0
        self._viewer_bytes_discarded = 0
        self._viewer_bytes_sent = 0
        self._log_lines_lost = 0
        self._log_bytes_lost = 0

    def snapshot(self) -> ShareSnapshot:
        """A consistent copy of every counter."""
        with self._lock:
            return ShareSnapshot(
                viewers_attached=self._viewers_attached,
                viewers_total=self._viewers_total,
                viewers_refused=self._viewers_refused,
                viewers_dropped=self._viewers_dropped,
                viewer_bytes_discarded=self._viewer_bytes_discarded,
                viewer_bytes_sent=self._viewer_bytes_sent,
                log_lines_lost=self._log_lines_lost,
                log_bytes_lost=self._log_bytes_lost,
            )

    def viewer_attached(self) -> None:
        """A viewer was admitted."""
        with self._lock:
            self._viewers_attached += 1
            self._viewers_total += 1

    def viewer_detached(self, *, dropped: bool) -> None:
        """A viewer left, or was dropped for falling behind."""
        with self._lock:
            self._viewers_attached -= 1
            if dropped:
                self._viewers_dropped += 1

    def viewer_refused(self) -> None:
        """A viewer was turned away (too many attached)."""
        with self._lock:
            self._viewers_refused += 1

    def viewer_traffic(self, *, sent: int = 0, discarded: int = 0) -> None:
        """Bytes sent to a viewer, or read from one and thrown away."""
        with self._lock:
            self._viewer_bytes_sent += sent
            self._viewer_bytes_discarded += discarded

    def log_lost(self, lines: int, size: int) -> None:
        """Console log lines (and their bytes) that were not written."""
        with self._lock:
            self._log_lines_lost += lines
            self._log_bytes_lost += size
