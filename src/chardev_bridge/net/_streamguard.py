"""trio's stream contract for our own streams: one task at a time in a direction."""

from __future__ import annotations

import trio


class OneAtATime:
    """Held during a stream's sending (or receiving) calls: a second task that tries one
    meanwhile gets ``trio.BusyResourceError`` instead of interleaving its bytes.

    A plain class rather than a ``contextlib`` generator: it is entered on every send and
    receive of the data path, and a generator costs several calls more each time.
    """

    __slots__ = ("_busy", "_message")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._message = f"another task is already {what}"

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False
