"""What a bridge shares besides its local end: the console log and the viewers.

:func:`open_sharing` opens both at start (their failures are start-up errors) and yields the
:class:`Taps` the sessions call with each chunk, or None when neither is configured (the data
path then calls nothing).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from chardev_bridge.share.config import TrafficLogConfig, ViewersConfig
from chardev_bridge.share.stats import ShareCounters

if TYPE_CHECKING:
    from chardev_bridge.share.consolelog import ConsoleLog
    from chardev_bridge.share.viewers import ViewerHub

log = logging.getLogger("chardev_bridge")


class Taps:
    """The data path's taps: each chunk to the console log and to the viewers. Both only
    queue the bytes, so a tap never waits."""

    def __init__(self, console_log: ConsoleLog | None, viewers: ViewerHub | None) -> None:
        self.console_log = console_log
        self.viewers = viewers

    def to_remote(self, data: bytes | bytearray) -> None:
        """Bytes the local end sent to the remote: the log only (viewers never see them)."""
        if self.console_log is not None:
            self.console_log.to_remote(data)

    def to_local(self, data: bytes | bytearray) -> None:
        """Bytes the remote sent: the log and the viewers."""
        if self.console_log is not None:
            self.console_log.to_local(data)
        if self.viewers is not None:
            self.viewers.feed(data)

    async def run(self) -> None:
        """Serve viewers and reopen the log on SIGUSR1, until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.viewers is not None:
                nursery.start_soon(self.viewers.serve)
            if self.console_log is not None:
                nursery.start_soon(_reopen_logs_on_sigusr1)


async def _reopen_logs_on_sigusr1() -> None:
    """SIGUSR1 reopens every log file by its name (an external logrotate moved it away)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; an embedder handles them itself
    from chardev_bridge.share.consolelog import reopen_all

    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.info("SIGUSR1: reopening %d log file(s)", reopen_all())


@asynccontextmanager
async def open_sharing(
    traffic_log: TrafficLogConfig | None,
    viewers_cfg: ViewersConfig | None,
    counters: ShareCounters,
) -> AsyncIterator[Taps | None]:
    """Open the console log and the viewer socket (either may be absent)."""
    # Imported only when configured: a bridge that shares nothing never loads them.
    console_log: ConsoleLog | None = None
    viewers: ViewerHub | None = None
    if traffic_log is not None:
        from chardev_bridge.share.consolelog import ConsoleLog

        console_log = ConsoleLog(traffic_log, counters)
    if viewers_cfg is not None:
        from chardev_bridge.share.viewers import ViewerHub

        viewers = ViewerHub(viewers_cfg, counters)
    try:
        if viewers is not None:
            await viewers.start()
        yield Taps(console_log, viewers) if console_log or viewers else None
    finally:
        if viewers is not None:
            with trio.CancelScope(shield=True):
                await viewers.aclose()
        if console_log is not None:
            # Joining the writer thread may wait on a slow disk: not on the event loop.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(console_log.close)
