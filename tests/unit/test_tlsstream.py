"""TLSStream honours trio's stream contract and TLS half-close, over in-memory transports."""

from __future__ import annotations

import os
import ssl

import pytest
import trio
import trio.testing

from chardev_bridge.qemu.policy import TLSPolicy, load_x509_creds, make_ssl_context
from chardev_bridge.tls.engine import TLSEngine
from chardev_bridge.tls.stream import TLSHandshakeError, TLSStream
from tests.support.certs import PKI


def contexts(pki: PKI) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = make_ssl_context(TLSPolicy(load_x509_creds(pki.server_dir, "server")))
    client = make_ssl_context(TLSPolicy(load_x509_creds(pki.client_dir, "client")))
    return server, client


async def handshaken_pair(
    pki: PKI, pair: tuple[trio.abc.Stream, trio.abc.Stream]
) -> tuple[TLSStream, TLSStream]:
    server_ctx, client_ctx = contexts(pki)
    client = TLSStream(pair[0], client_ctx, server_side=False, server_hostname="localhost")
    server = TLSStream(pair[1], server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_tlsstream_meets_trio_half_closeable_contract(pki: PKI) -> None:
    async def maker() -> tuple[TLSStream, TLSStream]:
        return await handshaken_pair(pki, trio.testing.memory_stream_pair())

    async def clogged() -> tuple[TLSStream, TLSStream]:
        return await handshaken_pair(pki, trio.testing.lockstep_stream_pair())

    await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_reads_every_buffered_record_at_once(pki: PKI) -> None:
    client, server = await handshaken_pair(pki, trio.testing.memory_stream_pair())
    # Many small records, as a serial peer writing byte by byte produces.
    for i in range(50):
        await client.send_all(bytes([65 + i % 26]) * 3)
    await trio.testing.wait_all_tasks_blocked()
    got = await server.receive_some(1 << 20)
    assert len(got) == 150


async def test_half_close_keeps_reverse_direction_open(pki: PKI) -> None:
    client, server = await handshaken_pair(pki, trio.testing.memory_stream_pair())
    await client.send_all(b"last words")
    await client.send_eof()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    assert not server.ragged_eof
    await server.send_all(b"reply after eof")
    assert await client.receive_some() == b"reply after eof"


async def test_transport_close_without_close_notify_is_ragged_eof(pki: PKI) -> None:
    client, server = await handshaken_pair(pki, trio.testing.memory_stream_pair())
    await client.send_all(b"data")
    await client.transport.aclose()
    assert await server.receive_some() == b"data"
    assert await server.receive_some() == b""
    assert server.ragged_eof


async def test_failed_handshake_sends_alert_to_peer(pki: PKI, make_other_pki) -> None:  # type: ignore[no-untyped-def]
    other = make_other_pki("other")
    server_ctx, _ = contexts(pki)
    _, stranger_ctx = contexts(other)
    a, b = trio.testing.memory_stream_pair()
    client = TLSStream(a, stranger_ctx, server_side=False, server_hostname="localhost")
    server = TLSStream(b, server_ctx, server_side=True)
    errors: dict[str, BaseException] = {}

    async def run(name: str, stream: TLSStream) -> None:
        try:
            await stream.do_handshake()
        except TLSHandshakeError as exc:
            errors[name] = exc
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "client", client)
        nursery.start_soon(run, "server", server)
    # The client distrusts the server's CA and says so with an alert, which the server sees.
    assert "certificate verify failed" in str(errors["client"])
    assert "UNKNOWN_CA" in str(errors["server"].__cause__)


def _record_lengths(wire: bytes | bytearray) -> list[int]:
    """Lengths of the TLS records in ``wire`` (each: 5-byte header, then that many bytes)."""
    lengths = []
    while wire:
        length = int.from_bytes(wire[3:5], "big")
        lengths.append(length)
        wire = wire[5 + length :]
    return lengths


@pytest.mark.parametrize("split", [True, False])
async def test_split_last_byte_sends_trailing_one_byte_record(pki: PKI, split: bool) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    server_ctx, client_ctx = contexts(pki)
    client = TLSStream(
        client_end, client_ctx, server_side=False, server_hostname="localhost",
        split_last_byte=split,
    )  # fmt: skip
    server = TLSStream(server_end, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    # Read the client's records off the wire ourselves.
    await client.send_all(b"hello")
    wire = await server_end.receive_some()
    # TLS 1.3 application records: plaintext + 1 content-type byte + 16 tag bytes.
    assert _record_lengths(wire) == ([4 + 17, 1 + 17] if split else [5 + 17])


@pytest.mark.parametrize("size", [1, 2, 16384, 100_000])
async def test_payload_sizes_round_trip(pki: PKI, size: int) -> None:
    client, server = await handshaken_pair(pki, trio.testing.memory_stream_pair())
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)

    async def send() -> None:
        await client.send_all(payload)
        await client.send_eof()

    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await server.receive_some():
            got += chunk
    assert bytes(got) == payload


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
def test_close_notify_keeps_records_already_received(pki: PKI, version: ssl.TLSVersion) -> None:
    # Sans-IO: records that arrived but were not read yet when we half-close must still be
    # read. A second SSL_shutdown(), as unwrap() makes, would consume them and fail
    # (APPLICATION_DATA_AFTER_CLOSE_NOTIFY): the reverse direction would lose them and end
    # early, megabytes of a fast transfer.
    client, server = engine_pair(pki, version)
    payload = os.urandom(300_000)
    server.write_plaintext(payload, split_last=True)
    client.receive_ciphertext(server.data_to_send())
    client.send_close_notify()
    server.write_plaintext(b"after", split_last=True)
    client.receive_ciphertext(server.data_to_send())
    got = bytearray()
    while plain := client.read_plaintext(65536):
        got += plain
    assert bytes(got) == payload + b"after"
    server.receive_ciphertext(client.data_to_send())
    assert server.read_plaintext() == b""
    assert server.close_notify_received


def engine_pair(
    pki: PKI, version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> tuple[TLSEngine, TLSEngine]:
    """A client and a server engine, handshaken in memory."""
    server_ctx, client_ctx = contexts(pki)
    client_ctx.maximum_version = version
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSEngine(server_ctx, server_side=True)
    while not (client.do_handshake() and server.handshake_done):
        server.receive_ciphertext(client.data_to_send())
        server.do_handshake()
        client.receive_ciphertext(server.data_to_send())
    return client, server


@pytest.mark.parametrize("ending", ["bad record", "transport EOF"])
def test_close_notify_on_a_broken_connection_keeps_data_and_the_reason(
    pki: PKI, ending: str
) -> None:
    # QEMU ends without close_notify; a corrupt record ends a session too. Half-closing
    # then must neither raise (as unwrap() does: SHUTDOWN_WHILE_IN_INIT) nor lose what came
    # before; the reads still tell how it ended.
    client, server = engine_pair(pki)
    server.write_plaintext(b"before the end", split_last=False)
    client.receive_ciphertext(server.data_to_send())
    if ending == "bad record":
        server.write_plaintext(b"garbled", split_last=False)
        record = bytearray(server.data_to_send())
        record[-1] ^= 0xFF
        client.receive_ciphertext(bytes(record))
    else:
        client.receive_transport_eof()
    client.send_close_notify()
    assert client.read_plaintext() == b"before the end"
    if ending == "bad record":
        with pytest.raises(ssl.SSLError):
            client.read_plaintext()
    else:
        assert client.read_plaintext() == b""
        assert client.ragged_eof


async def _corrupt_record_from(client: TLSStream) -> None:
    """Send the server one application record whose last byte (in its MAC/tag) is flipped."""
    engine = client._engine
    engine.write_plaintext(b"tampered", split_last=False)
    wire = bytearray(engine.data_to_send())
    wire[-1] ^= 0x01
    await client.transport.send_all(wire)


@pytest.mark.parametrize(
    ("version", "alert_record"),
    # TLS 1.2: a plain alert record under AES-GCM (8-byte nonce, 2 bytes, 16-byte tag).
    # TLS 1.3: the alert travels as an encrypted application record (2 + 1 + 16 bytes).
    [(ssl.TLSVersion.TLSv1_2, (0x15, 26)), (ssl.TLSVersion.TLSv1_3, (0x17, 19))],
)
async def test_bad_record_mac_is_answered_with_its_alert(
    pki: PKI, version: ssl.TLSVersion, alert_record: tuple[int, int]
) -> None:
    server_ctx, client_ctx = contexts(pki)
    client_ctx.maximum_version = version
    client_end, server_end = trio.testing.memory_stream_pair()
    client = TLSStream(client_end, client_ctx, server_side=False, server_hostname="localhost")
    server = TLSStream(server_end, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await _corrupt_record_from(client)
    with pytest.raises(trio.BrokenResourceError, match="BAD_RECORD_MAC"):
        await server.receive_some()
    with trio.fail_after(2):
        wire = await client_end.receive_some()
    assert (wire[0], int.from_bytes(wire[3:5], "big")) == alert_record
    assert len(wire) == 5 + alert_record[1]
    await server.aclose()
    # The alert was the last word: no close_notify follows a fatal error.
    assert await client_end.receive_some() == b""
    client._engine.receive_ciphertext(wire)
    with pytest.raises(ssl.SSLError, match="ALERT_BAD_RECORD_MAC"):
        client._engine.read_plaintext()


async def test_alert_is_sent_when_the_error_comes_after_plaintext(pki: PKI) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    client, server = await handshaken_pair(pki, (client_end, server_end))
    client._engine.write_plaintext(b"good", split_last=False)
    good = client._engine.data_to_send()
    client._engine.write_plaintext(b"tampered", split_last=False)
    bad = bytearray(client._engine.data_to_send())
    bad[-1] ^= 0x01
    await client_end.send_all(good + bad)
    assert await server.receive_some() == b"good"
    with pytest.raises(trio.BrokenResourceError, match="BAD_RECORD_MAC"):
        await server.receive_some()
    with trio.fail_after(2):
        wire = await client_end.receive_some()
    client._engine.receive_ciphertext(wire)
    with pytest.raises(ssl.SSLError, match="ALERT_BAD_RECORD_MAC"):
        client._engine.read_plaintext()
