"""Session slots: who may start a session, and what happens when a second client comes.

A line (pty, tty, stdio) carries one session at a time; a socket local end carries up to
``max_sessions``, each with a local connection of its own. A client that comes while every
slot is taken is refused (``--second-client reject``) or takes the line over (``replace``):
the old session drains its in-flight bytes for up to ``grace`` seconds, then is cut.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from chardev_bridge.bridge.datapath import Session
from chardev_bridge.bridge.remote import RemoteSession

log = logging.getLogger("chardev_bridge")

# Handshakes allowed in flight at once on a listening bridge: a burst of scanners or
# slowloris clients must not exhaust memory, nor stop a good client (it gets a slot as soon
# as a stalled one times out).
MAX_PENDING_HANDSHAKES = 64


def refusal(
    *,
    stopping: bool,
    pending_handshakes: int,
    active_peers: list[str],
    capacity: int,
    second_client: Literal["reject", "replace"],
) -> str | None:
    """Why a new client is refused before its handshake, or None to let it in."""
    if stopping:
        return "the bridge is shutting down"
    if pending_handshakes >= MAX_PENDING_HANDSHAKES:
        return f"{MAX_PENDING_HANDSHAKES} handshakes already in progress"
    if len(active_peers) >= capacity and second_client == "reject":
        if capacity == 1:
            return f"a session with {active_peers[0]} is active (--second-client reject)"
        return f"{capacity} sessions are active (--max-sessions)"
    return None


@dataclass
class ActiveSession:
    """A session holding a slot."""

    remote: RemoteSession
    session: Session | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class SessionSlots:
    """The sessions in progress and the rules for adding one."""

    def __init__(
        self, capacity: int, second_client: Literal["reject", "replace"], grace: float
    ) -> None:
        self.capacity = capacity
        self.second_client = second_client
        self.grace = grace
        self.active: list[ActiveSession] = []
        self.pending_handshakes = 0
        self._takeover = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()

    def refusal(self, stopping: bool) -> str | None:
        """Why a new client is refused before its handshake (None: let it in)."""
        return refusal(
            stopping=stopping,
            pending_handshakes=self.pending_handshakes,
            active_peers=[a.remote.peer for a in self.active],
            capacity=self.capacity,
            second_client=self.second_client,
        )

    async def admit(
        self,
        remote: RemoteSession,
        *,
        stopping: Callable[[], bool],
        before_session: Callable[[], Awaitable[None]],
    ) -> ActiveSession | None:
        """Give ``remote`` a slot after its handshake: at once if one is free, by taking over
        the line (``replace``), or not at all (None: it was refused and closed)."""
        peer = remote.peer
        async with self._takeover:
            old = self.active[0] if len(self.active) >= self.capacity else None
            if old is not None and self.second_client == "replace":
                log.warning(
                    "%s replaces the session with %s (--second-client replace)",
                    peer,
                    old.remote.peer,
                )
                if old.session is not None:
                    old.session.drain(f"replaced by {peer}")
                with trio.move_on_after(self.grace):
                    await old.done.wait()
                old.cancel.cancel()
                await old.done.wait()
            elif old is not None:
                log.warning("refused %s: a session with %s is active", peer, old.remote.peer)
                await trio.aclose_forcefully(remote.stream)
                return None
            if stopping():
                await trio.aclose_forcefully(remote.stream)
                return None
            return await self.claim(remote, before_session)

    async def claim(
        self, remote: RemoteSession, before_session: Callable[[], Awaitable[None]]
    ) -> ActiveSession:
        """Take a slot for ``remote``; ``before_session`` runs once the line is no longer
        idle (it stops whatever reads the line between sessions)."""
        # Unset before anything yields, so that the idle reader does not start again.
        self._idle = trio.Event()
        await before_session()
        active = ActiveSession(remote)
        self.active.append(active)
        return active

    def release(self, active: ActiveSession) -> None:
        """Free ``active``'s slot; a second release of the same session does nothing."""
        # Only the release that frees the slot may mark the line idle: a second one (the
        # session's, then its handler's) must not wake the idle reader while a new session
        # is claiming.
        if active not in self.active:
            return
        self.active.remove(active)
        if not self.active:
            self._idle.set()

    @property
    def idle(self) -> bool:
        """Whether no session holds or is claiming a slot."""
        return not self.active and self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once no session holds or is claiming a slot."""
        while not self.idle:
            # Re-read the event each time: claim replaces it (unset) before it yields.
            await self._idle.wait()

    def drain_all(self, why: str) -> None:
        """Ask every session to deliver what it has in flight and end."""
        for active in list(self.active):
            if active.session is not None:
                active.session.drain(why)

    async def wait_all_done(self) -> None:
        """Return once every session that held a slot has ended."""
        for active in list(self.active):
            await active.done.wait()
