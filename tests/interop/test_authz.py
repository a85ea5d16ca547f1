"""QEMU 7.2's tls-authz against our authz lists: the same DNs allowed and denied, the same
files refused."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

import pytest

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.authz import (
    AuthzFileError,
    load_authz_file,
)
from chardev_bridge.qemu.dn import qemu_dn
from tests.support.certs import write_authz_file
from tests.support.peers import Qemu, QemuError, qemu_errors, tls_creds_args, tls_monitor_args

pytestmark = pytest.mark.interop


# QEMU 7.2 cannot create its authz-listfile object (QAPI calls the type "authz-listfile", QOM
# "authz-list-file"; each name is refused by the other), so the same JSON goes to authz-list.
def authz_object(obj_id: str, content: Mapping[str, object]) -> list[str]:
    return ["-object", json.dumps({"qom-type": "authz-list", "id": obj_id, **content})]


def _reaches_qmp(port: int, ca: Path, leaf: pki.Issued, key_dir: Path) -> bool:
    (key_dir / "c.pem").write_bytes(pki.cert_pem(leaf.cert))
    (key_dir / "k.pem").write_bytes(pki.key_pem(leaf.key))
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(key_dir / "c.pem", key_dir / "k.pem")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        try:
            return tls.recv(4096).startswith(b'{"QMP"')
        except (ssl.SSLError, ConnectionError):
            return False  # QEMU closes the TCP connection on an authz denial


def test_qemu_tls_authz_agrees_with_authz_list(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki.init_pki(root)
    ca = pki.load_ca(root / "ca")
    rules = {
        "policy": "deny",
        "rules": [
            {"match": "O=chardev-bridge,CN=evil*", "policy": "deny", "format": "glob"},
            {"match": "O=chardev-bridge,CN=?*", "policy": "allow", "format": "glob"},
            {"match": "O=Partner,CN=exact", "policy": "allow"},
        ],
    }
    path = write_authz_file(tmp_path, rules)
    acl = load_authz_file(path)
    dns = [
        "O=chardev-bridge,CN=alice",
        "O=chardev-bridge,CN=evil1",
        "O=chardev-bridge,OU=x,CN=alice",
        "O=Partner,CN=exact",
        "O=Partner,CN=exactly",
        "CN=alice,O=chardev-bridge",
    ]
    args = [
        *authz_object("auth0", rules),
        *tls_creds_args("tls0", str(root / "server"), "server"),
        *tls_monitor_args("mon0", "tls0", authz="auth0"),
    ]
    with Qemu(args) as qemu:
        port = qemu.port("mon0")
        for dn in dns:
            leaf = pki.issue_leaf(ca, "client", dn=dn)
            assert qemu_dn(leaf.cert.subject) == dn
            qemu_allows = _reaches_qmp(port, root / "client" / "ca-cert.pem", leaf, tmp_path)
            assert acl.is_allowed(dn) is qemu_allows, dn


def test_qemu_refuses_the_authz_files_we_refuse(tmp_path: Path) -> None:
    bad: list[dict[str, object]] = [
        {"policy": "Deny"},
        {"rules": [{"match": "x"}]},
        {"rules": [{"match": "x", "policy": "allow", "fmt": "glob"}]},
        {"rules": [{"match": "x", "policy": "allow", "format": "regex"}]},
        {"bogus": 1},
    ]
    for content in bad:
        with pytest.raises(AuthzFileError):
            load_authz_file(write_authz_file(tmp_path, content))
        with pytest.raises(QemuError) as info, Qemu(authz_object("a", content)):
            pass
        assert qemu_errors(info.value.stderr), info.value.stderr
    good = {"rules": [{"match": "x", "policy": "allow"}]}
    assert load_authz_file(write_authz_file(tmp_path, good)).rules[0].format == "exact"
    with Qemu(authz_object("a", good)) as qemu:
        rules = qemu.execute("qom-get", path="/objects/a", property="rules")
        assert rules == [{"match": "x", "policy": "allow"}]
