"""SIGHUP makes a single bridge read its credential files again, as the console server does."""

from __future__ import annotations

import signal
import ssl
import sys
from pathlib import Path

import trio
from cryptography import x509

from tests.support.certs import PKI, write_creds_dir
from tests.support.net import HOST, free_port, unix_client
from tests.support.procs import running_peer, wait_for_stderr


def _client_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=pki.ca.cert_pem.bytes().decode())
    client = pki.client_dir
    context.load_cert_chain(client / "client-cert.pem", client / "client-key.pem")
    return context


async def _tls_client(pki: PKI, port: int) -> tuple[trio.SSLStream[trio.SocketStream], int]:
    """A TLS session with the bridge, and the serial of the certificate it showed."""
    tcp = await trio.open_tcp_stream(HOST, port)
    tls = trio.SSLStream(tcp, _client_context(pki), server_hostname=HOST)
    await tls.do_handshake()
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return tls, x509.load_der_x509_certificate(der).serial_number


async def test_renewed_certificate_is_used_after_sighup_while_the_old_session_goes_on(
    tmp_path: Path, pki: PKI
) -> None:
    port = free_port()
    local = tmp_path / "local.sock"
    command = [sys.executable, "-m", "chardev_bridge", "--server", "--host", HOST]
    command += ["--port", str(port), "--tls-creds", str(pki.server_dir)]
    command += ["--local", f"unix-listen:{local}", "--max-sessions", "2"]
    async with running_peer(command) as bridge:
        await wait_for_stderr(bridge, "listening on")
        old, old_serial = await _tls_client(pki, port)
        async with old, await unix_client(local) as local_old:
            write_creds_dir(pki.server_dir, pki.ca, "server", pki.ca.issue_cert(HOST))
            bridge.process.send_signal(signal.SIGHUP)
            await wait_for_stderr(bridge, "SIGHUP: credentials changed")
            new, new_serial = await _tls_client(pki, port)
            assert new_serial != old_serial
            await new.aclose()
            await old.send_all(b"still here\n")
            with trio.fail_after(10):
                assert await local_old.receive_some(100) == b"still here\n"
        # A directory that fails its checks changes nothing.
        (pki.server_dir / "server-key.pem").write_text("not a key")
        bridge.process.send_signal(signal.SIGHUP)
        await wait_for_stderr(bridge, "SIGHUP: credentials not reloaded")
        again, serial = await _tls_client(pki, port)
        assert serial == new_serial
        await again.aclose()
