"""Shared fixtures: throw-away PKIs from trustme, laid out as QEMU credential directories."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class PKI:
    """A CA with a server dir and a client dir in QEMU's tls-creds-x509 layout."""

    ca: trustme.CA
    server_dir: Path
    client_dir: Path


def write_creds_dir(
    directory: Path, ca: trustme.CA, endpoint: str, cert: trustme.LeafCert | None
) -> Path:
    """Write ``ca-cert.pem`` plus ``{endpoint}-cert.pem``/``-key.pem`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(directory / "ca-cert.pem"))
    if cert is not None:
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        (directory / f"{endpoint}-cert.pem").write_bytes(chain)
        key = directory / f"{endpoint}-key.pem"
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    return directory


def make_pki(
    root: Path,
    *,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    client_cn: str = "client.example.com",
) -> PKI:
    """A fresh CA, a server certificate for ``server_names`` and a client certificate."""
    ca = trustme.CA(organization_name="chardev-bridge tests")
    server = ca.issue_cert(*server_names, common_name="server.example.com")
    client = ca.issue_cert(
        "client.example.com", common_name=client_cn, organization_unit_name="clients"
    )
    return PKI(
        ca=ca,
        server_dir=write_creds_dir(root / "server", ca, "server", server),
        client_dir=write_creds_dir(root / "client", ca, "client", client),
    )


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """A CA with server and client credential directories."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def make_other_pki(tmp_path: Path) -> Callable[[str], PKI]:
    """Factory for further, unrelated PKIs (an unknown CA)."""

    def factory(name: str) -> PKI:
        return make_pki(tmp_path / name)

    return factory


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Under CI=true a skip is a failure: every peer a test needs must be installed there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"
