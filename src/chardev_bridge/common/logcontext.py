"""Which bridge a log line is about, carried in a context variable.

trio copies the context into every child task, so a bridge sets its name once, at its
start, and every line logged by it, its sessions and its local end carries the name.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

#: The name of the bridge the current task works for (None: the process, or a lone bridge).
bridge_name: ContextVar[str | None] = ContextVar("chardev_bridge_name", default=None)

#: The format every log line of the program has: ``chardev-bridge[vm1]: connected to …``.
LOG_FORMAT = "%(asctime)s chardev-bridge%(bridge)s: %(message)s"


class BridgeNameFilter(logging.Filter):
    """Adds ``bridge`` (``[NAME]``, or nothing) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.bridge``; never drops a record."""
        name = bridge_name.get()
        record.bridge = f"[{name}]" if name else ""
        return True


def configure_logging(level: int) -> None:
    """Log to stderr with the program's format, each line naming its bridge."""
    handler = logging.StreamHandler()
    handler.addFilter(BridgeNameFilter())
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=[handler])
