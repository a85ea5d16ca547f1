"""``--logfile``: a copy of the traffic, as QEMU's chardev ``logfile``/``logappend`` keep it.

The writer is :class:`chardev_bridge.consolelog.ConsoleLog` (a worker thread, so that logging
never stalls the data); this module keeps the names its callers import.
"""

from __future__ import annotations

from chardev_bridge.consolelog import ConsoleLog as TrafficLog
from chardev_bridge.consolelog import hex_lines

__all__ = ["TrafficLog", "hex_lines"]
