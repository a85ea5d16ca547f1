"""Helpers to run bridges inside a test and talk through their local ends."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.run import BridgeReady, run_bridge
from chardev_bridge.local.termios_raw import make_raw


@asynccontextmanager
async def running_bridge(cfg: BridgeConfig) -> AsyncIterator[BridgeReady]:
    """Run ``cfg`` in the background for the ``async with`` body; cancelled at its end."""
    async with trio.open_nursery() as nursery:
        ready: BridgeReady = await nursery.start(run_bridge, cfg)
        yield ready
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_pty_client(path: str) -> AsyncIterator[trio.lowlevel.FdStream]:
    """Open a pty slave as an application would (raw), as a trio stream."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    make_raw(fd)
    stream = trio.lowlevel.FdStream(fd)
    try:
        yield stream
    finally:
        await stream.aclose()


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, timeout: float = 10) -> bytes:
    """Read until ``marker`` appears; everything read so far is returned."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while marker not in buf:
            chunk = await stream.receive_some()
            if not chunk:
                raise EOFError(f"EOF before {marker!r}; got {bytes(buf)!r}")
            buf += chunk
    return bytes(buf)


async def read_exactly(stream: trio.abc.ReceiveStream, size: int, timeout: float = 30) -> bytes:
    """Read ``size`` bytes (fails on EOF or timeout)."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while len(buf) < size:
            chunk = await stream.receive_some(size - len(buf))
            if not chunk:
                raise EOFError(f"EOF after {len(buf)} of {size} bytes")
            buf += chunk
    return bytes(buf)
