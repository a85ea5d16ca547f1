"""What the roles of one bridge (serving, connecting, running sessions) share."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.bridge.counters import BridgeCounters
from chardev_bridge.bridge.line import LocalLine
from chardev_bridge.bridge.session import SessionRunner
from chardev_bridge.bridge.slots import SessionSlots
from chardev_bridge.tls.setup import TLSProvider


@dataclass
class BridgeParts:
    """One bridge's configuration, TLS provider, line, slots, session runner and counters."""

    cfg: BridgeConfig
    tls: TLSProvider
    line: LocalLine
    slots: SessionSlots
    runner: SessionRunner
    counters: BridgeCounters
    #: Cancelled to end the bridge.
    main: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def stopping(self) -> bool:
        """Whether the bridge is ending: no new session may begin."""
        return self.runner.stopping

    def stop_accepting(self) -> None:
        """No new sessions from now on; the ones in progress go on."""
        self.runner.stopping = True

    async def end_after_local(self) -> None:
        """The local end has ended for good: stop, once it has read its scrollback."""
        self.stop_accepting()
        await self.line.deliver_scrollback()
        self.main.cancel()
