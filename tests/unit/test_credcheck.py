"""`creds check`: QEMU 7.2's load-time checks with its wording, on crafted credential dirs
(tests/support/credcases.py); interop/test_creds_with_qemu.py holds QEMU's own verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.credcheck import check_creds
from chardev_bridge.qemu.credfiles import Finding, guess_endpoint, has_errors
from tests.support.certs import DAY, NOW, craft, write_dir
from tests.support.credcases import (
    CA,
    CASES,
    CLIENT_EKU,
    GOOD_CLIENT,
    GOOD_SERVER,
    OTHER_CA,
    SERVER_EKU,
    errors,
    warnings,
)


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
