"""`creds init` / `creds issue` / `creds revoke`: the PKI's layout, extensions, names, key types
and CRLs (QEMU loading it: interop/test_creds_with_qemu.py)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.qemu import creds_cli, pki
from chardev_bridge.qemu.credcheck import check_creds
from chardev_bridge.qemu.credfiles import has_errors
from chardev_bridge.qemu.dn import qemu_dn
from chardev_bridge.tls.setup import Endpoint

LAYOUT = {
    "ca": {"ca-cert.pem", "ca-key.pem"},
    "server": {"ca-cert.pem", "server-cert.pem", "server-key.pem", "dh-params.pem"},
    "client": {"ca-cert.pem", "client-cert.pem", "client-key.pem"},
}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_qemu_layout_with_private_keys_0600(creds_root: Path) -> None:
    for sub, names in LAYOUT.items():
        assert {p.name for p in (creds_root / sub).iterdir()} == names
    for key in creds_root.glob("*/*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((creds_root / "ca").stat().st_mode) == 0o700
    ca = (creds_root / "ca" / "ca-cert.pem").read_bytes()
    assert (creds_root / "server" / "ca-cert.pem").read_bytes() == ca
    assert (creds_root / "client" / "ca-cert.pem").read_bytes() == ca


def test_ca_has_critical_ca_true_and_cert_signing_usage(creds_root: Path) -> None:
    ca = load_cert(creds_root / "ca" / "ca-cert.pem")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize(
    ("role", "purpose"),
    [("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)],
)
def test_leaf_carries_what_qemu_checks(
    creds_root: Path, role: str, purpose: x509.ObjectIdentifier
) -> None:
    ca = load_cert(creds_root / "ca" / "ca-cert.pem")
    leaf = load_cert(creds_root / role / f"{role}-cert.pem")
    ext = leaf.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [purpose]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    leaf.verify_directly_issued_by(ca)


def test_server_names_default_to_localhost_and_loopback_ips(creds_root: Path) -> None:
    leaf = load_cert(creds_root / "server" / "server-cert.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert qemu_dn(leaf.subject) == "CN=localhost"


def test_client_subject_keeps_the_order_tls_authz_matches(creds_root: Path) -> None:
    leaf = load_cert(creds_root / "client" / "client-cert.pem")
    assert qemu_dn(leaf.subject) == "C=GB,O=QEMU Test,CN=client.example.com"


def test_generated_dirs_pass_the_credentials_check(creds_root: Path) -> None:
    roles: tuple[Endpoint, ...] = ("server", "client")
    for role in roles:
        findings = check_creds(creds_root / role, role)
        assert not has_errors(findings), findings
        assert [f for f in findings if f.level == "warning"] == []


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "client-key.pem").write_text("precious")
    with pytest.raises(pki.PkiError, match=r"refusing to overwrite.*client-key\.pem"):
        pki.init_pki(tmp_path)
    assert (tmp_path / "client" / "client-key.pem").read_text() == "precious"
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(
    ("key_type", "check"),
    [
        ("rsa-2048", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 2048),
        ("rsa-3072", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 3072),
        ("rsa-4096", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 4096),
        (
            "ecdsa-p384",
            lambda k: isinstance(k, ec.EllipticCurvePublicKey) and k.curve.key_size == 384,
        ),
    ],
)
def test_init_makes_the_requested_key_type(
    tmp_path: Path, key_type: pki.KeyType, check: object
) -> None:
    pki.init_pki(tmp_path, key_type=key_type, days=30)
    for path in ("ca/ca-cert.pem", "server/server-cert.pem", "client/client-cert.pem"):
        cert = load_cert(tmp_path / path)
        assert callable(check) and check(cert.public_key()), path
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 30 <= lifetime.days <= 31


def test_rejects_unknown_key_type_and_bad_ip() -> None:
    with pytest.raises(pki.PkiError, match="unknown key type"):
        pki.generate_key("dsa-1024")  # type: ignore[arg-type]
    ca = pki.make_ca()
    with pytest.raises(pki.PkiError, match="not an IP address"):
        pki.issue_leaf(ca, "server", ips=["localhost"])
    with pytest.raises(pki.PkiError, match="needs at least one hostname"):
        pki.issue_leaf(ca, "server")


def test_issue_adds_a_client_from_the_existing_ca(creds_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ops"
    leaf = pki.issue_into(creds_root / "ca", out, "client", dn="O=Example,CN=ops")
    assert {p.name for p in out.iterdir()} == {"ca-cert.pem", "client-cert.pem", "client-key.pem"}
    assert qemu_dn(load_cert(out / "client-cert.pem").subject) == "O=Example,CN=ops"
    leaf.cert.verify_directly_issued_by(load_cert(creds_root / "ca" / "ca-cert.pem"))
    assert not has_errors(check_creds(out, "client"))
    with pytest.raises(pki.PkiError, match="refusing to overwrite"):
        pki.issue_into(creds_root / "ca", out, "client")


def test_issue_adds_a_server_with_its_own_names(creds_root: Path, tmp_path: Path) -> None:
    pki.issue_into(
        creds_root / "ca", tmp_path / "s2", "server", hostnames=["vm.example"], ips=["::1"]
    )
    cert = load_cert(tmp_path / "s2" / "server-cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vm.example"]
    assert qemu_dn(cert.subject) == "CN=vm.example"
    assert (tmp_path / "s2" / "dh-params.pem").exists()


def test_encrypted_keys_need_their_password(tmp_path: Path) -> None:
    pki.init_pki(tmp_path, key_password=b"s3cret")
    data = (tmp_path / "server" / "server-key.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in data
    serialization.load_pem_private_key(data, b"s3cret")
    assert b"ENCRYPTED" not in (tmp_path / "ca" / "ca-key.pem").read_bytes()


def test_revoke_merges_serials_and_installs_the_crl(creds_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    pki.init_pki(root)
    extra = tmp_path / "other-server"
    extra.mkdir()
    first = pki.revoke(root / "ca", [0x1234], install=[root / "server"])
    second = pki.revoke(root / "ca", [0xABCD], install=[root / "server", extra])
    assert {r.serial_number for r in second} == {0x1234, 0xABCD}
    assert second.get_revoked_certificate_by_serial_number(0x1234) is not None
    old_date = first.get_revoked_certificate_by_serial_number(0x1234)
    new_entry = second.get_revoked_certificate_by_serial_number(0x1234)
    assert old_date is not None and new_entry is not None
    assert new_entry.revocation_date_utc == old_date.revocation_date_utc
    number = second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 2
    for directory in (root / "ca", root / "server", extra):
        crl = x509.load_pem_x509_crl((directory / "ca-crl.pem").read_bytes())
        assert {r.serial_number for r in crl} == {0x1234, 0xABCD}
    ca = load_cert(root / "ca" / "ca-cert.pem")
    assert second.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "value"), [("1f", 0x1F), ("0x1F", 0x1F), ("1f:a0", 0x1FA0)])
def test_parses_serials_in_hex(text: str, value: int) -> None:
    assert pki.parse_serial(text) == value


def test_rejects_non_hex_serial() -> None:
    with pytest.raises(pki.PkiError, match="hexadecimal"):
        pki.parse_serial("zz")


def test_cli_init_check_issue_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pki"
    args = ["init", str(root), "--hostname", "vm.example", "--ip", "127.0.0.1", "--days", "400"]
    assert creds_cli.main(args) == 0
    assert creds_cli.main(["init", str(root)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert creds_cli.main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "valid for DNS:vm.example, IP:127.0.0.1" in out
    assert "DN 'O=chardev-bridge,CN=client'" in out
    client2 = tmp_path / "c2"
    assert creds_cli.main(["issue", str(root), "--endpoint", "client", "--out", str(client2)]) == 0
    assert creds_cli.main(["revoke", str(root), "--cert", str(client2 / "client-cert.pem")]) == 0
    serial = load_cert(client2 / "client-cert.pem").serial_number
    crl = x509.load_pem_x509_crl((root / "server" / "ca-crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    (root / "server" / "server-key.pem").chmod(0o644)
    assert creds_cli.main(["check", str(root / "server"), "-q"]) == 0
    assert "warning: Private key" in capsys.readouterr().out
    (root / "server" / "server-cert.pem").unlink()
    assert creds_cli.main(["check", str(root / "server"), "--endpoint", "server"]) == 1
    assert "Unable to access credentials" in capsys.readouterr().out
