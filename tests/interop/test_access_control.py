"""Access control at the bridge level, against real peers (gnutls-cli, QEMU 7.2).

Revocation (``ca-crl.pem``), DN allow-lists (``--tls-authz``, ``--tls-authz-file``, in either
TLS role), TLS priority strings, encrypted keys and QEMU's load-time checks. Each test runs a
bridge with a pty as its local end and checks both the bytes that cross (or do not) and the
log line that says why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.qemu import pki
from chardev_bridge.qemu.priority import LOCAL_POLICY_FILE
from tests.support.bridges import connecting_config, listening_config, running_bridge, wait_log
from tests.support.certs import DAY, SERVER_DN, Creds, make_creds
from tests.support.credcases import CASES
from tests.support.peers import (
    gnutls_cli_command,
    qemu_errors,
    qemu_load,
    qemu_tls_client_args,
    qemu_tls_server_args,
    require_tool,
    tls_creds_args,
)
from tests.support.peers import qemu_in_thread as qemu
from tests.support.procs import (
    BASE_ENV,
    cli_bridge,
    exit_status,
    reap,
    run_cli,
    stderr_messages,
)
from tests.support.streams import assert_silent, open_pty, read_until

pytestmark = pytest.mark.interop

# gnutls-cli and the bridge must not pick up a priority file from the test's environment.
GOOD_DN = pki.DEFAULT_CLIENT_DN
PEER = r"127\.0\.0\.1:\d+"
LISTENING = ["--server", "--host", "127.0.0.1", "--port", "0"]


# --- bridges -----------------------------------------------------------------------------------


def server_cfg(creds_dir: Path, **kw: Any) -> BridgeConfig:
    """A listening bridge with a pty local end; a stalled handshake ends after 5 s."""
    return listening_config(creds_dir, handshake_timeout=5, **kw)


def serial_hex(leaf: pki.Issued) -> str:
    return f"{leaf.cert.serial_number:#x}"


# --- peers ------------------------------------------------------------------------------------


@dataclass
class GnutlsCli:
    proc: trio.Process
    output: bytearray  # stdout and stderr, as far as read

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)

    async def expect(self, marker: bytes, timeout: float = 10) -> bytes:
        """Read until ``marker`` has been seen; all output so far is returned."""
        assert self.proc.stdout is not None
        if marker not in self.output:
            self.output += await read_until(self.proc.stdout, marker, timeout)
        return bytes(self.output)

    async def finish(self, timeout: float = 10) -> tuple[int, str]:
        """Wait for gnutls-cli to exit (stdin stays open); (exit status, all output)."""
        assert self.proc.stdout is not None
        with trio.move_on_after(timeout):
            while chunk := await self.proc.stdout.receive_some():
                self.output += chunk
            code = await self.proc.wait()
            return code, self.output.decode(errors="replace")
        pytest.fail(f"gnutls-cli still connected after {timeout}s:\n{self.output.decode()}")


@asynccontextmanager
async def gnutls_cli(port: int, creds_dir: Path, *extra: str) -> AsyncIterator[GnutlsCli]:
    """gnutls-cli as a TLS client of 127.0.0.1:port with ``creds_dir``'s client certificate."""
    proc = await trio.lowlevel.open_process(
        gnutls_cli_command(creds_dir, port, *extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=BASE_ENV,
    )
    try:
        yield GnutlsCli(proc, bytearray())
    finally:
        await reap(proc)


async def qmp_round_trip(app: trio.abc.Stream) -> None:
    """Over the bridge's pty: QEMU's greeting arrives and qmp_capabilities is answered."""
    assert b'{"QMP": {"version": {"qemu": {"micro"' in await read_until(app, b"\r\n")
    await app.send_all(b'{"execute": "qmp_capabilities", "id": 7}\r\n')
    assert b'{"return": {}, "id": 7}' in await read_until(app, b'"id": 7}\r\n')


async def good_gnutls_client_crosses(port: int, creds_dir: Path, app: trio.abc.Stream) -> bytes:
    """A gnutls-cli client's bytes reach the pty and the pty's reach it; its output."""
    async with gnutls_cli(port, creds_dir) as cli:
        await cli.send(b"hello from gnutls-cli\n")
        assert await read_until(app, b"gnutls-cli\n") == b"hello from gnutls-cli\n"
        await app.send_all(b"hello from the pty\n")
        return await cli.expect(b"hello from the pty\n")


async def denied_gnutls_client(
    port: int, creds_dir: Path, app: trio.abc.Stream, *extra: str
) -> tuple[int, str]:
    """A gnutls-cli client that writes at once and is refused: nothing reaches the pty."""
    async with gnutls_cli(port, creds_dir, *extra) as cli:
        try:
            await cli.send(b"must never arrive\n")
        except trio.BrokenResourceError:
            pass  # refused so fast that gnutls-cli had exited: its stdin is closed
        code, output = await cli.finish()
    await assert_silent(app)
    return code, output


# === revocation ===============================================================================


@pytest.mark.parametrize(
    ("priority", "version"),
    [("NORMAL", "1.3"), ("NORMAL:-VERS-TLS1.3", "1.2")],
    ids=["tls13", "tls12"],
)
async def test_crl_refuses_revoked_gnutls_cli_and_admits_a_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, priority: str, version: str
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    pki.revoke(creds.ca, [creds.other_leaf.cert.serial_number], install=[creds.server])
    with trio.fail_after(30):
        async with running_bridge(server_cfg(creds.server)) as bridge:
            assert bridge.pty_path
            port = bridge.ports[0]
            async with open_pty(bridge.pty_path) as app:
                code, output = await denied_gnutls_client(
                    port, creds.other, app, "--priority", priority
                )
                line = (await wait_log(caplog, rf"denied {PEER}: "))[0]
                assert (
                    f"certificate 'O=chardev-bridge,CN=revoked' serial"
                    f" {serial_hex(creds.other_leaf)} is revoked (since " in line
                ), line
                assert f"{creds.server}/ca-crl.pem)" in line
                # As with QEMU, the check runs after the handshake: gnutls-cli finished its
                # handshake, then the bridge closed the connection without an alert.
                assert f"(TLS{version}-X.509)" in output and "Handshake was completed" in output
                assert code != 0 and "Server has terminated the connection abnormally" in output
                await good_gnutls_client_crosses(port, creds.client, app)
    assert re.search(rf"session from {PEER}: TLSv1\.3 .*'{GOOD_DN}'", caplog.text)


async def test_crl_refuses_revoked_qemu_client_and_admits_a_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    pki.revoke(creds.ca, [creds.other_leaf.cert.serial_number], install=[creds.server])
    with trio.fail_after(30):
        async with running_bridge(server_cfg(creds.server)) as bridge:
            assert bridge.pty_path
            port = bridge.ports[0]
            async with open_pty(bridge.pty_path) as app:
                # QEMU sends its QMP greeting as soon as its handshake is done: it must not
                # reach the pty.
                async with qemu(qemu_tls_client_args(creds.other, port)):
                    line = (await wait_log(caplog, rf"denied {PEER}: "))[0]
                    await assert_silent(app)
                assert (
                    f"certificate 'O=chardev-bridge,CN=revoked' serial"
                    f" {serial_hex(creds.other_leaf)} is revoked" in line
                ), line
                async with qemu(qemu_tls_client_args(creds.client, port)):
                    await qmp_round_trip(app)
    assert re.search(rf"session from {PEER}: TLSv1\.3 .*'{GOOD_DN}'", caplog.text)


async def test_crl_past_next_update_still_revokes_like_qemu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    then = dt.datetime.now(dt.UTC) - 10 * DAY
    crl = pki.make_crl(
        pki.load_ca(creds.ca), [creds.other_leaf.cert.serial_number], now=then, days=1
    )
    assert crl.next_update_utc is not None and crl.next_update_utc < dt.datetime.now(dt.UTC)
    (creds.server / "ca-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    with trio.fail_after(30):
        # QEMU itself: still enforces the stale CRL, and still lets a good client in.
        async with qemu(qemu_tls_server_args(creds.server)) as vm:
            qemu_port = await trio.to_thread.run_sync(vm.port, "mon0")
            async with gnutls_cli(qemu_port, creds.other) as cli:
                _, output = await cli.finish()
            assert '{"QMP"' not in output, output
            async with gnutls_cli(qemu_port, creds.client) as cli:
                await cli.expect(b'{"QMP"')
        async with running_bridge(server_cfg(creds.server)) as bridge:
            assert bridge.pty_path
            port = bridge.ports[0]
            async with open_pty(bridge.pty_path) as app:
                await denied_gnutls_client(port, creds.other, app)
                line = (await wait_log(caplog, rf"denied {PEER}: "))[0]
                assert f"serial {serial_hex(creds.other_leaf)} is revoked" in line, line
                await good_gnutls_client_crosses(port, creds.client, app)
    assert re.search(
        r"CRL \S+/ca-crl.pem is out of date .*QEMU 7\.2 still enforces it", caplog.text
    )


# === allow-lists ==============================================================================


async def test_tls_authz_glob_with_gnutls_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path, other_dn="O=Elsewhere,CN=client")
    cfg = server_cfg(creds.server, tls_authz=("O=chardev-bridge,CN=cl?ent", "O=Partner,*"))
    with trio.fail_after(30):
        async with running_bridge(cfg) as bridge:
            assert bridge.pty_path
            async with open_pty(bridge.pty_path) as app:
                await denied_gnutls_client(bridge.ports[0], creds.other, app)
                line = (await wait_log(caplog, rf"denied {PEER}: "))[0]
                assert line.endswith(
                    ": not allowed: 'O=Elsewhere,CN=client' denied by the default policy"
                ), line
                await good_gnutls_client_crosses(bridge.ports[0], creds.client, app)
    assert re.search(rf"session from {PEER}: .*'{GOOD_DN}'", caplog.text)


async def test_tls_authz_glob_with_qemu_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path, other_dn="O=chardev-bridge,CN=intruder")
    cfg = server_cfg(creds.server, tls_authz=("O=chardev-bridge,CN=c*",))
    with trio.fail_after(30):
        async with running_bridge(cfg) as bridge:
            assert bridge.pty_path
            port = bridge.ports[0]
            async with open_pty(bridge.pty_path) as app:
                async with qemu(qemu_tls_client_args(creds.other, port)):
                    line = (await wait_log(caplog, rf"denied {PEER}: "))[0]
                    await assert_silent(app)
                assert line.endswith(
                    "not allowed: 'O=chardev-bridge,CN=intruder' denied by the default policy"
                ), line
                async with qemu(qemu_tls_client_args(creds.client, port)):
                    await qmp_round_trip(app)


async def test_tls_authz_file_in_qemu_format_via_cli(tmp_path: Path) -> None:
    creds = make_creds(tmp_path, other_dn="O=chardev-bridge,CN=clever")
    rules = {
        "policy": "deny",
        "rules": [
            {"match": "O=chardev-bridge,CN=cle*", "policy": "deny", "format": "glob"},
            {"match": "O=chardev-bridge,CN=*", "policy": "allow", "format": "glob"},
        ],
    }
    authz = tmp_path / "authz.json"
    authz.write_text(json.dumps(rules))
    with trio.fail_after(30):
        async with cli_bridge(
            [*LISTENING, "--tls-creds", str(creds.server), "--tls-authz-file", str(authz)]
        ) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            async with open_pty(pty_path) as app:
                await denied_gnutls_client(port, creds.other, app)
                await good_gnutls_client_crosses(port, creds.client, app)
            bridge.signal(signal.SIGTERM)
            assert await exit_status(bridge) == 0
    lines = stderr_messages(bridge.log())
    denied = [line for line in lines if line.startswith("denied ")]
    assert len(denied) == 1, lines
    assert denied[0].endswith(
        "not allowed: 'O=chardev-bridge,CN=clever'"
        " denied by rule 1 (glob 'O=chardev-bridge,CN=cle*')"
    ), denied
    assert any(re.match(rf"session from {PEER}: .*'{GOOD_DN}'", line) for line in lines), lines


async def test_bridge_client_refuses_a_qemu_server_outside_its_allow_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    authz = tmp_path / "authz.json"
    authz.write_text(json.dumps({"rules": [{"match": SERVER_DN, "policy": "deny"}]}))
    with trio.fail_after(30):
        async with qemu(qemu_tls_server_args(creds.server)) as vm:
            port = await trio.to_thread.run_sync(vm.port, "mon0")
            cfg = connecting_config(port, creds.client, tls_authz=("O=chardev-bridge,*",))
            assert await run_bridge(cfg) == 1
            cfg = connecting_config(port, creds.client, tls_authz_file=authz)
            assert await run_bridge(cfg) == 1
            cfg = connecting_config(port, creds.client, tls_authz=("CN=local*",))
            async with running_bridge(cfg) as client:
                assert client.pty_path
                async with open_pty(client.pty_path) as app:
                    await qmp_round_trip(app)
    refused = [m for m in caplog.messages if m.startswith(f"cannot connect to 127.0.0.1:{port}")]
    assert refused == [
        f"cannot connect to 127.0.0.1:{port}: server denied by our policy: not allowed:"
        f" '{SERVER_DN}' denied by the default policy",
        f"cannot connect to 127.0.0.1:{port}: server denied by our policy: not allowed:"
        f" '{SERVER_DN}' denied by rule 1 (exact '{SERVER_DN}')",
    ]
    assert re.search(rf"connected to {PEER}: TLSv1\.3 .*'{SERVER_DN}'", caplog.text)


# === TLS priority =============================================================================


async def test_priority_without_tls13_negotiates_tls12_with_gnutls_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    with trio.fail_after(20):
        async with running_bridge(
            server_cfg(creds.server, tls_priority="NORMAL:-VERS-TLS1.3")
        ) as bridge:
            assert bridge.pty_path
            async with open_pty(bridge.pty_path) as app:
                output = await good_gnutls_client_crosses(bridge.ports[0], creds.client, app)
    # gnutls-cli's own view of the session, e.g. (TLS1.2-X.509)-(ECDHE-X25519)-(ECDSA-SHA256)-...
    assert re.search(rb"- Description: \(TLS1\.2-X\.509\)-\(ECDHE-[^)]+\)-\(ECDSA-", output), output
    assert "TLS priority NORMAL:-VERS-TLS1.3, from --tls-priority" in caplog.messages
    assert re.search(rf"session from {PEER}: TLSv1\.2 ECDHE-ECDSA-\S+, .*'{GOOD_DN}'", caplog.text)


async def test_priority_from_the_application_policy_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if LOCAL_POLICY_FILE.exists():
        pytest.skip(f"{LOCAL_POLICY_FILE} exists here and takes precedence")
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    policy = tmp_path / "gnutls.config"
    policy.write_text("[priorities]\nCHARDEV_BRIDGE = NORMAL:-VERS-TLS1.3\n")
    monkeypatch.setenv("GNUTLS_SYSTEM_PRIORITY_FILE", str(policy))
    with trio.fail_after(20):
        async with running_bridge(server_cfg(creds.server)) as bridge:
            assert bridge.pty_path
            async with open_pty(bridge.pty_path) as app:
                output = await good_gnutls_client_crosses(bridge.ports[0], creds.client, app)
    assert b"(TLS1.2-X.509)" in output
    assert f"TLS priority NORMAL:-VERS-TLS1.3, from {policy} (CHARDEV_BRIDGE)" in caplog.messages


async def test_tls13_only_refuses_a_tls12_only_gnutls_cli_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    cfg = server_cfg(creds.server, tls_priority="NORMAL:-VERS-ALL:+VERS-TLS1.3")
    with trio.fail_after(20):
        async with running_bridge(cfg) as bridge:
            assert bridge.pty_path
            async with open_pty(bridge.pty_path) as app:
                code, output = await denied_gnutls_client(
                    bridge.ports[0], creds.client, app, "--priority", "NORMAL:-VERS-TLS1.3"
                )
            line = (await wait_log(caplog, rf"TLS handshake with {PEER} failed: "))[0]
    assert line.endswith("failed: no TLS version in common with the peer"), line
    assert code != 0 and "Handshake was completed" not in output
    assert "protocol version" in output.lower(), output  # gnutls-cli got the alert
    assert "TLS priority NORMAL:-VERS-ALL:+VERS-TLS1.3, from --tls-priority" in caplog.messages


def test_unmappable_priority_fails_at_start_naming_the_token(tmp_path: Path) -> None:
    creds = make_creds(tmp_path)
    text = "NORMAL:+CAMELLIA-128-CBC"
    # A string gnutls itself takes (so QEMU would too): refusing it is our mapping's limit.
    gnutls = subprocess.run(
        [require_tool("gnutls-cli"), "--priority", text, "--list"],
        capture_output=True,
        text=True,
        timeout=10,
        env=BASE_ENV,
    )
    assert "Syntax error" not in gnutls.stdout + gnutls.stderr
    assert "CAMELLIA_128_CBC" in gnutls.stdout
    proc = run_cli(
        *["--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds", str(creds.server)],
        *["--tls-priority", text],
    )
    assert proc.returncode == 1, proc.stderr
    lines = stderr_messages(proc.stderr)
    assert lines[-1] == "priority token '+CAMELLIA-128-CBC' cannot be mapped onto OpenSSL", lines
    assert "Traceback" not in proc.stderr and "listening" not in proc.stderr


# === encrypted keys ===========================================================================

PASSWORD = b"correct horse battery"


@pytest.fixture
def encrypted(tmp_path: Path) -> Creds:
    """A PKI whose server and client keys are encrypted; ``other`` is a plain-key client."""
    return make_creds(tmp_path, other_dn="O=chardev-bridge,CN=plain", key_password=PASSWORD)


async def test_encrypted_server_key_with_password_file_via_cli(
    tmp_path: Path, encrypted: Creds
) -> None:
    assert b"ENCRYPTED PRIVATE KEY" in (encrypted.server / "server-key.pem").read_bytes()
    password = tmp_path / "password"
    password.write_bytes(PASSWORD + b"\n")  # a trailing newline, as `echo` writes it
    args = ["--tls-creds", str(encrypted.server), "--tls-key-password-file", str(password)]
    with trio.fail_after(30):
        async with cli_bridge([*LISTENING, *args]) as bridge:
            pty_path, port = await bridge.pty_path(), await bridge.port()
            async with open_pty(pty_path) as app:
                output = await good_gnutls_client_crosses(port, encrypted.other, app)
            bridge.signal(signal.SIGTERM)
            assert await exit_status(bridge) == 0
    assert b"- Handshake was completed" in output
    assert "peer certificate 'O=chardev-bridge,CN=plain'" in bridge.log()


def _qemu_key_error(creds_dir: Path, secret: str | None) -> list[str]:
    """QEMU's errors when it loads ``creds_dir`` with the key password ``secret`` (or none)."""
    extra = ",passwordid=sec0" if secret is not None else ""
    args = tls_creds_args("tls0", str(creds_dir), "server", extra=extra)
    if secret is not None:
        args = ["-object", f"secret,id=sec0,data={secret}", *args]
    code, stderr = qemu_load(args)
    assert code == 1, stderr
    return qemu_errors(stderr)


@pytest.mark.parametrize(
    ("password", "hint"),
    [
        (b"wrong horse\n", "Decryption has failed. (wrong password?)"),
        (None, "Decryption has failed. (the key is encrypted and no password was given)"),
    ],
    ids=["wrong-password", "no-password"],
)
def test_encrypted_key_problems_fail_at_start_in_one_line(
    tmp_path: Path, encrypted: Creds, password: bytes | None, hint: str
) -> None:
    args = ["--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds", str(encrypted.server)]
    if password is not None:
        (tmp_path / "password").write_bytes(password)
        args += ["--tls-key-password-file", str(tmp_path / "password")]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stderr
    d = encrypted.server
    expected = f"Cannot load certificate '{d}/server-cert.pem' & key '{d}/server-key.pem': {hint}"
    assert stderr_messages(proc.stderr) == [expected], proc.stderr
    # QEMU (with a wrong secret, or without passwordid) says the same, minus our hint.
    qemu_says = _qemu_key_error(d, None if password is None else password.decode().strip())
    assert qemu_says and all(expected.startswith(m.rstrip(".")) for m in qemu_says), qemu_says


# === start-up checks (QEMU's load-time checks, QEMU's words) ==================================


@pytest.mark.parametrize("case", ["expired", "ca-false"])
def test_bad_credentials_stop_the_cli_with_qemus_words(tmp_path: Path, case: str) -> None:
    build, template = CASES[case]
    directory = build(tmp_path / "server")
    assert template is not None
    expected = template.format(d=directory)
    code, stderr = qemu_load(tls_creds_args("tls0", str(directory), "server"))
    qemu_says = qemu_errors(stderr)
    assert code == 1 and qemu_says == [expected], stderr
    proc = run_cli("--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds", str(directory))
    assert proc.returncode == 1, proc.stderr
    lines = stderr_messages(proc.stderr)
    assert expected in lines, lines
    assert "Traceback" not in proc.stderr and "listening" not in proc.stderr


async def _aes128_only_client_then_a_good_one(
    cfg: BridgeConfig, creds: Creds, caplog: pytest.LogCaptureFixture, refusal: str
) -> tuple[int, str, bytes]:
    """A gnutls-cli offering only TLS 1.3 AES-128 is refused (the log line starting with
    ``refusal`` and the peer), then one with default settings gets through: (the first's
    exit status, the refusal line, the second's output)."""
    only_aes128 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM"
    with trio.fail_after(20):
        async with running_bridge(cfg) as bridge:
            assert bridge.pty_path
            async with open_pty(bridge.pty_path) as app:
                code, _ = await denied_gnutls_client(
                    bridge.ports[0], creds.client, app, "--priority", only_aes128
                )
                line = (await wait_log(caplog, rf"{refusal} {PEER}"))[0]
                output = await good_gnutls_client_crosses(bridge.ports[0], creds.client, app)
    return code, line, output


async def test_tls13_suite_outside_the_priority_is_denied_after_the_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Python 3.11's ssl cannot restrict TLS 1.3 suites, so the bridge checks the negotiated
    # one right after the handshake: a gnutls-cli that offers only AES-128 gets no further.
    # (Under SECURE192/256, OpenSSL's security level 4 already refuses AES-128 outright.)
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    cfg = server_cfg(creds.server, tls_priority="NORMAL:-AES-128-GCM")
    _, line, output = await _aes128_only_client_then_a_good_one(cfg, creds, caplog, "denied")
    assert line.endswith(
        "the peer negotiated TLS_AES_128_GCM_SHA256 over TLS 1.3, which the priority string"
        " 'NORMAL:-AES-128-GCM' does not allow"
    ), line
    assert b"(TLS1.3-X.509)" in output and b"AES-256-GCM" in output, output


async def test_secure256_refuses_a_tls13_aes128_only_gnutls_cli_in_the_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path, key_type="ecdsa-p384")  # SECURE256 wants 192-bit keys
    cfg = server_cfg(creds.server, tls_priority="SECURE256")
    code, line, output = await _aes128_only_client_then_a_good_one(
        cfg, creds, caplog, "TLS handshake with"
    )
    assert code != 0
    assert line.endswith("failed: no cipher in common with the peer"), line
    assert b"(TLS1.3-X.509)" in output and b"AES-256-GCM" in output, output
