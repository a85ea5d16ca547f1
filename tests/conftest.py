"""Fixtures shared by every kind of test: throw-away PKIs and the bridge's log lines."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from tests.support.bridges import LOGGER
from tests.support.certs import PKI, make_pki


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


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the bridge's INFO lines and above."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


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
