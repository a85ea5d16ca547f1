"""Fixtures of the interop tests."""

from __future__ import annotations

import pytest

from chardev_bridge.qemu import pki as pkimod
from tests.support.certs import PKI


@pytest.fixture
def qemu_pki(pki: PKI) -> PKI:
    """The test PKI with DH parameters in the server dir: QEMU starts without generating them."""
    (pki.server_dir / "dh-params.pem").write_bytes(pkimod.dh_params_pem())
    return pki
