"""`creds check`: QEMU 7.2's load-time checks, with its wording, compared with QEMU itself."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.credcheck import Finding, check_creds, guess_endpoint, has_errors
from tests.support.certs import DAY, NOW, craft, write_dir
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

SERVER_EKU = [ExtendedKeyUsageOID.SERVER_AUTH]
CLIENT_EKU = [ExtendedKeyUsageOID.CLIENT_AUTH]

CA = pki.make_ca("O=Tests,CN=Test CA")
OTHER_CA = pki.make_ca("O=Tests,CN=Other CA")
SAME_NAME_CA = pki.make_ca("O=Tests,CN=Test CA")  # same DN as CA, different key
GOOD_SERVER = pki.issue_leaf(CA, "server", hostnames=["localhost"], ips=["127.0.0.1"])
GOOD_CLIENT = pki.issue_leaf(CA, "client")


def errors(findings: list[Finding]) -> list[str]:
    return [f.message for f in findings if f.level == "error"]


def warnings(findings: list[Finding]) -> list[str]:
    return [f.message for f in findings if f.level == "warning"]


def weird_ca(**kwargs: object) -> pki.Issued:
    defaults: dict[str, object] = {
        "dn": "CN=Weird CA",
        "ca": True,
        "ku": ("key_cert_sign", "crl_sign"),
        "san": (),
    }
    defaults.update(kwargs)
    return craft(**defaults)  # type: ignore[arg-type]


def leaf_of(ca: pki.Issued) -> pki.Issued:
    return craft(issuer=ca, eku=SERVER_EKU)


# name -> (builder of a server dir, the QEMU error it must produce or None when QEMU loads it)
Case = Callable[[Path], Path]


def _server(leaf: pki.Issued, cas: list[x509.Certificate] | None = None, **kw: object) -> Case:
    return lambda d: write_dir(d, "server", leaf, cas or [CA.cert], **kw)  # type: ignore[arg-type]


def _without(directory: Path, name: str) -> Path:
    (directory / name).unlink()
    return directory


_EXPIRED_CA = weird_ca(not_before=NOW - 10 * DAY, not_after=NOW - DAY)
_CA_FALSE = weird_ca(ca=False)
_CA_NO_BC = weird_ca(ca=None)
_CA_NO_SIGN = weird_ca(ku=("crl_sign",))

CASES: dict[str, tuple[Case, str | None]] = {
    "good": (_server(GOOD_SERVER), None),
    "expired": (
        _server(craft(issuer=CA, eku=SERVER_EKU, not_before=NOW - 9 * DAY, not_after=NOW - DAY)),
        "The server certificate {d}/server-cert.pem has expired",
    ),
    "not-yet-active": (
        _server(craft(issuer=CA, eku=SERVER_EKU, not_before=NOW + DAY)),
        "The server certificate {d}/server-cert.pem is not yet active",
    ),
    "ca-expired": (
        _server(leaf_of(_EXPIRED_CA), [_EXPIRED_CA.cert]),
        "The CA certificate {d}/ca-cert.pem has expired",
    ),
    "ca-false": (
        _server(leaf_of(_CA_FALSE), [_CA_FALSE.cert]),
        "The certificate {d}/ca-cert.pem basic constraints do not show a CA",
    ),
    "ca-no-basic-constraints": (
        _server(leaf_of(_CA_NO_BC), [_CA_NO_BC.cert]),
        "The certificate {d}/ca-cert.pem is missing basic constraints for a CA",
    ),
    "ca-cannot-sign": (
        _server(leaf_of(_CA_NO_SIGN), [_CA_NO_SIGN.cert]),
        "Certificate {d}/ca-cert.pem usage does not permit certificate signing",
    ),
    "leaf-is-ca": (
        _server(craft(issuer=CA, ca=True, eku=SERVER_EKU)),
        "The certificate {d}/server-cert.pem basic constraints show a CA, "
        "but we need one for a server",
    ),
    "no-digital-signature": (
        _server(craft(issuer=CA, ku=("key_encipherment",), eku=SERVER_EKU)),
        "Certificate {d}/server-cert.pem usage does not permit digital signature",
    ),
    "client-purpose-on-server": (
        _server(craft(issuer=CA, eku=CLIENT_EKU)),
        "Certificate {d}/server-cert.pem purpose does not allow use with a TLS server",
    ),
    "unknown-issuer": (
        _server(GOOD_SERVER, [OTHER_CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    "same-name-other-key-ca": (
        _server(GOOD_SERVER, [SAME_NAME_CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    "key-mismatch": (
        _server(GOOD_SERVER, key=pki.generate_key()),
        "Cannot load certificate '{d}/server-cert.pem' & key '{d}/server-key.pem': "
        "The certificate and the given key do not match.",
    ),
    "encrypted-key-without-password": (
        _server(GOOD_SERVER, password=b"pw"),
        "Cannot load certificate '{d}/server-cert.pem' & key '{d}/server-key.pem': "
        "Decryption has failed.",
    ),
    "missing-server-key": (
        lambda d: _without(write_dir(d, "server", GOOD_SERVER, [CA.cert]), "server-key.pem"),
        "Unable to access credentials {d}/server-key.pem: No such file or directory",
    ),
    "missing-ca": (
        lambda d: _without(write_dir(d, "server", GOOD_SERVER, [CA.cert]), "ca-cert.pem"),
        "Unable to access credentials {d}/ca-cert.pem: No such file or directory",
    ),
    "seventeen-cas": (
        _server(GOOD_SERVER, [pki.make_ca().cert for _ in range(16)] + [CA.cert]),
        "Our own certificate {d}/server-cert.pem failed validation against {d}/ca-cert.pem: "
        "The certificate hasn't got a known issuer",
    ),
    # QEMU loads these; credcheck may warn but must not call them errors.
    "no-key-encipherment": (
        _server(craft(issuer=CA, ku=("digital_signature",), eku=SERVER_EKU)),
        None,
    ),
    "client-purpose-not-critical": (
        _server(craft(issuer=CA, eku=CLIENT_EKU, eku_critical=False)),
        None,
    ),
    "leaf-without-basic-constraints": (_server(craft(issuer=CA, ca=None, eku=SERVER_EKU)), None),
    "crl-out-of-date": (
        _server(GOOD_SERVER, crl=pki.make_crl(CA, [5], now=NOW - 40 * DAY, days=30)),
        None,
    ),
    "crl-from-other-ca": (_server(GOOD_SERVER, crl=pki.make_crl(OTHER_CA, [5])), None),
}


def expected_error(template: str, directory: Path) -> str:
    return template.format(d=directory)


@pytest.mark.parametrize("name", sorted(CASES))
def test_verdict_and_wording_match_qemu_source(tmp_path: Path, name: str) -> None:
    build, template = CASES[name]
    directory = build(tmp_path / name)
    found = errors(check_creds(directory, "server"))
    if template is None:
        assert found == []
    else:
        wanted = expected_error(template, directory)
        assert any(e.startswith(wanted) for e in found), (wanted, found)


@pytest.mark.interop
def test_verdicts_match_qemu_7_2_loading_the_same_dirs(tmp_path: Path) -> None:
    require_qemu()
    dirs = {name: build(tmp_path / name) for name, (build, _) in CASES.items()}

    def load(directory: Path) -> tuple[int, str]:
        return qemu_load(tls_creds_args("tls0", str(directory), "server"))

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(dirs, pool.map(load, dirs.values()), strict=True))
    for name, (status, stderr) in results.items():
        ours = errors(check_creds(dirs[name], "server"))
        qemu_said = qemu_errors(stderr)
        if status == 0:
            assert ours == [], f"{name}: QEMU loads it, credcheck says {ours}"
        else:
            assert qemu_said, f"{name}: QEMU exited {status} without a message: {stderr}"
            # QEMU stops at its first problem; credcheck must report that one, worded alike.
            assert any(e.startswith(qemu_said[0]) for e in ours), (name, qemu_said, ours)


def _client(leaf: pki.Issued | None, cas: list[x509.Certificate] | None = None) -> Case:
    return lambda d: write_dir(d, "client", leaf, cas or [CA.cert])


# The client endpoint: QEMU's checks differ (the certificate is optional, the purpose is
# clientAuth). Compared with QEMU 7.2 loading each dir as endpoint=client.
CLIENT_CASES: dict[str, Case] = {
    "good": _client(GOOD_CLIENT),
    "no-certificate": _client(None),
    "expired": _client(
        craft(issuer=CA, eku=CLIENT_EKU, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    ),
    "server-purpose-on-client": _client(craft(issuer=CA, eku=SERVER_EKU)),
    "unknown-issuer": _client(GOOD_CLIENT, [OTHER_CA.cert]),
    "leaf-is-ca": _client(craft(issuer=CA, ca=True, eku=CLIENT_EKU)),
    "missing-key": lambda d: _without(
        write_dir(d, "client", GOOD_CLIENT, [CA.cert]), "client-key.pem"
    ),
    "missing-ca": lambda d: _without(write_dir(d, "client", GOOD_CLIENT, [CA.cert]), "ca-cert.pem"),
}


@pytest.mark.interop
def test_client_endpoint_verdicts_match_qemu_7_2(tmp_path: Path) -> None:
    require_qemu()
    dirs = {name: build(tmp_path / name) for name, build in CLIENT_CASES.items()}

    def load(directory: Path) -> tuple[int, str]:
        return qemu_load(tls_creds_args("tls0", str(directory), "client"))

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(dirs, pool.map(load, dirs.values()), strict=True))
    verdicts = {}
    for name, (status, stderr) in results.items():
        ours = errors(check_creds(dirs[name], "client"))
        qemu_said = qemu_errors(stderr)
        verdicts[name] = status == 0
        if status == 0:
            assert ours == [], f"{name}: QEMU loads it, credcheck says {ours}"
        else:
            assert qemu_said, f"{name}: QEMU exited {status} without a message: {stderr}"
            assert any(e.startswith(qemu_said[0]) for e in ours), (name, qemu_said, ours)
    # Both kinds occur, so the comparison means something.
    assert verdicts["good"] and not verdicts["expired"] and not verdicts["missing-ca"]


def test_good_dirs_have_info_lines_and_no_warnings(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert])
    findings = check_creds(directory, "server")
    assert not has_errors(findings) and warnings(findings) == []
    info = [f.message for f in findings if f.level == "info"]
    names = "DNS:localhost, IP:127.0.0.1"
    assert f"The server certificate {directory}/server-cert.pem is valid for {names}" in info
    assert any("DN 'CN=localhost' (as tls-authz matches it)" in m for m in info)
    assert str(Finding("info", "x")) == "info: x"


def test_rejects_expired_client_cert(tmp_path: Path) -> None:
    leaf = craft(issuer=CA, eku=CLIENT_EKU, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    directory = write_dir(tmp_path / "c", "client", leaf, [CA.cert])
    assert errors(check_creds(directory, "client")) == [
        f"The client certificate {directory}/client-cert.pem has expired"
    ]


def test_rejects_server_purpose_on_client_cert(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "c", "client", craft(issuer=CA, eku=SERVER_EKU), [CA.cert])
    assert errors(check_creds(directory, "client")) == [
        f"Certificate {directory}/client-cert.pem purpose does not allow use with a TLS client"
    ]


def test_client_endpoint_needs_only_the_ca(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "c", "client", None, [CA.cert])
    assert not has_errors(check_creds(directory, "client"))
    assert guess_endpoint(directory) is None
    (directory / "client-cert.pem").write_bytes(pki.cert_pem(GOOD_CLIENT.cert))
    assert guess_endpoint(directory) == "client"
    assert any("no partner" in w for w in warnings(check_creds(directory, "client")))


def test_accepts_trustme_credentials(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", common_name="localhost")
    directory = tmp_path / "t"
    directory.mkdir()
    ca.cert_pem.write_to_path(str(directory / "ca-cert.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "server-cert.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "server-key.pem"))
    (directory / "server-key.pem").chmod(0o600)
    assert errors(check_creds(directory, "server")) == []


def test_encrypted_key_loads_with_its_password_only(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert], password=b"pw")
    assert errors(check_creds(directory, "server", password=b"pw")) == []
    (wrong,) = errors(check_creds(directory, "server", password=b"nope"))
    assert "Decryption has failed" in wrong
    (missing,) = errors(check_creds(directory, "server"))
    assert "no password was given" in missing


def test_warns_about_key_readable_by_others(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert])
    (directory / "server-key.pem").chmod(0o644)
    (warning,) = warnings(check_creds(directory, "server"))
    assert "accessible by group or others (mode 0644)" in warning


def test_warns_about_certificate_expiring_within_30_days(tmp_path: Path) -> None:
    leaf = craft(issuer=CA, eku=SERVER_EKU, not_after=NOW + 10 * DAY)
    directory = write_dir(tmp_path / "s", "server", leaf, [CA.cert])
    (warning,) = warnings(check_creds(directory, "server"))
    assert warning.startswith(
        f"The server certificate {directory}/server-cert.pem expires in 9 days"
    )
    later = check_creds(directory, "server", now=NOW + 11 * DAY)
    assert errors(later) == [f"The server certificate {directory}/server-cert.pem has expired"]


def test_warns_about_server_cert_without_names(tmp_path: Path) -> None:
    directory = write_dir(
        tmp_path / "s", "server", craft(issuer=CA, eku=SERVER_EKU, san=()), [CA.cert]
    )
    (warning,) = warnings(check_creds(directory, "server"))
    assert "has no subjectAltName" in warning


@pytest.mark.parametrize(
    ("content", "wanted"),
    [
        (b"garbage\n", "Cannot load CRL '{d}/ca-crl.pem': "),
        (b"", "Cannot load CRL '{d}/ca-crl.pem': "),
    ],
)
def test_rejects_unparsable_crl(tmp_path: Path, content: bytes, wanted: str) -> None:
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert])
    (directory / "ca-crl.pem").write_bytes(content)
    (found,) = errors(check_creds(directory, "server"))
    assert found.startswith(wanted.format(d=directory))


def test_warns_about_stale_or_foreign_crl_and_lists_revoked(tmp_path: Path) -> None:
    stale = pki.make_crl(CA, [0xBEEF], now=NOW - 40 * DAY, days=30)
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert], crl=stale)
    findings = check_creds(directory, "server")
    assert any("is out of date" in w for w in warnings(findings))
    assert any(f.message.endswith("revokes 1 certificate(s): beef") for f in findings)
    future = pki.make_crl(CA, [], now=NOW + 2 * DAY)
    write_dir(directory, "server", GOOD_SERVER, [CA.cert], crl=future)
    assert any("is not valid yet" in w for w in warnings(check_creds(directory, "server")))
    foreign = pki.make_crl(OTHER_CA, [])
    write_dir(directory, "server", GOOD_SERVER, [CA.cert], crl=foreign)
    assert any("revokes nothing" in w for w in warnings(check_creds(directory, "server")))


def test_crl_is_ignored_for_a_client_endpoint(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "c", "client", GOOD_CLIENT, [CA.cert])
    (directory / "ca-crl.pem").write_bytes(b"garbage")
    findings = check_creds(directory, "client")
    assert not has_errors(findings)
    assert any("not loaded for a client endpoint" in f.message for f in findings)


def test_rejects_x942_dh_params_gnutls_cannot_read(tmp_path: Path) -> None:
    directory = write_dir(tmp_path / "s", "server", GOOD_SERVER, [CA.cert])
    (directory / "dh-params.pem").write_bytes(b"-----BEGIN X9.42 DH PARAMETERS-----\n")
    (found,) = errors(check_creds(directory, "server"))
    assert found.startswith(f"Unable to load DH parameters from {directory}/dh-params.pem")
    (directory / "dh-params.pem").unlink()
    assert any(
        "No " in f.message and "dh-params.pem" in f.message
        for f in check_creds(directory, "server")
    )


# --- what QEMU does with a CRL at connection time (backs the CRL warnings above) -----------


def _client_reaches_qmp(server_dir: Path, client_dir: Path) -> bool:
    with Qemu(qemu_tls_server_args(server_dir)) as qemu:
        proc = subprocess.run(
            gnutls_cli_command(client_dir, qemu.port("mon0")),
            env=BASE_ENV,
            input=b"",
            capture_output=True,
            timeout=10,
        )
    return b'{"QMP"' in proc.stdout


@pytest.mark.interop
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
