"""TLS-PSK (QEMU ``tls-creds-psk``) against real peers: QEMU 7.2 both ways, and gnutls-cli.

The PSK route is Python 3.13's ``ssl`` or, before that, the optional ``sslpsk3`` package. Without
it these tests skip, except under ``CI=true``, where they fail: CI installs the ``psk`` extra.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.options import build_parser, config_from_args
from chardev_bridge.qemu import psk
from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.psk import describe_psk_failure
from chardev_bridge.tls.errors import describe_tls_error
from chardev_bridge.tls.setup import Endpoint
from chardev_bridge.tls.stream import TLSHandshakeError
from tests.support.bridges import running_bridge
from tests.support.peers import qemu_errors, qemu_load, require_tool, start_qmp
from tests.support.peers import qemu_in_thread as qemu
from tests.support.procs import BASE_ENV, reap
from tests.support.psk import (
    CLIENT_VERSION,
    KEY,
    KEY_HINT,
    OTHER_KEY,
    TIMEOUT,
    accept_one,
    connect,
    open_listener,
    write_keys,
)
from tests.support.streams import open_pty, read_until

pytestmark = pytest.mark.interop

# What QEMU adds to its priority for PSK credentials; gnutls-cli offers no PSK without it.
GNUTLS_PSK_PRIORITY = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"


def qemu_psk_server(directory: Path, priority: str | None = None) -> list[str]:
    """QEMU as PSK TLS server: a QMP monitor on 127.0.0.1, port chosen by the kernel."""
    creds = f"tls-creds-psk,id=tls0,dir={directory},endpoint=server"
    if priority is not None:
        creds += f",priority={priority}"
    chardev = "socket,id=mon0,host=127.0.0.1,port=0,server=on,wait=off,tls-creds=tls0"
    return [*["-object", creds], *["-chardev", chardev, "-mon", "chardev=mon0,mode=control"]]


def qemu_psk_client(
    directory: Path, port: int, username: str = "qemu", priority: str | None = None
) -> list[str]:
    """QEMU as PSK TLS client: a QMP monitor on a chardev that connects to ``port``."""
    creds = f"tls-creds-psk,id=tls0,dir={directory},endpoint=client,username={username}"
    if priority is not None:
        creds += f",priority={priority}"
    chardev = f"socket,id=mon0,host=127.0.0.1,port={port},server=off,reconnect=1,tls-creds=tls0"
    return [*["-object", creds], *["-chardev", chardev, "-mon", "chardev=mon0,mode=control"]]


# --- keys.psk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_missing_keys_file_is_reported_as_qemu_does(
    tmp_path: Path, endpoint: Endpoint, psk_route: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stderr = qemu_load(["-object", f"tls-creds-psk,id=t,dir={empty},endpoint={endpoint}"])
    assert code == 1
    with pytest.raises(CredentialError) as info:
        psk.build_psk_setup(empty, endpoint=endpoint)
    assert str(info.value) in qemu_errors(stderr)
    assert str(info.value) == f"Unable to access credentials {empty}/keys.psk: " + (
        "No such file or directory"
    )


def test_unknown_username_is_reported_as_qemu_does(keys_dir: Path, psk_route: str) -> None:
    spec = f"tls-creds-psk,id=t,dir={keys_dir},endpoint=client,username=bob"
    code, stderr = qemu_load(["-object", spec])
    assert code == 1
    with pytest.raises(CredentialError) as info:
        psk.build_psk_setup(keys_dir, endpoint="client", username="bob")
    assert str(info.value) == f"Username bob not found in PSK file {keys_dir}/keys.psk"
    assert str(info.value) in qemu_errors(stderr)


def test_server_refuses_a_username_as_qemu_does(keys_dir: Path, psk_route: str) -> None:
    spec = f"tls-creds-psk,id=t,dir={keys_dir},endpoint=server,username=qemu"
    code, stderr = qemu_load(["-object", spec])
    assert code == 1
    with pytest.raises(CredentialError) as info:
        psk.build_psk_setup(keys_dir, endpoint="server", username="qemu")
    assert str(info.value) in qemu_errors(stderr)


# --- QEMU 7.2 ---------------------------------------------------------------------------------

# QEMU's own priority for PSK is NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK; with -VERS-TLS1.3 it speaks
# TLS 1.2 PSK only. (priority, version our client gets, version our server gets)
QEMU_PRIORITIES = [
    pytest.param(None, CLIENT_VERSION, "TLSv1.3", id="NORMAL"),
    pytest.param("NORMAL:-VERS-TLS1.3", "TLSv1.2", "TLSv1.2", id="TLS1.2"),
]


@pytest.mark.parametrize(("priority", "version", "_"), QEMU_PRIORITIES)
async def test_qemu_psk_server_greets_our_client(
    keys_dir: Path, psk_route: str, priority: str | None, version: str, _: str
) -> None:
    async with qemu(qemu_psk_server(keys_dir, priority)) as vm:
        port = await trio.to_thread.run_sync(vm.port, "mon0")
        session = await connect(port, psk.build_psk_setup(keys_dir, endpoint="client"))
        try:
            assert session.tls is not None and session.tls.version == version
            greeting = await read_until(session.stream, b"\r\n")
            assert greeting.startswith(b'{"QMP": {"version": {"qemu": {"micro"')
            await session.stream.send_all(b'{"execute":"qmp_capabilities","id":1}\n')
            assert await read_until(session.stream, b"\r\n") == b'{"return": {}, "id": 1}\r\n'
        finally:
            await session.stream.aclose()


async def test_qemu_psk_server_refuses_a_wrong_key(
    keys_dir: Path, tmp_path: Path, psk_route: str
) -> None:
    wrong = write_keys(tmp_path / "wrong", f"qemu:{OTHER_KEY.hex()}\n")
    async with qemu(qemu_psk_server(keys_dir)) as vm:
        port = await trio.to_thread.run_sync(vm.port, "mon0")
        with pytest.raises(TLSHandshakeError) as info:
            await connect(port, psk.build_psk_setup(wrong, endpoint="client"))
    # TLS 1.2: QEMU cannot decrypt our Finished and just closes; TLS 1.3: our binder fails
    # (alert decrypt_error). Neither says "wrong key": describe_psk_failure does.
    words = describe_psk_failure(info.value)
    assert words in (
        "the peer closed the connection during the handshake: " + KEY_HINT,
        "the peer could not verify our handshake (alert decrypt_error): " + KEY_HINT,
    )
    assert words.startswith(describe_tls_error(info.value))


@pytest.mark.parametrize(("priority", "_", "version"), QEMU_PRIORITIES)
async def test_qemu_psk_client_reaches_our_server(
    keys_dir: Path, psk_route: str, priority: str | None, _: str, version: str
) -> None:
    listener, port = await open_listener()
    async with listener:
        setup = psk.build_psk_setup(keys_dir, endpoint="server")
        async with qemu(qemu_psk_client(keys_dir, port, "alice", priority)):
            session = await accept_one(listener, setup)
            try:
                # Our server does TLS 1.3 PSK on every Python (only the client needs 3.13).
                assert session.tls is not None and session.tls.version == version
                greeting = await read_until(session.stream, b"\r\n")
                assert greeting.startswith(b'{"QMP": {"version": {"qemu": {"micro"')
                await session.stream.send_all(b'{"execute":"qmp_capabilities","id":7}\n')
                got = await read_until(session.stream, b"\r\n")
                assert got == b'{"return": {}, "id": 7}\r\n'
            finally:
                await session.stream.aclose()


@pytest.mark.parametrize(("priority", "_", "version"), QEMU_PRIORITIES)
async def test_qemu_psk_client_with_a_wrong_key_is_refused(
    keys_dir: Path, tmp_path: Path, psk_route: str, priority: str | None, _: str, version: str
) -> None:
    wrong = write_keys(tmp_path / "wrong", f"qemu:{OTHER_KEY.hex()}\n")
    listener, port = await open_listener()
    async with listener:
        setup = psk.build_psk_setup(keys_dir, endpoint="server")
        async with qemu(qemu_psk_client(wrong, port, priority=priority)):
            with pytest.raises(TLSHandshakeError) as info:
                await accept_one(listener, setup)
    # TLS 1.3: the binder made with the other key does not verify; TLS 1.2: its Finished.
    assert describe_psk_failure(info.value) in (
        "binder does not verify: " + KEY_HINT,
        "decryption failed or bad record mac: " + KEY_HINT,
    )


# --- gnutls-cli -------------------------------------------------------------------------------


async def test_gnutls_cli_talks_to_our_server(keys_dir: Path, psk_route: str) -> None:
    # TLS 1.3 only: gnutls-cli 3.7.9 limited to TLS 1.2 (":-VERS-TLS1.3") crashes after a PSK
    # handshake (exit 139) and is dropped by QEMU's own PSK server as well; QEMU's client
    # covers TLS 1.2 above.
    binary = require_tool("gnutls-cli")
    listener, port = await open_listener()
    setup = psk.build_psk_setup(keys_dir, endpoint="server")
    cmd = [binary, "--priority", GNUTLS_PSK_PRIORITY, "--pskusername", "qemu"]
    proc = await trio.lowlevel.open_process(
        [*cmd, "--pskkey", KEY.hex(), "-p", str(port), "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=BASE_ENV,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with listener:
            session = await accept_one(listener, setup)
        assert session.tls is not None and session.tls.version == "TLSv1.3"
        await session.stream.send_all(b"from the bridge\n")
        output = await read_until(proc.stdout, b"from the bridge\n", TIMEOUT)
        assert b"PSK authentication. Connected as 'qemu'" in output
        await proc.stdin.send_all(b"from gnutls-cli\n")
        assert await read_until(session.stream, b"\n") == b"from gnutls-cli\n"
        await session.stream.aclose()
    finally:
        await reap(proc)


# --- openssl s_client: DHE-PSK needs dh-params.pem, as in QEMU --------------------------------


@pytest.mark.parametrize("with_dh_params", [True, False])
async def test_dhe_psk_needs_dh_params(
    keys_dir: Path, psk_route: str, with_dh_params: bool
) -> None:
    binary = require_tool("openssl")
    if with_dh_params:
        # RFC 7919 group: instant, unlike generating parameters (QEMU's certtool recipe).
        genparam = [binary, "genpkey", "-genparam", "-algorithm", "DH"]
        genparam += ["-pkeyopt", "group:ffdhe2048", "-out", str(keys_dir / "dh-params.pem")]
        subprocess.run(genparam, check=True, capture_output=True)
    listener, port = await open_listener()
    setup = psk.build_psk_setup(keys_dir, endpoint="server")
    cmd = [binary, "s_client", "-tls1_2", "-cipher", "DHE-PSK-AES256-GCM-SHA384"]
    cmd += ["-psk_identity", "qemu", "-psk", KEY.hex(), "-connect", f"127.0.0.1:{port}"]
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with listener:
            if not with_dh_params:
                with pytest.raises(TLSHandshakeError) as info:
                    await accept_one(listener, setup)
                assert describe_tls_error(info.value) == "no cipher in common with the peer"
                return
            session = await accept_one(listener, setup)
        assert session.tls is not None
        assert session.tls.cipher == "DHE-PSK-AES256-GCM-SHA384"
        await session.stream.send_all(b"dhe-psk\n")
        assert proc.stdout is not None
        assert b"dhe-psk\n" in await read_until(proc.stdout, b"dhe-psk\n", TIMEOUT)
        await session.stream.aclose()
    finally:
        await reap(proc)


async def test_bridge_cli_config_carries_qmp_to_a_qemu_psk_server_through_its_pty(
    keys_dir: Path, psk_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    async with qemu(qemu_psk_server(keys_dir)) as vm:
        port = await trio.to_thread.run_sync(vm.port, "mon0")
        args = ["--host", "127.0.0.1", "--port", str(port), "--tls-creds-psk", str(keys_dir)]
        cfg = config_from_args(build_parser().parse_args(args))
        with trio.fail_after(TIMEOUT):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path
                async with open_pty(ready.pty_path) as app:
                    await start_qmp(app)
                    await app.send_all(b'{"execute":"query-status"}\n')
                    reply = await read_until(app, b"\r\n")
    assert b'"status": "prelaunch"' in reply
    assert f"TLS-PSK via {psk_route}" in caplog.text
    assert f"connected to 127.0.0.1:{port}: {CLIENT_VERSION}" in caplog.text
    assert "no peer certificate" in caplog.text


async def test_qemu_psk_client_drives_qmp_through_a_listening_bridge_pty(
    keys_dir: Path, psk_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    args = ["--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds-psk", str(keys_dir)]
    cfg = config_from_args(build_parser().parse_args(args))
    with trio.fail_after(TIMEOUT):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path
            vm_args = qemu_psk_client(keys_dir, ready.ports[0], "alice")
            async with open_pty(ready.pty_path) as app, qemu(vm_args):
                assert (await read_until(app, b"\r\n")).startswith(b'{"QMP"')
                await app.send_all(b'{"execute":"qmp_capabilities","id":1}\n')
                assert await read_until(app, b"\r\n") == b'{"return": {}, "id": 1}\r\n'
                await app.send_all(b'{"execute":"query-status","id":2}\n')
                reply = await read_until(app, b"\r\n")
    assert b'"status": "prelaunch"' in reply and b'"id": 2' in reply
    assert re.search(
        r"session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, no peer certificate", caplog.text
    )


async def test_tls_username_from_the_command_line_picks_the_key(
    tmp_path: Path, psk_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    # QEMU's server knows only alice: the default identity (qemu) would be refused.
    only_alice = write_keys(tmp_path / "alice", f"alice:{OTHER_KEY.hex()}\n")
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    async with qemu(qemu_psk_server(only_alice)) as vm:
        port = await trio.to_thread.run_sync(vm.port, "mon0")
        args = ["--host", "127.0.0.1", "--port", str(port), "--tls-creds-psk", str(only_alice)]
        cfg = config_from_args(build_parser().parse_args([*args, "--tls-username", "alice"]))
        assert cfg.tls_username == "alice"
        with trio.fail_after(TIMEOUT):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path
                async with open_pty(ready.pty_path) as app:
                    assert (await read_until(app, b"\r\n")).startswith(b'{"QMP"')
    assert f"connected to 127.0.0.1:{port}: {CLIENT_VERSION}" in caplog.text
