"""The data path: two pumps between a local and a remote stream.

Read this top to bottom; it is the whole of how bytes move.

* **Back-pressure, not buffering.** Each pump holds at most one chunk: it reads only after
  the previous chunk was fully written. A slow side stalls the other, nothing piles up.
* **Exactly once.** A chunk read from the local end is kept in :class:`Carry` until the remote
  has taken it. If the session dies first, a persistent local end (pty, tty) hands it to the
  next session instead of losing it.
* **Half-close.** Local EOF → close_notify (``send_eof``) to the remote, and the reverse
  direction keeps flowing until the remote ends too. Remote EOF → everything that arrived is
  delivered; then a socket local end gets ``send_eof`` and may still answer, while a persistent
  end (a serial line) simply ends the session: it outlives remote peers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from chardev_bridge.tlserrors import describe_tls_error

log = logging.getLogger("chardev_bridge")

# Bytes per read: large enough that bulk transfers make few wake-ups and few TLS records
# per write, bounded so memory per session stays small.
CHUNK = 256 * 1024

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class Carry:
    """Local bytes read but not yet accepted by a remote; survives the session."""

    pending: bytes | bytearray = b""


@dataclass
class SessionStats:
    """What one session moved and how it ended."""

    to_remote: int = 0
    to_local: int = 0
    local_eof: bool = False
    remote_eof: bool = False
    # A one-line reason when a side failed (not a clean EOF), else None.
    failure: str | None = None
    failed_side: str | None = field(default=None)


async def splice(
    local: trio.abc.Stream,
    remote: trio.abc.Stream,
    *,
    local_persistent: bool,
    carry: Carry | None = None,
    stats: SessionStats | None = None,
) -> SessionStats:
    """Move bytes both ways until the session is over; never closes either stream.

    ``stats`` (updated as bytes move) may be passed in so that the caller still has the
    counts when the session is cancelled.
    """
    stats = stats if stats is not None else SessionStats()
    carry = carry if carry is not None else Carry()
    up_scope = trio.CancelScope()
    # The scope of the remote receive in progress, so that a remote failure seen by the
    # other pump can stop it without interrupting a delivery to the local end.
    receiving: list[trio.CancelScope] = []

    async with trio.open_nursery() as nursery:

        def fail(side: str, exc: BaseException) -> None:
            if stats.failure is None:
                stats.failure = describe_tls_error(exc)
                stats.failed_side = side
            if side == "remote":
                # Stop talking to the dead remote, but let bytes that already arrived from it
                # finish reaching the local end.
                up_scope.cancel()
                for scope in receiving:
                    scope.cancel()
            else:
                nursery.cancel_scope.cancel()

        async def local_to_remote() -> None:
            with up_scope:
                while True:
                    if not carry.pending:
                        try:
                            data = await local.receive_some(CHUNK)
                        except _STREAM_ERRORS as exc:
                            return fail("local", exc)
                        if not data:
                            stats.local_eof = True
                            await _send_eof(remote)
                            return
                        carry.pending = data
                    try:
                        await remote.send_all(carry.pending)
                    except _STREAM_ERRORS as exc:
                        return fail("remote", exc)
                    stats.to_remote += len(carry.pending)
                    carry.pending = b""

        async def receive_from_remote() -> bytes | bytearray | None:
            """The next bytes from the remote: b"" at its EOF, None once it has failed."""
            if stats.failed_side == "remote":
                return None
            with trio.CancelScope() as scope:
                receiving.append(scope)
                try:
                    return await remote.receive_some(CHUNK)
                except _STREAM_ERRORS as exc:
                    fail("remote", exc)
                finally:
                    receiving.remove(scope)
            return None

        async def remote_to_local() -> None:
            while data := await receive_from_remote():
                try:
                    await local.send_all(data)
                except _STREAM_ERRORS as exc:
                    return fail("local", exc)
                stats.to_local += len(data)
            if data is None:
                return
            stats.remote_eof = True
            if local_persistent:
                # The line stays; this remote session is over. Cancelling is safe: a chunk
                # the other pump holds stays in `carry` for the next session.
                up_scope.cancel()
            else:
                await _send_eof(local)

        nursery.start_soon(local_to_remote)
        nursery.start_soon(remote_to_local)
    return stats


async def _send_eof(stream: trio.abc.Stream) -> None:
    """Half-close ``stream`` when it can; a peer that is already gone is no error here."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        try:
            await stream.send_eof()
        except _STREAM_ERRORS:
            pass
