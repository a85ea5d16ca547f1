"""Fixtures shared by every kind of test: throw-away PKIs, the bridge's log lines, PSK keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from chardev_bridge.qemu import pki as pkimod
from tests.support.bridges import LOGGER
from tests.support.certs import PKI, make_pki
from tests.support.psk import KEY, OTHER_KEY, require_psk_route, write_keys


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


@pytest.fixture(scope="module")
def creds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `creds init` root (``ca/``, ``server/``, ``client/``) that a module's tests share and
    do not change; the client DN is the one QEMU's documentation uses."""
    root = tmp_path_factory.mktemp("pki") / "creds"
    pkimod.init_pki(root, client_dn="C=GB,O=QEMU Test,CN=client.example.com")
    return root


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the bridge's INFO lines and above."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


@pytest.fixture
def psk_route() -> str:
    """The PSK route of this Python; skip without one (fail under CI=true)."""
    return require_psk_route()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """``keys.psk`` with the user ``qemu`` (QEMU's default) and one more."""
    return write_keys(tmp_path / "psk", f"qemu:{KEY.hex()}\nalice:{OTHER_KEY.hex()}\n")


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


@pytest.fixture(autouse=True)
def no_unexpected_exception_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test in which the bridge logged an unexpected exception: every failure it
    knows of is one line of words, so an error line with a traceback, or one that says
    "unexpected", is a bug even when the test's own checks passed."""
    yield
    for record in caplog.get_records("call"):
        if record.levelno < logging.ERROR or not record.name.startswith(LOGGER):
            continue
        message = record.getMessage()
        assert record.exc_info is None, f"error logged with a traceback: {message}"
        assert ": unexpected " not in message, f"unexpected exception logged: {message}"
