"""A thin trio stream around :class:`~chardev_bridge.tls.engine.TLSEngine`."""

from __future__ import annotations

import contextlib
import operator
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import trio

from chardev_bridge.net._streamguard import OneAtATime
from chardev_bridge.tls.engine import TLSEngine

# Ciphertext read per transport receive: several 16 KiB records at once, so one wake-up
# decrypts a whole burst instead of one record (trio.SSLStream's limitation).
TRANSPORT_READ = 256 * 1024

# Plaintext encrypted and sent per step of a large send_all: a whole read of the bridge's
# data path (datapath.CHUNK) in one step.
SEND_PIECE = 256 * 1024

# How long a fatal alert, or close_notify, may take to reach a peer that does not read: it
# must not hold the session any longer.
ALERT_SECONDS = 1.0


class TLSHandshakeError(Exception):
    """The handshake failed; ``__cause__`` holds the ``ssl`` error (or transport error)."""


@dataclass(frozen=True)
class TLSSessionInfo:
    """What was negotiated, for the 'connected' log line."""

    version: str
    cipher: str
    peer_cert_der: bytes | None


class TLSStream(trio.abc.HalfCloseableStream):
    """TLS over any trio ``Stream``, with half-close and multi-record reads.

    ``send_eof`` sends close_notify and keeps the receive side open. A transport EOF without
    close_notify is reported as an ordinary EOF (QEMU never sends close_notify) and flagged in
    :attr:`ragged_eof`.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        split_last_byte: bool = True,
        prepare: Callable[[ssl.SSLObject], None] | None = None,
    ) -> None:
        self.transport = transport
        self._engine = TLSEngine(context, server_side=server_side, server_hostname=server_hostname)
        if prepare is not None:
            prepare(self._engine.ssl_object)
        self._split_last = split_last_byte
        # One transport send at a time. A flag rather than a trio.Lock: acquiring a trio lock
        # yields to the scheduler, and that once per record burst showed in the latency.
        self._transport_busy = False
        # Made only when a flush has to wait for the other one: rare, and an Event per
        # flush showed in the echo latency.
        self._transport_idle: trio.Event | None = None
        self._transport_broken = False
        self._receiving = OneAtATime("receiving")
        self._sending = OneAtATime("sending")
        self._closed = False
        self._pending_plaintext = b""
        # Ciphertext taken from the engine that the transport has not taken yet: it goes
        # out first with the next flush.
        self._unsent = b""

    # -- handshake -------------------------------------------------------------------------

    async def do_handshake(self) -> TLSSessionInfo:
        """Run the handshake; on failure the alert is sent before raising TLSHandshakeError."""
        engine = self._engine
        try:
            while True:
                try:
                    done = engine.do_handshake()
                except ssl.SSLError as exc:
                    await self._flush_best_effort()
                    raise TLSHandshakeError(str(exc)) from exc
                await self._flush()
                if done:
                    break
                data = await self.transport.receive_some(TRANSPORT_READ)
                if data:
                    engine.receive_ciphertext(data)
                else:
                    engine.receive_transport_eof()
        except (trio.BrokenResourceError, OSError) as exc:
            raise TLSHandshakeError(str(exc)) from exc
        return self.session_info()

    def session_info(self) -> TLSSessionInfo:
        """Version, cipher and peer certificate of the completed handshake."""
        obj = self._engine.ssl_object
        cipher = obj.cipher()
        return TLSSessionInfo(
            version=obj.version() or "?",
            cipher=cipher[0] if cipher else "?",
            peer_cert_der=obj.getpeercert(binary_form=True),
        )

    @property
    def ragged_eof(self) -> bool:
        """True when the peer ended the TCP connection without sending close_notify."""
        return self._engine.ragged_eof

    # -- receiving -------------------------------------------------------------------------

    def unreceive(self, data: bytes) -> None:
        """Give back bytes :meth:`receive_some` returned: the next receive returns them first
        (the bridge looks at what a peer that left before its session began had sent)."""
        self._pending_plaintext = data + self._pending_plaintext

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return plaintext from every record already received, waiting for one if needed."""
        with self._receiving:
            if max_bytes is not None:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
                if self._closed:
                    raise trio.ClosedResourceError
                limit = max_bytes or TRANSPORT_READ
                if self._pending_plaintext:
                    out = self._pending_plaintext[:limit]
                    self._pending_plaintext = self._pending_plaintext[limit:]
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return out
                engine = self._engine
                waited = False
                while True:
                    plain = engine.read_plaintext()
                    if plain is not None:
                        if not waited:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        if len(plain) > limit:
                            self._pending_plaintext = plain[limit:]
                            plain = plain[:limit]
                        # Records that reading produced go out before the next wait below:
                        # awaiting a send now could lose `plain` to a cancellation.
                        return plain
                    engine.answer_post_handshake()
                    if engine.has_data_to_send and not self._transport_busy:
                        # Reading produced records the peer may be waiting for (a refused
                        # renegotiation's alert, a KeyUpdate reply): hand them to the kernel
                        # now, not with our next application write. Never waiting here: a
                        # reader must not block on a peer that does not read, nor be stopped
                        # halfway through a record. What does not fit goes with the next
                        # send; a send in progress takes them along itself.
                        self._send_without_waiting()
                    try:
                        data = await self.transport.receive_some(TRANSPORT_READ)
                    except trio.ClosedResourceError:
                        raise
                    except OSError as exc:
                        raise trio.BrokenResourceError(str(exc)) from exc
                    waited = True
                    if data:
                        engine.receive_ciphertext(data)
                    else:
                        engine.receive_transport_eof()
            except ssl.SSLError as exc:
                await self._send_fatal_alert()
                raise trio.BrokenResourceError(str(exc)) from exc

    async def _send_fatal_alert(self) -> None:
        """Put the alert OpenSSL queued for a fatal error (bad MAC, record overflow, an
        unexpected message) on the wire, so that the peer learns why, not just that we
        closed; bounded, and done even when the receive was being cancelled."""
        if not (self._unsent or self._engine.has_data_to_send) or self._transport_broken:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(ALERT_SECONDS):
            await self._flush_best_effort()

    # -- sending ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data``; returns once the transport has taken it all."""
        with self._sending:
            self._check_open()
            if self._engine.close_notify_sent:
                raise trio.ClosedResourceError("send_eof() was called")
            if not data:
                await trio.lowlevel.checkpoint()
                return
            view = memoryview(data)
            # Encrypt and send in pieces that stay in the CPU cache, rather than growing
            # the BIO by the whole write; only the last piece gets the QEMU trailing record.
            for start in range(0, len(view), SEND_PIECE):
                piece = view[start : start + SEND_PIECE]
                last = start + SEND_PIECE >= len(view)
                try:
                    self._engine.write_plaintext(piece, split_last=last and self._split_last)
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can take more data."""
        with self._sending:
            self._check_open()
            await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Send close_notify; the peer may still send to us (TLS half-close)."""
        with self._sending:
            self._check_open()
            if self._engine.close_notify_sent:
                await trio.lowlevel.checkpoint()
                return
            try:
                self._engine.send_close_notify()
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            await self._flush()

    async def _flush(self) -> None:
        """Send everything the engine has queued; returns once the transport took it."""
        while self._transport_busy:
            # Rare: aclose() flushing its close_notify while a send is still going. Our
            # records are already queued behind it; wait, then send whatever is left.
            if self._transport_idle is None:
                self._transport_idle = trio.Event()
            await self._transport_idle.wait()
        self._transport_busy = True
        try:
            while data := self._take_unsent() + self._engine.data_to_send():
                await self.transport.send_all(data)
        except BaseException as exc:
            # Part of a record may have gone out: a close_notify after it would be garbage.
            self._transport_broken = True
            if isinstance(exc, OSError):
                raise trio.BrokenResourceError(str(exc)) from exc
            raise
        finally:
            self._transport_busy = False
            if self._transport_idle is not None:
                self._transport_idle.set()
                self._transport_idle = None

    def _take_unsent(self) -> bytes:
        data, self._unsent = self._unsent, b""
        return data

    def _send_without_waiting(self) -> None:
        """Give the transport what the engine queued, as far as it takes it at once."""
        try_send = getattr(self.transport, "try_send", None)
        if try_send is None:
            return  # a transport that can only wait: the next send takes them
        data = self._take_unsent() + self._engine.data_to_send()
        self._unsent = data[try_send(data) :]

    async def _flush_best_effort(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush()

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send close_notify if we can do so at once, then close the transport.

        We never wait for the peer's close_notify: QEMU never sends one.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            engine = self._engine
            if self._transport_broken:
                return
            if engine.handshake_done and not engine.close_notify_sent:
                try:
                    engine.send_close_notify()
                except ssl.SSLError:
                    pass  # a failed session has no close_notify; its alert still goes below
            if self._unsent or engine.has_data_to_send:
                # A peer that stopped reading must not hold up our close.
                with trio.move_on_after(ALERT_SECONDS):
                    await self._flush_best_effort()
        finally:
            await self.transport.aclose()
