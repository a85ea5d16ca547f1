"""TLS-PSK (QEMU ``tls-creds-psk``) for tests: keys files, and our side of a PSK handshake.

The PSK route is Python 3.13's ``ssl`` or, before that, the optional ``sslpsk3`` package.
Without it the PSK tests skip, except under ``CI=true``, where they fail: CI installs the
``psk`` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.remote import RemoteSession, start_session
from chardev_bridge.qemu import psk
from chardev_bridge.tls.setup import TLSSetup

KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef")
OTHER_KEY = bytes(range(32))
# TLS 1.3 external PSK as a client needs Python 3.13's ssl (see chardev_bridge.qemu.psk).
CLIENT_VERSION = "TLSv1.3" if psk.NATIVE_PSK else "TLSv1.2"
TIMEOUT = 10
KEY_HINT = "probably not the same PSK key on both sides (compare keys.psk)"


def require_psk_route() -> str:
    """The PSK route of this Python; skip without one (fail under CI=true)."""
    try:
        return psk.check_psk_available()
    except psk.PskUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so the psk extra must be installed: {exc}", pytrace=False)
        pytest.skip(str(exc))


def write_keys(directory: Path, text: str) -> Path:
    """A credentials dir with ``keys.psk`` = ``text``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "keys.psk").write_text(text)
    (directory / "keys.psk").chmod(0o600)
    return directory


async def connect(port: int, setup: TLSSetup) -> RemoteSession:
    """Our side as TCP client of 127.0.0.1:port, handshake done."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return await start_session(tcp, setup, handshake_timeout=TIMEOUT)


async def accept_one(listener: trio.SocketListener, setup: TLSSetup) -> RemoteSession:
    """Accept one TCP connection and run our TLS server handshake on it."""
    with trio.fail_after(TIMEOUT):
        tcp = await listener.accept()
    assert isinstance(tcp, trio.SocketStream)
    return await start_session(tcp, setup, handshake_timeout=TIMEOUT)


async def open_listener() -> tuple[trio.SocketListener, int]:
    """A TCP listener on 127.0.0.1 with a kernel-chosen port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    return listener, listener.socket.getsockname()[1]
