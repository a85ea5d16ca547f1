"""A listening bridge: accept remote clients, admit them to a slot, run their sessions.

Accepting follows trio's ``serve_listeners``: only the errors that mean "out of resources
for now" (EMFILE, ENFILE, ENOMEM, ENOBUFS) are retried; one client's failure, whatever it
is, ends that client alone.
"""

from __future__ import annotations

import errno
import logging

import trio

from chardev_bridge.bridge.local_wait import open_local_for
from chardev_bridge.bridge.parts import BridgeParts
from chardev_bridge.bridge.remote import start_session
from chardev_bridge.common.hostport import format_hostport
from chardev_bridge.net.socketstream import DirectSocketStream
from chardev_bridge.net.tcp import peer_name
from chardev_bridge.tls.errors import describe_tls_error
from chardev_bridge.tls.setup import PeerRejected
from chardev_bridge.tls.stream import TLSHandshakeError

log = logging.getLogger("chardev_bridge")

# Out of file descriptors or memory: the condition passes, so accepting goes on after a pause.
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_SECONDS = 0.1

# A unix local end that stays away is usually a QEMU that is not (yet) running.
_LOCAL_SOCKET_HINT = (
    " (is the program that serves it running, e.g. QEMU with -chardev"
    " socket,path=…,server=on,wait=off?)"
)


def describe_listeners(listeners: list[trio.SocketListener], tls: bool) -> list[int]:
    """Log what the bridge listens on; returns the ports."""
    ports: list[int] = []
    for listener in listeners:
        host, port = listener.socket.getsockname()[:2]
        log.info("listening on %s (%s)", format_hostport(host, port), "TLS" if tls else "plain TCP")
        if port not in ports:
            ports.append(port)
    return ports


class Server:
    """Serves remote clients of one bridge on the listeners it is given."""

    def __init__(self, parts: BridgeParts) -> None:
        self.parts = parts

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        """Accept on every listener until the bridge stops."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while not self.parts.stopping:
            try:
                tcp = DirectSocketStream.adopt(await listener.accept())
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.error(
                    "accept failed: %s; accepting again in %gs",
                    exc.strerror or exc,
                    _ACCEPT_RETRY_SECONDS,
                )
                await trio.sleep(_ACCEPT_RETRY_SECONDS)
                continue
            nursery.start_soon(self._handle_safely, tcp)

    async def _handle_safely(self, tcp: DirectSocketStream) -> None:
        """One connection's failure, whatever it is, must not stop the listening bridge."""
        try:
            await self._handle(tcp)
        except Exception as exc:
            log.error("dropped %s: unexpected %s: %s", peer_name(tcp), type(exc).__name__, exc)
            log.debug("the traceback of that error:", exc_info=True)
            await trio.aclose_forcefully(tcp)

    async def _handle(self, tcp: DirectSocketStream) -> None:
        parts = self.parts
        cfg, slots, counters = parts.cfg, parts.slots, parts.counters
        peer = peer_name(tcp)
        busy = slots.refusal(parts.stopping)
        if busy is not None:
            counters.refused += 1
            log.warning("refused %s: %s", peer, busy)
            await trio.aclose_forcefully(tcp)
            return
        slots.pending_handshakes += 1
        try:
            remote = await start_session(tcp, parts.tls(), handshake_timeout=cfg.handshake_timeout)
        except TLSHandshakeError as exc:
            words = describe_tls_error(exc)
            counters.note_failure("tls", words)
            log.warning("TLS handshake with %s failed: %s", peer, words)
            return
        except trio.TooSlowError:
            counters.note_failure("timeout", f"no TLS handshake within {cfg.handshake_timeout}s")
            log.warning("dropped %s: no TLS handshake within %gs", peer, cfg.handshake_timeout)
            return
        except PeerRejected as exc:
            counters.note_failure("policy", str(exc))
            log.warning("denied %s: %s", peer, exc)
            return
        finally:
            slots.pending_handshakes -= 1
        active = await slots.admit(
            remote, stopping=lambda: parts.stopping, before_session=parts.line.begin_session
        )
        if active is None:
            counters.refused += 1
            return
        try:
            # The whole session, local end included, can be cut by a replacing client.
            with active.cancel:
                log.info("session from %s: %s", peer, remote.describe())
                try:
                    local_stream = await open_local_for(parts.line, remote, tcp)
                except OSError as exc:
                    log.error(
                        "closing %s: cannot open local end %s: %s%s",
                        peer,
                        parts.line.describe(),
                        exc.strerror or exc,
                        _LOCAL_SOCKET_HINT if cfg.local.kind == "unix" else "",
                    )
                    return
                if local_stream is None:
                    return
                await parts.runner.run(active, local_stream)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(remote.stream)  # a no-op after a session
            active.done.set()
            slots.release(active)
        if parts.line.local.exhausted:
            log.info("local end %s has ended; stopping", parts.line.describe())
            await parts.end_after_local()
