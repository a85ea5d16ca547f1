"""gnutls priority strings mapped onto OpenSSL, checked against gnutls itself and QEMU 7.2."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.priority import (
    OPENSSL_TLS13_DEFAULT,
    TLS12_SUITES,
    TlsPriority,
    check_negotiated,
    parse_priority,
)
from tests.support.net import priority_context
from tests.support.peers import Qemu, require_tool, tls_creds_args, tls_monitor_args

pytestmark = pytest.mark.interop

NAMED = ["NORMAL", "SECURE128", "SECURE192", "SECURE256", "PFS", "PERFORMANCE"]
EDITED = [
    "NORMAL:-VERS-TLS1.2",
    "NORMAL:+VERS-TLS1.3",
    "NORMAL:-VERS-ALL:+VERS-TLS1.3",
    "NORMAL:-VERS-TLS1.3",
    "SECURE256:-VERS-TLS1.3",
    "NORMAL:+SHA256:+SHA384",
    "NORMAL:-AES-128-GCM:+AES-128-GCM",
    "NORMAL:-CIPHER-ALL:+AES-256-GCM:+AES-128-CBC",
    "PFS:-RSA:-DHE-RSA:%SERVER_PRECEDENCE",
    "NORMAL:!AES-128-CBC:-COMP-ALL:+COMP-NULL:%COMPAT",
]


# --- against gnutls ----------------------------------------------------------------------


def gnutls_tls12_suites(text: str) -> list[int]:
    """The TLS 1.2 (and older) suites gnutls enables for ``text``, as IANA codes, in order."""
    out = subprocess.run(
        [require_tool("gnutls-cli"), "--priority", text, "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    codes = []
    for name, hi, lo in re.findall(r"^(TLS_\w+)\s+0x(..), 0x(..)\s", out, re.M):
        if not re.match(r"TLS_(AES|CHACHA20)_", name):  # TLS 1.3 suites are listed too
            codes.append(int(hi + lo, 16))
    return codes


@pytest.mark.parametrize("text", NAMED + EDITED)
def test_tls12_suite_list_equals_gnutls_list(text: str) -> None:
    known = {code for _, code in TLS12_SUITES.values()}
    expected = [c for c in gnutls_tls12_suites(text) if c in known]
    prio = parse_priority(text, keywords={})
    ours = [
        c["id"] & 0xFFFF for c in priority_context(text).get_ciphers() if c["protocol"] != "TLSv1.3"
    ]
    if prio.minimum_version == ssl.TLSVersion.TLSv1_3:
        return  # no TLS 1.2 at all: nothing to compare
    assert ours == expected


# --- handshakes with QEMU 7.2 (gnutls speaking the same strings natively) ------------------

HANDSHAKES = [
    # (priority on both sides, key type, expected version, expected cipher)
    ("NORMAL", "ecdsa-p256", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("SECURE128", "ecdsa-p256", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("SECURE192", "ecdsa-p384", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("SECURE256", "ecdsa-p384", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("PFS", "ecdsa-p256", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("PERFORMANCE", "ecdsa-p256", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("NORMAL:-VERS-ALL:+VERS-TLS1.3", "ecdsa-p256", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("NORMAL:-VERS-TLS1.3", "ecdsa-p256", "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("SECURE256:-VERS-TLS1.3", "ecdsa-p384", "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    # PERFORMANCE puts RSA key exchange first, and QEMU (gnutls) picks it.
    ("PERFORMANCE:-VERS-TLS1.3", "rsa-2048", "TLSv1.2", "AES128-GCM-SHA256"),
]


# Server-side strings for refusals: (QEMU's string, key type).
QEMU_ONLY = {
    "tls12-only": ("NORMAL:-VERS-ALL:+VERS-TLS1.2", "ecdsa-p256"),
    "aes128-only": ("NORMAL:-VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM", "ecdsa-p256"),
}


def _chardev_id(text: str) -> str:
    return "m" + re.sub(r"[^A-Za-z0-9]", "_", text)


@pytest.fixture(scope="module")
def qemu_priorities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Qemu, Path]]:
    """One QEMU serving a QMP monitor per priority string (and key type) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("prio")
    key_types: tuple[pki.KeyType, ...] = ("ecdsa-p256", "ecdsa-p384", "rsa-2048")
    for kt in key_types:
        pki.init_pki(root / kt, key_type=kt)
    args: list[str] = []
    specs = [(t, k) for t, k, _, _ in HANDSHAKES] + list(QEMU_ONLY.values())
    for i, (text, key_type) in enumerate(specs):
        creds = f"tls{i}"
        args += tls_creds_args(creds, str(root / key_type / "server"), "server", priority=text)
        args += tls_monitor_args(_chardev_id(text), creds)
    with Qemu(args) as qemu:
        yield qemu, root


def _connect(port: int, ctx: ssl.SSLContext) -> tuple[str | None, str | None, bytes]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None, tls.recv(4096)


def _client_ctx(text: str, root: Path, key_type: str) -> ssl.SSLContext:
    ctx = priority_context(text)
    client = root / key_type / "client"
    ctx.load_verify_locations(client / "ca-cert.pem")
    ctx.load_cert_chain(client / "client-cert.pem", client / "client-key.pem")
    return ctx


@pytest.mark.parametrize(("text", "key_type", "version", "cipher"), HANDSHAKES)
def test_python_client_negotiates_what_the_string_allows_with_qemu(
    qemu_priorities: tuple[Qemu, Path], text: str, key_type: str, version: str, cipher: str
) -> None:
    qemu, root = qemu_priorities
    got_version, got_cipher, greeting = _connect(
        qemu.port(_chardev_id(text)), _client_ctx(text, root, key_type)
    )
    assert greeting.startswith(b'{"QMP"')
    assert (got_version, got_cipher) == (version, cipher)
    assert check_negotiated(parse_priority(text, keywords={}), got_version, got_cipher) is None


@pytest.mark.parametrize(
    ("client", "server"),
    [("NORMAL:-VERS-TLS1.2", "tls12-only"), ("SECURE256:-VERS-TLS1.3", "aes128-only")],
)
def test_qemu_refuses_a_client_outside_its_policy_with_a_bare_close(
    qemu_priorities: tuple[Qemu, Path], client: str, server: str
) -> None:
    # QEMU sends no TLS alert when its handshake fails: the client sees only an EOF.
    qemu, root = qemu_priorities
    port = qemu.port(_chardev_id(QEMU_ONLY[server][0]))
    ctx = priority_context(client)
    ctx.load_verify_locations(root / QEMU_ONLY[server][1] / "client" / "ca-cert.pem")
    with pytest.raises(ssl.SSLEOFError, match="UNEXPECTED_EOF"):
        _connect(port, ctx)


def test_client_refuses_a_server_key_too_weak_for_secure256(
    qemu_priorities: tuple[Qemu, Path],
) -> None:
    qemu, root = qemu_priorities
    port = qemu.port(_chardev_id("NORMAL:-VERS-TLS1.3"))  # serves a P-256 certificate
    ctx = priority_context("SECURE256:-VERS-TLS1.3")
    ctx.load_verify_locations(root / "ecdsa-p256" / "client" / "ca-cert.pem")
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        _connect(port, ctx)
    assert "too small" in str(info.value) or "too weak" in str(info.value), info.value


@pytest.mark.parametrize("text", ["NORMAL", "SECURE256", "NORMAL:-VERS-TLS1.3", "PFS"])
def test_python_server_context_serves_gnutls_cli_using_the_same_string(
    tmp_path: Path, text: str
) -> None:
    gnutls_cli = require_tool("gnutls-cli")
    key_type = "ecdsa-p384" if text.startswith("SECURE256") else "ecdsa-p256"
    pki.init_pki(tmp_path, key_type=key_type)  # type: ignore[arg-type]
    server = tmp_path / "server"
    ctx = priority_context(text, server=True)
    ctx.load_cert_chain(server / "server-cert.pem", server / "server-key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            seen["version"], seen["cipher"] = tls.version(), tls.cipher()
            tls.sendall(b"hello from python\n")

    thread = threading.Thread(target=serve)
    thread.start()
    command = [gnutls_cli, "--priority", text, "--x509cafile", str(server / "ca-cert.pem")]
    port = str(listener.getsockname()[1])
    proc = subprocess.Popen(
        [*command, "-p", port, "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    thread.join(10)  # keep gnutls-cli's stdin open until the server has written
    out, err = proc.communicate(timeout=10)
    listener.close()
    assert b"hello from python" in out, err.decode(errors="replace")
    prio: TlsPriority = parse_priority(text, keywords={})
    cipher = seen["cipher"]
    assert isinstance(cipher, tuple)
    assert check_negotiated(prio, str(seen["version"]), cipher[0]) is None
    if seen["version"] == "TLSv1.3":
        assert cipher[0] in OPENSSL_TLS13_DEFAULT
