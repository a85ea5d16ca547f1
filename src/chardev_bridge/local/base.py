"""What every kind of local end offers the bridge."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

import trio


class LocalEnd(trio.abc.AsyncResource, ABC):
    """A source of local byte streams: one for the bridge's life, or one per session.

    A *persistent* end (pty, tty, stdio) is one stream that outlives remote sessions: the
    bridge never closes it between sessions, and a remote EOF ends the session but not the
    line. Other ends (sockets) hand out a new stream per session, closed with it.
    """

    persistent: bool = False
    #: Set by a persistent end once its stream has ended for good (stdin EOF): nothing more
    #: will ever come from it, so the bridge stops after the current session.
    exhausted: bool = False

    @abstractmethod
    async def start(self) -> None:
        """Open, bind or create the end; called once before any session."""

    @abstractmethod
    async def next_stream(self) -> trio.abc.Stream:
        """The stream for the next session (connects or accepts for socket ends)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for log lines, e.g. ``pty /dev/pts/4``."""

    async def aclose(self) -> None:
        """Release everything (remove links, listening sockets)."""
        await trio.lowlevel.checkpoint()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: the link and socket files must go even when shutdown is a cancellation.
        with trio.CancelScope(shield=True):
            await self.aclose()
