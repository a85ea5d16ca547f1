"""chardev-bridge: carry a character device's byte stream to a remote peer over TCP/TLS.

The library API: :func:`run_bridge` runs one bridge described by a :class:`BridgeConfig`
(its local end a :class:`LocalSpec`) and reports :class:`BridgeReady` once it is up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chardev_bridge._version import __version__

if TYPE_CHECKING:
    from chardev_bridge.bridge.config import BridgeConfig, ConfigError, InvalidConfig
    from chardev_bridge.bridge.counters import BridgeCounters
    from chardev_bridge.bridge.run import BridgeReady, run_bridge
    from chardev_bridge.local import LocalSpec

# Loaded on first use: importing one module of the package (a tool, a test's child
# process) must not pay for the whole bridge.
_API = {
    "BridgeConfig": "chardev_bridge.bridge.config",
    "ConfigError": "chardev_bridge.bridge.config",
    "InvalidConfig": "chardev_bridge.bridge.config",
    "BridgeCounters": "chardev_bridge.bridge.counters",
    "BridgeReady": "chardev_bridge.bridge.run",
    "run_bridge": "chardev_bridge.bridge.run",
    "LocalSpec": "chardev_bridge.local",
}

__all__ = [
    "BridgeConfig",
    "BridgeCounters",
    "BridgeReady",
    "ConfigError",
    "InvalidConfig",
    "LocalSpec",
    "__version__",
    "run_bridge",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'chardev_bridge' has no attribute {name!r}")
