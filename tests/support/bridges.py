"""Bridges run inside a test (``run_bridge`` in the test's own trio loop), and their log."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.options import build_parser, config_from_args
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from tests.support.net import HOST, client_context, tls_connect
from tests.support.streams import open_pty, read_exactly, sha256

LOGGER = "chardev_bridge"


@asynccontextmanager
async def running_bridge(cfg: BridgeConfig) -> AsyncIterator[BridgeReady]:
    """Run ``cfg`` in the background for the ``async with`` body; cancelled at its end."""
    async with trio.open_nursery() as nursery:
        ready: BridgeReady = await nursery.start(run_bridge, cfg)
        yield ready
        nursery.cancel_scope.cancel()


def listening_config(creds: Path | None = None, **kw: Any) -> BridgeConfig:
    """A bridge listening on 127.0.0.1 (kernel-chosen port) with a pty local end unless
    ``local`` says otherwise; TLS with the credentials dir ``creds`` if given."""
    return BridgeConfig(listen=True, host=HOST, port=0, tls_creds=creds, **kw)


def connecting_config(port: int, creds: Path | None = None, **kw: Any) -> BridgeConfig:
    """A bridge connecting to 127.0.0.1:``port`` with a pty local end unless ``local`` says
    otherwise; TLS with the credentials dir ``creds`` if given."""
    return BridgeConfig(host=HOST, port=port, tls_creds=creds, **kw)


def cli_config(*argv: str) -> BridgeConfig:
    """The configuration the command line ``chardev-bridge ARGV`` makes."""
    return config_from_args(build_parser().parse_args(list(argv)))


async def attach_viewer(path: Path, *, rcvbuf: int | None = None) -> trio.SocketStream:
    """A viewer on the unix viewer socket ``path`` (``rcvbuf``: a small receive buffer, so
    that a viewer that never reads is soon behind)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(str(path))
    return trio.SocketStream(sock)


async def one_session(
    cfg: BridgeConfig, client_creds: Path, to_remote: bytes, to_local: bytes
) -> None:
    """Run ``cfg`` (a listening TLS bridge with a pty) for one session: a client with the
    credentials ``client_creds`` sends ``to_local`` while the pty application sends
    ``to_remote``; each arrives intact."""
    async with running_bridge(cfg) as ready:
        assert ready.pty_path is not None
        conn, _ = await tls_connect(ready.ports[0], client_context(client_creds))
        async with open_pty(ready.pty_path) as app, trio.open_nursery() as nursery:
            nursery.start_soon(app.send_all, to_remote)
            nursery.start_soon(conn.send_all, to_local)
            assert sha256(await read_exactly(conn, len(to_remote))) == sha256(to_remote)
            assert sha256(await read_exactly(app, len(to_local))) == sha256(to_local)
        await conn.aclose()


# -- the log of in-process bridges -------------------------------------------------------------


# A line of the console log (--log-format lines): its timestamp, then the text.
CONSOLE_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00) (.*)$")


def capture_bridge_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the bridge's INFO lines and above."""
    caplog.set_level(logging.INFO, logger=LOGGER)


def log_lines(caplog: pytest.LogCaptureFixture, pattern: str | None = None) -> list[str]:
    """Messages the bridge logged so far; with ``pattern``, only those matching that regex."""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER)]
    if pattern is None:
        return lines
    regex = re.compile(pattern)
    return [line for line in lines if regex.search(line)]


async def wait_log(
    caplog: pytest.LogCaptureFixture, pattern: str, *, count: int = 1, timeout: float = 10
) -> list[str]:
    """Wait until ``count`` bridge messages match the regex ``pattern``; returns them all."""
    try:
        with trio.fail_after(timeout):
            while len(hits := log_lines(caplog, pattern)) < count:
                await trio.sleep(0.01)
    except trio.TooSlowError:
        logged = "\n  ".join(log_lines(caplog))
        raise AssertionError(
            f"no {count} log lines matching {pattern!r} in {timeout}s; logged:\n  {logged}"
        ) from None
    return hits
