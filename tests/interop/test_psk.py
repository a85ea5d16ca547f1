"""TLS-PSK (QEMU ``tls-creds-psk``) against real peers: QEMU 7.2 both ways, and gnutls-cli.

The PSK route is Python 3.13's ``ssl`` or, before that, the optional ``sslpsk3`` package. Without
it these tests skip, except under ``CI=true``, where they fail: CI installs the ``psk`` extra.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.remote import RemoteSession, start_session
from chardev_bridge.cli import build_parser, config_from_args
from chardev_bridge.qemu import psk
from chardev_bridge.qemu.policy import CredentialError, TLSPolicy, load_x509_creds, make_ssl_context
from chardev_bridge.qemu.priority import parse_priority
from chardev_bridge.qemu.psk import describe_psk_failure
from chardev_bridge.tls.errors import describe_tls_error
from chardev_bridge.tls.setup import Endpoint, TLSSetup
from chardev_bridge.tls.stream import TLSHandshakeError
from tests.support.bridges import running_bridge
from tests.support.certs import PKI
from tests.support.peers import qemu_errors, qemu_load, require_tool
from tests.support.peers import qemu_in_thread as qemu
from tests.support.procs import BASE_ENV, reap
from tests.support.streams import open_pty, read_until

KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef")
OTHER_KEY = bytes(range(32))
# What QEMU adds to its priority for PSK credentials; gnutls-cli offers no PSK without it.
GNUTLS_PSK_PRIORITY = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
# TLS 1.3 external PSK as a client needs Python 3.13's ssl (see chardev_bridge.qemu.psk).
CLIENT_VERSION = "TLSv1.3" if psk.NATIVE_PSK else "TLSv1.2"
TIMEOUT = 10
KEY_HINT = "probably not the same PSK key on both sides (compare keys.psk)"


@pytest.fixture
def psk_route() -> str:
    """The PSK route of this Python; skip without one (fail under CI=true)."""
    try:
        return psk.check_psk_available()
    except psk.PskUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so the psk extra must be installed: {exc}", pytrace=False)
        pytest.skip(str(exc))


def write_keys(directory: Path, text: str) -> Path:
    """A credentials dir with ``keys.psk`` = ``text``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "keys.psk").write_text(text)
    (directory / "keys.psk").chmod(0o600)
    return directory


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """``keys.psk`` with the user ``qemu`` (QEMU's default) and one more."""
    return write_keys(tmp_path / "psk", f"qemu:{KEY.hex()}\nalice:{OTHER_KEY.hex()}\n")


# --- helpers ----------------------------------------------------------------------------------


async def connect(port: int, setup: TLSSetup) -> RemoteSession:
    """Our side as TCP client of 127.0.0.1:port, handshake done."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return await start_session(tcp, setup, handshake_timeout=TIMEOUT)


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


async def accept_one(listener: trio.SocketListener, setup: TLSSetup) -> RemoteSession:
    """Accept one TCP connection and run our TLS server handshake on it."""
    with trio.fail_after(TIMEOUT):
        tcp = await listener.accept()
    assert isinstance(tcp, trio.SocketStream)
    return await start_session(tcp, setup, handshake_timeout=TIMEOUT)


async def open_listener() -> tuple[trio.SocketListener, int]:
    """A TCP listener on 127.0.0.1 with a kernel-chosen port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    return listener, listener.socket.getsockname()[1]


# --- keys.psk ---------------------------------------------------------------------------------


def test_load_psk_keys_reads_qemu_format(tmp_path: Path) -> None:
    directory = write_keys(
        tmp_path,
        f"qemu:{KEY.hex()}\r\n\nno colon here\nalice:{OTHER_KEY.hex().upper()}\n"
        f"qemu:{OTHER_KEY.hex()}\n",
    )
    # First line per user wins (QEMU and gnutls both stop at the first match); CRLF and
    # upper-case hex are accepted; a line without ':' is ignored as QEMU does.
    assert psk.load_psk_keys(directory) == {"qemu": KEY, "alice": OTHER_KEY}


def test_keys_file_readable_by_others_is_warned_about(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (keys_dir / "keys.psk").chmod(0o644)
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    psk.load_psk_keys(keys_dir)
    assert "is accessible by group or others (mode 0644): chmod 600 it" in caplog.text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("qemu:xyz\n", "line 1: the key for 'qemu' is not hexadecimal"),
        ("a:00\nqemu:abc\n", "line 2: the key for 'qemu' is not hexadecimal"),
        ("qemu:\n", "line 1: empty key for 'qemu'"),
        ("qemu:" + "00" * 257 + "\n", "has 257 bytes; OpenSSL takes at most 256"),
    ],
)
def test_bad_keys_file_names_the_line(tmp_path: Path, text: str, words: str) -> None:
    directory = write_keys(tmp_path, text)
    with pytest.raises(CredentialError, match=words):
        psk.load_psk_keys(directory)


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


# --- no PSK route -----------------------------------------------------------------------------


@pytest.fixture
def no_psk_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """This Python as if it were 3.11 without sslpsk3."""
    monkeypatch.setattr(psk, "NATIVE_PSK", False)
    # None in sys.modules makes `import sslpsk3` raise ImportError.
    monkeypatch.setitem(sys.modules, "sslpsk3", None)


@pytest.mark.usefixtures("no_psk_route")
@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_without_psk_support_says_what_to_install(keys_dir: Path, endpoint: Endpoint) -> None:
    with pytest.raises(psk.PskUnavailable) as info:
        psk.build_psk_setup(keys_dir, endpoint=endpoint)
    message = str(info.value)
    assert "pip install 'chardev-bridge[psk]'" in message
    assert "Python 3.13" in message
    # A CredentialError: the CLI prints it as one start-up error line, no traceback.
    assert isinstance(info.value, CredentialError)


@pytest.mark.usefixtures("no_psk_route")
def test_missing_psk_support_is_reported_before_the_keys(tmp_path: Path) -> None:
    # Both wrong: the install hint comes first (it is needed whatever the keys).
    with pytest.raises(psk.PskUnavailable):
        psk.build_psk_setup(tmp_path, endpoint="client")


# --- cipher suites ----------------------------------------------------------------------------


def test_default_suites_are_qemus_forward_secret_first() -> None:
    suites = psk.psk_ciphers(None).split(":")
    assert suites[0] == "ECDHE-PSK-CHACHA20-POLY1305"
    assert suites.index("DHE-PSK-AES256-GCM-SHA384") < suites.index("PSK-AES256-GCM-SHA384")
    assert not any("NULL" in s or "SHA256" in s.split("-")[-1] for s in suites if "CBC" in s)


def test_priority_restricts_psk_suites() -> None:
    suites = psk.psk_ciphers(parse_priority("SECURE256")).split(":")
    assert suites == [
        "ECDHE-PSK-CHACHA20-POLY1305",
        "DHE-PSK-AES256-GCM-SHA384",
        "DHE-PSK-CHACHA20-POLY1305",
        "DHE-PSK-AES256-CCM",
        "PSK-AES256-GCM-SHA384",
        "PSK-CHACHA20-POLY1305",
        "PSK-AES256-CCM",
    ]


def test_tls13_only_priority_on_old_python_client_is_refused(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, psk_route: str
) -> None:
    if psk.NATIVE_PSK:
        pytest.skip("Python 3.13+ does TLS 1.3 PSK as a client")
    with pytest.raises(psk.PskUnavailable, match=r"needs Python 3\.13"):
        psk.build_psk_setup(
            keys_dir, endpoint="client", priority=parse_priority("NORMAL:-VERS-TLS1.2")
        )


# --- our client and our server ----------------------------------------------------------------


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
                    assert (await read_until(app, b"\r\n")).startswith(b'{"QMP"')
                    await app.send_all(b'{"execute":"qmp_capabilities"}\n')
                    assert await read_until(app, b"\r\n") == b'{"return": {}}\r\n'
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
