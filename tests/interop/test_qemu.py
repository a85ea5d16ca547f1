"""Interop with QEMU 7.2's TLS socket chardev, driving a QMP monitor through the bridge's pty.

* bridge client (TLS client) → QEMU TLS server chardev, including proof that the input-stall
  workaround (a separate 1-byte record at the end of each write) is what makes QEMU answer;
* QEMU TLS client chardev (``reconnect=1``) → bridge server;
* QEMU rejecting the bridge's client certificate (tls-authz, CRL) after the handshake;
* ``--tls-endpoint`` cross pairings: QEMU 7.2 refuses them for chardevs, so they are tested
  bridge to bridge (integration/test_bridge_pair.py) and against openssl peers via socat
  (test_openssl.py);
* a QEMU ``-chardev pty`` as the local end of a listening bridge (``--local tty:PATH``).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.local import LocalSpec
from chardev_bridge.qemu import pki as pkimod
from chardev_bridge.qemu.creds_cli import main as creds_main
from chardev_bridge.tls.stream import TLSStream
from tests.support.bridges import capture_bridge_logs, log_lines, running_bridge, wait_log
from tests.support.certs import PKI, subject_dn
from tests.support.net import client_context, tls_connect
from tests.support.peers import (
    Qemu,
    qemu_in_thread,
    qemu_load,
    qemu_tls_client_args,
    qemu_tls_server_args,
    start_qmp,
    tls_creds_args,
)
from tests.support.streams import open_pty, read_until

pytestmark = pytest.mark.interop

QMP_CAPABILITIES = b'{"execute":"qmp_capabilities"}'
QUERY_STATUS = b'{"execute":"query-status"}'


async def drive_qmp(stream: trio.abc.Stream) -> None:
    """Greeting, qmp_capabilities, query-status; each command sent alone, with nothing after.

    QEMU 7.2 leaves decrypted bytes unread until the next TLS record arrives, so this only
    works when the bridge ends each write with a record QEMU has to fetch separately.
    """
    greeting = await read_until(stream, b"\r\n", timeout=5)
    assert greeting.startswith(b'{"QMP": {"version": {"qemu": {'), greeting
    await stream.send_all(QMP_CAPABILITIES)
    reply = await read_until(stream, b"\r\n", timeout=5)
    assert reply.startswith(b'{"return": {}'), reply
    await stream.send_all(QUERY_STATUS)
    reply = await read_until(stream, b"\r\n", timeout=5)
    assert b'"status": "prelaunch"' in reply, reply


async def quit_qemu(stream: trio.abc.Stream, qemu: Qemu, caplog: pytest.LogCaptureFixture) -> None:
    """``quit`` through the bridge: QEMU answers, exits, and closes TCP without close_notify,
    which the bridge reports as such."""
    await stream.send_all(b'{"execute":"quit"}')
    # The SHUTDOWN event may come first.
    await read_until(stream, b'{"return": {}', timeout=5)
    # Let it exit before Qemu.close() would send its own quit into a closing pipe.
    assert qemu.proc is not None
    await trio.to_thread.run_sync(functools.partial(qemu.proc.wait, timeout=5))
    await wait_log(
        caplog, r"^disconnected from 127\.0\.0\.1:\d+ .*; remote closed without TLS close_notify$"
    )


# -- bridge client → QEMU TLS server -------------------------------------------------------


async def test_qmp_through_bridge_client_to_qemu_tls_server(
    qemu_pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu:
        port = qemu.port("mon0")
        # With reconnect the bridge (and its pty) outlives QEMU's quit. A one-shot bridge
        # returns as QEMU closes and closes the pty with it, and the kernel discards what
        # the reader has not read yet, possibly the reply to "quit".
        cfg = BridgeConfig(host="127.0.0.1", port=port, tls_creds=qemu_pki.client_dir, reconnect=60)
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            async with open_pty(ready.pty_path) as tty:
                await drive_qmp(tty)
                await quit_qemu(tty, qemu, caplog)
            dn = re.escape(subject_dn(qemu_pki.server_dir / "server-cert.pem"))
            await wait_log(
                caplog,
                rf"^connected to 127\.0\.0\.1:{port}: TLSv1\.3 \S+, peer certificate '{dn}'",
            )
    # QEMU's bare close after a real session is not mistaken for a certificate rejection.
    assert not any("probably rejected" in line for line in log_lines(caplog))


@pytest.mark.parametrize("split_last_byte", [True, False], ids=["workaround", "no-workaround"])
async def test_qemu_72_answers_only_with_the_input_stall_workaround(
    qemu_pki: PKI, split_last_byte: bool
) -> None:
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu:
        tcp = await trio.open_tcp_stream("127.0.0.1", qemu.port("mon0"))
        stream = TLSStream(
            tcp,
            client_context(qemu_pki.client_dir),
            server_side=False,
            server_hostname="127.0.0.1",
            split_last_byte=split_last_byte,
        )
        try:
            with trio.fail_after(5):
                await stream.do_handshake()
            greeting = await read_until(stream, b"\r\n", timeout=5)
            assert greeting.startswith(b'{"QMP"')
            await stream.send_all(QMP_CAPABILITIES)
            reply = b""
            with trio.move_on_after(2):
                reply = await read_until(stream, b"\r\n", timeout=10)
            if split_last_byte:
                assert reply.startswith(b'{"return": {}'), reply
                return
            # One record: QEMU took only part of the command and waits for more TLS data.
            assert reply == b""
            # Any further record unblocks it (a space is valid JSON whitespace): the stall,
            # not a lost command, was why no reply came.
            await stream.send_all(b" ")
            reply = await read_until(stream, b"\r\n", timeout=5)
            assert reply.startswith(b'{"return": {}'), reply
        finally:
            await stream.aclose()


async def test_bridge_with_no_qemu_stall_workaround_gets_no_qmp_reply(qemu_pki: PKI) -> None:
    # The same through the bridge's pty, with --no-qemu-stall-workaround.
    with Qemu(qemu_tls_server_args(qemu_pki.server_dir)) as qemu:
        cfg = BridgeConfig(
            host="127.0.0.1",
            port=qemu.port("mon0"),
            tls_creds=qemu_pki.client_dir,
            qemu_stall_workaround=False,
        )
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            async with open_pty(ready.pty_path) as tty:
                greeting = await read_until(tty, b"\r\n", timeout=5)
                assert greeting.startswith(b'{"QMP"')
                await tty.send_all(QMP_CAPABILITIES)
                with trio.move_on_after(2) as waited:
                    reply = await read_until(tty, b"\r\n", timeout=10)
                    pytest.fail(f"QEMU 7.2 answered a single-record command: {reply!r}")
                assert waited.cancelled_caught
                await tty.send_all(b" ")
                reply = await read_until(tty, b"\r\n", timeout=5)
                assert reply.startswith(b'{"return": {}'), reply


@pytest.mark.parametrize("rejection", ["tls-authz", "crl"])
async def test_bridge_client_reports_certificate_probably_rejected_by_qemu(
    qemu_pki: PKI, rejection: str, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    args = qemu_tls_server_args(
        qemu_pki.server_dir, authz="auth0" if rejection == "tls-authz" else None
    )
    if rejection == "tls-authz":
        # authz-simple allows exactly one identity; the bridge's certificate is not it.
        args += ["-object", "authz-simple,id=auth0,identity=CN=someone-else.example.com"]
    else:
        revoke_client_cert(qemu_pki)
    with Qemu(args) as qemu:
        port = qemu.port("mon0")
        cfg = BridgeConfig(host="127.0.0.1", port=port, tls_creds=qemu_pki.client_dir)
        with trio.fail_after(10):
            status = await run_bridge(cfg)
    assert status == 1
    await wait_log(
        caplog,
        rf"^disconnected from 127\.0\.0\.1:{port} after .*: 0 bytes sent, 0 bytes received;"
        r" remote failed: the server closed the connection right after the handshake"
        r" without a TLS alert: it probably rejected our client certificate",
    )


def revoke_client_cert(pki: PKI) -> None:
    """Put a CRL revoking the client certificate into the server dir (QEMU checks it)."""
    ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, pkimod.PrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    client = x509.load_pem_x509_certificate((pki.client_dir / "client-cert.pem").read_bytes())
    crl = pkimod.make_crl(
        pkimod.Issued(ca_cert, ca_key),
        {client.serial_number: dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)},
    )
    (pki.server_dir / "ca-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


# -- QEMU TLS client → bridge server -------------------------------------------------------


async def test_qmp_through_bridge_server_from_qemu_tls_client(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    capture_bridge_logs(caplog)
    cfg = BridgeConfig(listen=True, host="127.0.0.1", port=0, tls_creds=pki.server_dir)
    async with running_bridge(cfg) as ready:
        assert ready.pty_path is not None
        port = ready.ports[0]
        args = qemu_tls_client_args(pki.client_dir, port)
        async with qemu_in_thread(args) as qemu, open_pty(ready.pty_path) as tty:
            await drive_qmp(tty)
            dn = re.escape(subject_dn(pki.client_dir / "client-cert.pem"))
            await wait_log(
                caplog, rf"^session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate '{dn}'"
            )
            await quit_qemu(tty, qemu, caplog)


# -- --tls-endpoint cross pairings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tcp_role", "creds_endpoint", "expected"),
    [
        ("server=on,wait=off", "client", "Expected TLS credentials for a server endpoint"),
        ("server=off,reconnect=1", "server", "Expected TLS credentials for a client endpoint"),
    ],
)
def test_qemu_72_refuses_cross_tls_endpoint_on_chardevs(
    qemu_pki: PKI, tcp_role: str, creds_endpoint: str, expected: str
) -> None:
    # Why the cross pairings are tested bridge to bridge: QEMU's chardev insists that the TLS
    # role follows the TCP role. If a later QEMU allows it, test the bridge against it.
    directory = qemu_pki.server_dir if creds_endpoint == "server" else qemu_pki.client_dir
    status, stderr = qemu_load(
        [
            *tls_creds_args("tls0", str(directory), creds_endpoint),
            "-chardev",
            f"socket,id=c0,host=127.0.0.1,port=1,{tcp_role},tls-creds=tls0",
        ]
    )
    assert status == 1
    assert expected in stderr


async def test_qemu_loads_creds_init_dirs_and_talks_through_the_bridge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    pki = tmp_path / "pki"
    assert creds_main(["init", str(pki)]) == 0
    vm = Qemu(qemu_tls_server_args(pki / "server"))
    await trio.to_thread.run_sync(vm.__enter__)
    try:
        port = await trio.to_thread.run_sync(vm.port, "mon0")
        cfg = BridgeConfig(host="127.0.0.1", port=port, tls_creds=pki / "client")
        with trio.fail_after(15):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path
                async with open_pty(ready.pty_path) as app:
                    await start_qmp(app)
    finally:
        await trio.to_thread.run_sync(vm.close)
    assert "peer certificate 'CN=localhost'" in caplog.text


# -- a QEMU pty chardev as the local end (--local tty:PATH) ------------------------------------


async def test_qmp_on_qemu_pty_chardev_served_over_tls_by_a_tty_local_end(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    # QEMU's own `-chardev pty` (a monitor on it), exposed over TLS by a listening bridge with
    # --local tty:/dev/pts/N: the set-up for a VM whose chardevs cannot do TLS themselves.
    capture_bridge_logs(caplog)
    args = ["-chardev", "pty,id=ser0", "-mon", "chardev=ser0,mode=control"]
    async with qemu_in_thread(args) as qemu:
        chardevs = await trio.to_thread.run_sync(functools.partial(qemu.execute, "query-chardev"))
        (path,) = [c["filename"].removeprefix("pty:") for c in chardevs if c["label"] == "ser0"]
        cfg = BridgeConfig(
            listen=True,
            host="127.0.0.1",
            port=0,
            tls_creds=pki.server_dir,
            local=LocalSpec("tty", path=path),
        )
        with trio.fail_after(20):
            async with running_bridge(cfg) as ready:
                ctx = client_context(pki.client_dir)
                stream, me = await tls_connect(ready.ports[0], ctx, server_hostname="localhost")
                await drive_qmp(stream)
                await stream.send_all(b'{"execute":"query-chardev"}')
                reply = await read_until(stream, b"\r\n", timeout=5)
                await stream.aclose()
    assert f'"filename": "pty:{path}"'.encode() in reply
    await wait_log(caplog, rf"^session from {re.escape(me)}: TLSv1\.3 ")
