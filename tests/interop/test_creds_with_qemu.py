"""Credentials as QEMU 7.2 loads them: credcheck's verdicts against QEMU's own, the dirs
`creds init` makes, and what QEMU does with a CRL at connection time."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.credcheck import check_creds
from chardev_bridge.qemu.credfiles import has_errors
from chardev_bridge.tls.setup import Endpoint
from tests.support.certs import DAY, write_dir
from tests.support.credcases import (
    CASES,
    CLIENT_CASES,
    errors,
)
from tests.support.peers import (
    Qemu,
    gnutls_cli_command,
    qemu_errors,
    qemu_load,
    qemu_tls_server_args,
    require_qemu,
    tls_creds_args,
)
from tests.support.procs import BASE_ENV

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_credcheck_verdicts_match_qemu_7_2_loading_the_same_dirs(
    tmp_path: Path, endpoint: Endpoint
) -> None:
    # QEMU's checks differ by endpoint: a client's certificate is optional, its purpose is
    # clientAuth.
    require_qemu()
    if endpoint == "server":
        builders = {name: build for name, (build, _) in CASES.items()}
    else:
        builders = CLIENT_CASES
    dirs = {name: build(tmp_path / name) for name, build in builders.items()}

    def load(directory: Path) -> tuple[int, str]:
        return qemu_load(tls_creds_args("tls0", str(directory), endpoint))

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(dirs, pool.map(load, dirs.values()), strict=True))
    for name, (status, stderr) in results.items():
        ours = errors(check_creds(dirs[name], endpoint))
        qemu_said = qemu_errors(stderr)
        if status == 0:
            assert ours == [], f"{name}: QEMU loads it, credcheck says {ours}"
        else:
            assert qemu_said, f"{name}: QEMU exited {status} without a message: {stderr}"
            # QEMU stops at its first problem; credcheck must report that one, worded alike.
            assert any(e.startswith(qemu_said[0]) for e in ours), (name, qemu_said, ours)
    # Both kinds occur, so the comparison means something.
    loaded = {name for name, (status, _) in results.items() if status == 0}
    assert "good" in loaded and not {"expired", "missing-ca"} & loaded


def _gnutls_cli_to_qemu(
    server_dir: Path, client_dir: Path, sent: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """gnutls-cli, with ``client_dir``'s certificate, to the QMP monitor of a QEMU with the TLS
    credentials of ``server_dir``; it sends ``sent`` and ends."""
    with Qemu(qemu_tls_server_args(server_dir)) as qemu:
        return subprocess.run(
            gnutls_cli_command(client_dir, qemu.port("mon0")),
            env=BASE_ENV,
            input=sent,
            capture_output=True,
            timeout=10,
        )


def _client_reaches_qmp(server_dir: Path, client_dir: Path) -> bool:
    return b'{"QMP"' in _gnutls_cli_to_qemu(server_dir, client_dir).stdout


def test_qemu_refuses_client_revoked_by_generated_crl_even_when_out_of_date(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki.init_pki(root)
    assert _client_reaches_qmp(root / "server", root / "client")
    serial = x509.load_pem_x509_certificate(
        (root / "client" / "client-cert.pem").read_bytes()
    ).serial_number
    pki.revoke(root / "ca", [serial], install=[root / "server"])
    assert not has_errors(check_creds(root / "server", "server"))
    assert not _client_reaches_qmp(root / "server", root / "client")
    # Out of date: QEMU 7.2 still enforces it (credcheck warns, does not error).
    ca = pki.load_ca(root / "ca")
    stale = pki.make_crl(ca, [serial], now=dt.datetime.now(dt.UTC) - 40 * DAY, days=30)
    write_dir(root / "server", "server", None, [ca.cert], crl=stale)
    assert not _client_reaches_qmp(root / "server", root / "client")
    # An out-of-date CRL that revokes someone else lets this client in.
    stale_other = pki.make_crl(ca, [serial + 1], now=dt.datetime.now(dt.UTC) - 40 * DAY, days=30)
    write_dir(root / "server", "server", None, [ca.cert], crl=stale_other)
    assert _client_reaches_qmp(root / "server", root / "client")


def test_qemu_loads_generated_dirs_of_every_kind(tmp_path: Path) -> None:
    args: list[str] = []
    kinds = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")
    for i, key_type in enumerate(kinds):
        root = tmp_path / key_type
        pki.init_pki(root, key_type=key_type)  # type: ignore[arg-type]
        args += tls_creds_args(f"s{i}", str(root / "server"), "server")
        args += tls_creds_args(f"c{i}", str(root / "client"), "client")
    # Encrypted keys, unlocked with QEMU's passwordid secret.
    pki.init_pki(tmp_path / "enc", key_password=b"s3cret")
    (tmp_path / "pw").write_bytes(b"s3cret")
    args += ["-object", f"secret,id=pw,file={tmp_path / 'pw'}"]
    args += tls_creds_args("se", str(tmp_path / "enc" / "server"), "server", extra=",passwordid=pw")
    args += tls_creds_args("ce", str(tmp_path / "enc" / "client"), "client", extra=",passwordid=pw")
    with Qemu(args) as qemu:
        loaded = {o["name"] for o in qemu.execute("qom-list", path="/objects")}
        assert {f"{role}{i}" for role in "sc" for i in range(len(kinds))} | {"se", "ce"} <= loaded
        assert qemu.execute("qom-get", path="/objects/se", property="loaded") is True


def test_qemu_serves_qmp_over_tls_to_gnutls_cli_with_generated_creds(creds_root: Path) -> None:
    proc = _gnutls_cli_to_qemu(
        creds_root / "server", creds_root / "client", b'{"execute": "qmp_capabilities"}\n'
    )
    assert b'{"QMP"' in proc.stdout, proc.stderr.decode(errors="replace")


def test_qemu_client_endpoint_presents_generated_client_cert(creds_root: Path) -> None:
    server, client = creds_root / "server", creds_root / "client"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server / "server-cert.pem", server / "server-key.pem")
    ctx.load_verify_locations(server / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                result["peer"] = tls.getpeercert()
                result["greeting"] = tls.recv(4096)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    args = [
        *tls_creds_args("tls0", str(client), "client"),
        "-chardev",
        f"socket,id=mon0,host=127.0.0.1,port={port},server=off,tls-creds=tls0",
        "-mon",
        "chardev=mon0,mode=control",
    ]
    try:
        with Qemu(args):
            thread.join(10)
    finally:
        listener.close()
    assert "error" not in result, result.get("error")
    greeting = result["greeting"]
    assert isinstance(greeting, bytes) and greeting.startswith(b'{"QMP"')
    peer = result["peer"]
    assert isinstance(peer, dict)
    assert dict(x[0] for x in peer["subject"])["commonName"] == "client.example.com"
