"""The command line's start-up order: options parse without the TLS stack, the credential
checks start in a child at once, and the bridge's TLS setup collects what that child found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import chardev_bridge
from chardev_bridge.bridge.options import build_parser, config_from_args
from chardev_bridge.qemu._isolated import ChildCheck, start_checks
from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.setup import build_tls_setup
from tests.support.certs import PKI


def test_parsing_the_options_loads_neither_trio_nor_ssl_nor_cryptography() -> None:
    src = str(Path(chardev_bridge.__file__).parent.parent)
    code = (
        "import sys; from chardev_bridge.cli import main;"
        "from chardev_bridge.bridge.options import build_parser, config_from_args;"
        "config_from_args(build_parser().parse_args(['--tls-creds', 'd', '--local', 'pty']));"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'ssl', 'cryptography'}))"
    )
    env = {**os.environ, "PYTHONPATH": src}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout == "[]\n", run.stderr


def test_started_checks_give_the_findings_and_the_certificate_expiry(pki: PKI) -> None:
    settings = config_from_args(
        build_parser().parse_args(["--server", "--tls-creds", str(pki.server_dir)])
    ).tls_settings
    started = start_checks(settings)
    assert started is not None
    result = started.result()
    assert not [f for f in result.findings if f.level == "error"]
    cert = x509.load_pem_x509_certificate((pki.server_dir / "server-cert.pem").read_bytes())
    assert result.cert_not_after == cert.not_valid_after_utc.timestamp()
    setup = build_tls_setup(settings, started)
    assert setup is not None and setup.cert_not_after == result.cert_not_after


def test_started_checks_of_a_broken_directory_refuse_it_in_qemus_words(pki: PKI) -> None:
    (pki.server_dir / "server-key.pem").write_text("not a key")
    settings = config_from_args(
        build_parser().parse_args(["--server", "--tls-creds", str(pki.server_dir)])
    ).tls_settings
    with pytest.raises(CredentialError, match=r"server-key\.pem"):
        build_tls_setup(settings, start_checks(settings))


def test_checks_started_for_another_password_are_not_taken(pki: PKI) -> None:
    settings = config_from_args(
        build_parser().parse_args(["--tls-creds", str(pki.client_dir), "--host", "h"])
    ).tls_settings
    stale = ChildCheck(pki.client_dir, "client", password=b"another")
    setup = build_tls_setup(settings, stale)
    assert setup is not None
    with pytest.raises(ChildProcessError):  # reaped all the same: no zombie is left behind
        os.waitpid(stale.pid, os.WNOHANG)


def test_nothing_is_started_without_x509_credentials(tmp_path: Path) -> None:
    plain = config_from_args(build_parser().parse_args(["--host", "h"])).tls_settings
    assert start_checks(plain) is None
    psk = config_from_args(
        build_parser().parse_args(["--host", "h", "--tls-creds-psk", str(tmp_path)])
    ).tls_settings
    assert start_checks(psk) is None
