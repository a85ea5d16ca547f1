"""What a bridge shares, as configured: the viewers' socket and the console log.

Kept apart from :mod:`chardev_bridge.share.viewers` and :mod:`chardev_bridge.share.consolelog`
so that a bridge configured with neither never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chardev_bridge.common.hostport import format_hostport

DEFAULT_MAX_VIEWERS = 16
DEFAULT_REPLAY = 16 * 1024
DEFAULT_VIEWERS_MODE = 0o600
#: How far behind a viewer may fall before it is disconnected.
VIEWER_QUEUE_MAX = 1 << 20
#: Loopback: viewers are local people unless the spec names another address.
DEFAULT_VIEWERS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ViewersConfig:
    """Where viewers attach and how many bytes they get; see ``--viewers`` in ``--help``."""

    kind: Literal["unix-listen", "tcp-listen"]
    path: str | None = None
    host: str = DEFAULT_VIEWERS_HOST
    port: int = 0
    max_viewers: int = DEFAULT_MAX_VIEWERS
    # The unix socket file's mode: who may connect (write permission) may watch.
    mode: int = DEFAULT_VIEWERS_MODE
    replay: int = DEFAULT_REPLAY
    queue_max: int = VIEWER_QUEUE_MAX

    def describe(self) -> str:
        """``unix-listen PATH`` or ``tcp-listen HOST:PORT``."""
        if self.kind == "unix-listen":
            return f"unix-listen {self.path}"
        return f"tcp-listen {format_hostport(self.host, self.port)}"


def parse_viewers_spec(text: str) -> ViewersConfig:
    """``unix-listen:PATH``, ``tcp-listen:HOST:PORT`` or ``tcp-listen:PORT`` (loopback)."""
    from chardev_bridge.local import parse_hostport

    kind, _, arg = text.partition(":")
    if kind == "unix-listen" and arg:
        return ViewersConfig("unix-listen", path=arg)
    if kind == "tcp-listen" and arg:
        if arg.isascii() and arg.isdigit():
            arg = f"{DEFAULT_VIEWERS_HOST}:{arg}"
        host, port = parse_hostport(arg)
        return ViewersConfig("tcp-listen", host=host, port=port)
    raise ValueError(f"{text!r}: expected unix-listen:PATH or tcp-listen:[HOST:]PORT")


@dataclass(frozen=True)
class TrafficLogConfig:
    """QEMU's ``logfile``/``logappend``, plus direction and format choices for debugging."""

    path: Path
    append: bool = False
    # "to-remote": what the bridge sends to the remote (QEMU's meaning); "from-remote": what
    # the remote sent (a VM's console output); "both": both ways.
    direction: Literal["to-remote", "from-remote", "both"] = "to-remote"
    # "raw": the bytes as they are; "hex": timestamped hex dump lines; "lines": one
    # timestamped, escaped log line per console line.
    format: Literal["raw", "hex", "lines"] = "raw"
    # Rotate FILE -> FILE.1 ... FILE.<backups> before it would grow past this (None: never).
    max_bytes: int | None = None
    backups: int = 5
