"""TLS-PSK (QEMU ``tls-creds-psk``) without a handshake: keys.psk as QEMU reads it, what to install
when this Python has no PSK route, and the cipher suites a priority string leaves."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from chardev_bridge.qemu import psk
from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.priority import parse_priority
from chardev_bridge.tls.setup import Endpoint
from tests.support.psk import (
    KEY,
    OTHER_KEY,
    write_keys,
)


def test_load_psk_keys_reads_qemu_format(tmp_path: Path) -> None:
    directory = write_keys(
        tmp_path,
        f"qemu:{KEY.hex()}\r\n\nno colon here\nalice:{OTHER_KEY.hex().upper()}\n"
        f"qemu:{OTHER_KEY.hex()}\n",
    )
    # First line per user wins (QEMU and gnutls both stop at the first match); CRLF and
    # upper-case hex are accepted; a line without ':' is ignored as QEMU does.
    assert psk.load_psk_keys(directory) == {"qemu": KEY, "alice": OTHER_KEY}


def test_keys_file_readable_by_others_is_warned_about(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (keys_dir / "keys.psk").chmod(0o644)
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    psk.load_psk_keys(keys_dir)
    assert "is accessible by group or others (mode 0644): chmod 600 it" in caplog.text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("qemu:xyz\n", "line 1: the key for 'qemu' is not hexadecimal"),
        ("a:00\nqemu:abc\n", "line 2: the key for 'qemu' is not hexadecimal"),
        ("qemu:\n", "line 1: empty key for 'qemu'"),
        ("qemu:" + "00" * 257 + "\n", "has 257 bytes; OpenSSL takes at most 256"),
    ],
)
def test_bad_keys_file_names_the_line(tmp_path: Path, text: str, words: str) -> None:
    directory = write_keys(tmp_path, text)
    with pytest.raises(CredentialError, match=words):
        psk.load_psk_keys(directory)


@pytest.fixture
def no_psk_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """This Python as if it were 3.11 without sslpsk3."""
    monkeypatch.setattr(psk, "NATIVE_PSK", False)
    # None in sys.modules makes `import sslpsk3` raise ImportError.
    monkeypatch.setitem(sys.modules, "sslpsk3", None)


@pytest.mark.usefixtures("no_psk_route")
@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_without_psk_support_says_what_to_install(keys_dir: Path, endpoint: Endpoint) -> None:
    with pytest.raises(psk.PskUnavailable) as info:
        psk.build_psk_setup(keys_dir, endpoint=endpoint)
    message = str(info.value)
    assert "pip install 'chardev-bridge[psk]'" in message
    assert "Python 3.13" in message
    # A CredentialError: the CLI prints it as one start-up error line, no traceback.
    assert isinstance(info.value, CredentialError)


@pytest.mark.usefixtures("no_psk_route")
def test_missing_psk_support_is_reported_before_the_keys(tmp_path: Path) -> None:
    # Both wrong: the install hint comes first (it is needed whatever the keys).
    with pytest.raises(psk.PskUnavailable):
        psk.build_psk_setup(tmp_path, endpoint="client")


def test_default_suites_are_qemus_forward_secret_first() -> None:
    suites = psk.psk_ciphers(None).split(":")
    assert suites[0] == "ECDHE-PSK-CHACHA20-POLY1305"
    assert suites.index("DHE-PSK-AES256-GCM-SHA384") < suites.index("PSK-AES256-GCM-SHA384")
    assert not any("NULL" in s or "SHA256" in s.split("-")[-1] for s in suites if "CBC" in s)


def test_priority_restricts_psk_suites() -> None:
    suites = psk.psk_ciphers(parse_priority("SECURE256")).split(":")
    assert suites == [
        "ECDHE-PSK-CHACHA20-POLY1305",
        "DHE-PSK-AES256-GCM-SHA384",
        "DHE-PSK-CHACHA20-POLY1305",
        "DHE-PSK-AES256-CCM",
        "PSK-AES256-GCM-SHA384",
        "PSK-CHACHA20-POLY1305",
        "PSK-AES256-CCM",
    ]


def test_tls13_only_priority_on_old_python_client_is_refused(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, psk_route: str
) -> None:
    if psk.NATIVE_PSK:
        pytest.skip("Python 3.13+ does TLS 1.3 PSK as a client")
    with pytest.raises(psk.PskUnavailable, match=r"needs Python 3\.13"):
        psk.build_psk_setup(
            keys_dir, endpoint="client", priority=parse_priority("NORMAL:-VERS-TLS1.2")
        )
