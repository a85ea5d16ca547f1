"""A sans-IO TLS record engine over ``ssl.SSLObject`` and two ``MemoryBIO``s.

It never touches a socket: feed it the ciphertext that arrived, take the plaintext it yields
and the ciphertext it wants sent. That keeps the TLS state machine testable without I/O and
lets the trio wrapper (:mod:`chardev_bridge.tls.stream`) do what ``trio.SSLStream`` cannot:
drain every decrypted record per read, half-close (close_notify, then keep reading), and flush
the alert of a failed handshake before the connection is dropped.
"""

from __future__ import annotations

import ssl

# Upper bound on plaintext drained per read: big enough that a bulk transfer makes one
# wake-up per TCP read, small enough that memory stays bounded under back-pressure.
_READ_CHUNK = 256 * 1024


class TLSEngine:
    """TLS state for one connection, driven entirely by the caller."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self.handshake_done = False
        self.close_notify_sent = False
        self.close_notify_received = False
        # True when the transport ended without the peer's close_notify (QEMU always does so).
        self.ragged_eof = False
        # True once reading hit a fatal error: the session is over, its alert (if OpenSSL
        # queued one) waits in data_to_send, and there is no close_notify to send.
        self.failed = False
        self._deferred_error: ssl.SSLError | None = None
        # Plaintext decrypted before its read was asked for (see send_close_notify).
        self._decrypted = b""

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The underlying ``SSLObject``, for peer certificate, version and cipher queries."""
        return self._ssl

    def receive_ciphertext(self, data: bytes | bytearray) -> None:
        """Feed bytes that arrived from the transport."""
        self._incoming.write(data)

    def receive_transport_eof(self) -> None:
        """Tell the engine that the transport will deliver nothing more."""
        self._incoming.write_eof()

    def data_to_send(self) -> bytes:
        """Take all ciphertext (records, alerts, close_notify) waiting to go out."""
        return self._outgoing.read()

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return anything."""
        return self._outgoing.pending > 0

    def do_handshake(self) -> bool:
        """Advance the handshake; True once complete, False when more input is needed.

        Raises ``ssl.SSLError`` when the handshake fails; the alert telling the peer why is
        then waiting in :meth:`data_to_send` and should be flushed before closing.
        """
        if self.handshake_done:
            return True
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                raise ssl.SSLEOFError(
                    ssl.SSL_ERROR_EOF, "EOF occurred during the TLS handshake"
                ) from None
            return False
        self.handshake_done = True
        return True

    def read_plaintext(self, max_bytes: int = _READ_CHUNK) -> bytes | None:
        """Decrypt every complete record already fed, up to ``max_bytes``.

        Returns the plaintext (possibly several records joined), ``b""`` at end of stream
        (close_notify, or a transport EOF, which sets :attr:`ragged_eof`), or ``None`` when
        more ciphertext is needed before anything can be returned. A fatal error (an alert, a
        bad record) is raised only after the plaintext that came before it was returned.
        """
        if self._decrypted:
            plain = self._decrypted[:max_bytes]
            self._decrypted = self._decrypted[max_bytes:]
            return plain
        return self._decrypt(max_bytes)

    def _decrypt(self, max_bytes: int) -> bytes | None:
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            self.failed = True
            raise error
        parts: list[bytes] = []
        size = 0
        incoming, tls = self._incoming, self._ssl
        while size < max_bytes:
            if not (incoming.pending or tls.pending() or incoming.eof):
                # Nothing fed and nothing decrypted is waiting: read() would only raise
                # SSLWantReadError, which costs more. This relies on read-ahead being off
                # (Python never turns it on): OpenSSL then takes one record at a time from
                # the BIO and never holds a complete one unprocessed.
                break
            try:
                chunk = tls.read(max_bytes - size)
            except ssl.SSLWantReadError:
                if self._incoming.eof and not parts:
                    self.ragged_eof = True
                    return b""
                break
            except ssl.SSLZeroReturnError:
                self.close_notify_received = True
                break
            except ssl.SSLEOFError:
                self.ragged_eof = True
                break
            except ssl.SSLError as exc:
                if not parts:
                    self.failed = True
                    raise
                self._deferred_error = exc
                break
            if not chunk:
                # _ssl returns b"" once the peer's close_notify has arrived.
                self.close_notify_received = True
                break
            parts.append(chunk)
            size += len(chunk)
        if parts:
            return b"".join(parts)
        if self.close_notify_received or self.ragged_eof:
            return b""
        return None

    def answer_post_handshake(self) -> None:
        """Queue what records read so far oblige us to send (a TLS 1.3 KeyUpdate reply).

        OpenSSL sends that reply only from inside a write; an empty write sends it and no
        application record. A refused renegotiation's alert is queued by reading itself.
        """
        if not self.handshake_done or self.close_notify_sent or self.failed:
            return
        try:
            self._ssl.write(b"")
        except ssl.SSLError:
            pass  # the read that follows reports what is wrong

    def write_plaintext(self, data: bytes | bytearray | memoryview, *, split_last: bool) -> None:
        """Encrypt ``data`` into records waiting in :meth:`data_to_send`.

        With ``split_last`` the last byte travels in a record of its own. QEMU 7.2 only polls
        the socket, so bytes gnutls has decrypted but QEMU has not consumed wait for the next
        record; a trailing one-byte record makes QEMU drain the whole burst now.
        """
        view = memoryview(data)
        if split_last and len(view) > 1:
            self._write_all(view[:-1])
            self._write_all(view[-1:])
        else:
            self._write_all(view)

    def _write_all(self, view: memoryview) -> None:
        while view:
            written = self._ssl.write(view)
            view = view[written:]

    def send_close_notify(self) -> None:
        """Queue our close_notify (TLS half-close); reading stays possible afterwards."""
        if self.close_notify_sent:
            return
        self.close_notify_sent = True
        if self.failed:
            return
        # unwrap() calls SSL_shutdown() a second time, and that reads on in search of the
        # peer's close_notify: application data records already fed would be consumed and
        # lost, with APPLICATION_DATA_AFTER_CLOSE_NOTIFY. So they are decrypted first.
        try:
            while plain := self._decrypt(_READ_CHUNK):
                self._decrypted += plain
        except ssl.SSLError as exc:
            self._deferred_error = exc
        if self._deferred_error is not None or self.ragged_eof:
            # The connection is broken or gone: there is no TLS session left to close, and
            # unwrap() would only fail (SHUTDOWN_WHILE_IN_INIT); reads report why.
            return
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            # Our close_notify is queued; the peer's may come later, or never (QEMU).
            pass
