"""TLS-PSK handshakes between our own client and server over loopback: both ways, an unknown
identity, a server that shows a certificate instead, and the sslpsk3 registry over many
connections."""

from __future__ import annotations

import gc
import importlib
import logging
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.remote import RemoteSession
from chardev_bridge.qemu import psk
from chardev_bridge.qemu.policy import TLSPolicy, load_x509_creds, make_ssl_context
from chardev_bridge.qemu.priority import parse_priority
from chardev_bridge.qemu.psk import describe_psk_failure
from chardev_bridge.tls.errors import describe_tls_error
from chardev_bridge.tls.setup import TLSSetup
from chardev_bridge.tls.stream import TLSHandshakeError
from tests.support.certs import PKI
from tests.support.psk import (
    CLIENT_VERSION,
    KEY,
    accept_one,
    connect,
    open_listener,
    write_keys,
)
from tests.support.streams import read_until


@pytest.mark.parametrize("priority", [None, "NORMAL:-VERS-TLS1.3", "SECURE256"])
async def test_our_client_and_server_talk(
    keys_dir: Path, psk_route: str, priority: str | None
) -> None:
    prio = parse_priority(priority) if priority else None
    server = psk.build_psk_setup(keys_dir, endpoint="server", priority=prio)
    client = psk.build_psk_setup(keys_dir, endpoint="client", username="alice", priority=prio)
    listener, port = await open_listener()
    async with listener:
        async with trio.open_nursery() as nursery:
            accepted: list[RemoteSession] = []

            async def serve() -> None:
                accepted.append(await accept_one(listener, server))

            nursery.start_soon(serve)
            ours = await connect(port, client)
        theirs = accepted[0]
        assert ours.tls is not None and ours.tls.peer_cert_der is None
        expected = "TLSv1.2" if priority == "NORMAL:-VERS-TLS1.3" else CLIENT_VERSION
        assert ours.tls.version == expected
        await ours.stream.send_all(b"ping\n")
        assert await read_until(theirs.stream, b"\n") == b"ping\n"
        await theirs.stream.send_all(b"pong\n")
        assert await read_until(ours.stream, b"\n") == b"pong\n"
        await ours.stream.aclose()
        await theirs.stream.aclose()


async def test_unknown_identity_is_refused_and_logged(
    keys_dir: Path, tmp_path: Path, psk_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = psk.build_psk_setup(keys_dir, endpoint="server")
    stranger = write_keys(tmp_path / "stranger", f"mallory:{KEY.hex()}\n")
    client = psk.build_psk_setup(stranger, endpoint="client", username="mallory")
    listener, port = await open_listener()
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    server_errors: list[TLSHandshakeError] = []

    async def serve() -> None:
        try:
            await accept_one(listener, server)
        except TLSHandshakeError as exc:
            server_errors.append(exc)

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(TLSHandshakeError) as info:
            await connect(port, client)
    if CLIENT_VERSION == "TLSv1.2":
        assert describe_psk_failure(server_errors[0]) == (
            "the client's PSK identity is not in our keys.psk"
        )
        assert describe_psk_failure(info.value) == (
            "the peer does not know our PSK identity (alert unknown_psk_identity)"
        )
    else:  # TLS 1.3 has no alert for it: the server finds no PSK and has no certificate.
        assert describe_psk_failure(server_errors[0]) == (
            "the client offered no PSK identity that is in our keys.psk"
        )
        assert describe_psk_failure(info.value) == (
            "the peer aborted the handshake (alert handshake_failure): "
            "the peer may not know our PSK identity"
        )
    assert "PSK client identity 'mallory' is not in" in caplog.text


async def test_client_refuses_a_certificate_server(
    pki: PKI, keys_dir: Path, psk_route: str
) -> None:
    """A server that skips the PSK and shows a certificate (TLS 1.3 allows it) is refused."""
    x509 = make_ssl_context(TLSPolicy(load_x509_creds(pki.server_dir, "server"), False))
    server = TLSSetup(x509, server_side=True, server_hostname=None)
    client = psk.build_psk_setup(keys_dir, endpoint="client")
    listener, port = await open_listener()
    async with listener, trio.open_nursery() as nursery:

        async def serve() -> None:
            try:
                await accept_one(listener, server)
            except TLSHandshakeError:
                pass  # expected: the client aborts

        nursery.start_soon(serve)
        with pytest.raises(TLSHandshakeError) as info:
            await connect(port, client)
    words = describe_tls_error(info.value)
    if CLIENT_VERSION == "TLSv1.2":  # only PSK suites offered: none in common
        assert words == "the peer aborted the handshake (alert handshake_failure)"
    else:  # TLS 1.3: the server ignored our PSK; its certificate meets an empty trust store
        assert words.startswith("the peer's certificate was rejected: ")


async def test_sslpsk3_registry_does_not_grow_with_connections(
    keys_dir: Path, psk_route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psk, "NATIVE_PSK", False)  # sslpsk3's route, on any Python
    registry = importlib.import_module("sslpsk3.sslpsk3").psk_contexts
    server = psk.build_psk_setup(keys_dir, endpoint="server")
    client = psk.build_psk_setup(keys_dir, endpoint="client", username="alice")
    listener, port = await open_listener()
    gc.collect()  # earlier tests' connections leave the registry first
    before = len(registry)
    async with listener:
        for _ in range(50):
            accepted: list[RemoteSession] = []

            async def serve(into: list[RemoteSession]) -> None:
                into.append(await accept_one(listener, server))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, accepted)
                ours = await connect(port, client)
            await ours.stream.aclose()
            await accepted[0].stream.aclose()
            del ours, accepted
    gc.collect()
    assert len(registry) == before
