"""Local ends: where the bridge's bytes come from and go to on this machine.

``--local SPEC`` is parsed here; each kind lives in its own module.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from chardev_bridge.common.hostport import format_hostport

if TYPE_CHECKING:
    from chardev_bridge.local.base import LocalEnd

__all__ = ["LocalSpec", "open_local_end", "parse_hostport", "parse_local_spec"]

LocalKind = Literal["pty", "tty", "unix", "unix-listen", "tcp", "tcp-listen", "stdio"]
LOCAL_KINDS: tuple[str, ...] = get_args(LocalKind)


class LocalSpecError(ValueError):
    """A ``--local`` value that cannot be understood; the message says why."""


@dataclass(frozen=True)
class LocalSpec:
    """A parsed ``--local`` value."""

    kind: LocalKind
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind in ("pty", "stdio"):
            return self.kind
        if self.kind in ("tcp", "tcp-listen"):
            return f"{self.kind}:{format_hostport(self.host, self.port)}"
        return f"{self.kind}:{self.path}"


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals) into host and port."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise LocalSpecError(f"{text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise LocalSpecError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise LocalSpecError(f"{text!r}: write IPv6 addresses in brackets, [::1]:PORT")
    if not host:
        raise LocalSpecError(f"{text!r}: the host is empty")
    if "[" in host or "]" in host:
        raise LocalSpecError(f"{text!r}: brackets only around a whole IPv6 address")
    # isascii: str.isdigit() also accepts digits such as '²' that int() refuses.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise LocalSpecError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_local_spec(text: str) -> LocalSpec:
    """Parse a ``--local`` value.

    ``pty``, ``stdio``, ``tty:PATH``, ``unix[-listen]:PATH`` or ``tcp[-listen]:HOST:PORT``.
    """
    kind, sep, arg = text.partition(":")
    if kind not in LOCAL_KINDS:
        if "/" in text:
            raise LocalSpecError(f"{text!r} is a path: {_path_kind_hint(text)}")
        raise LocalSpecError(
            f"unknown local end {text!r}; expected one of {', '.join(LOCAL_KINDS)}"
        )
    if kind in ("pty", "stdio"):
        if sep:
            raise LocalSpecError(f"{text!r}: {kind} takes no argument")
        return LocalSpec(kind)  # type: ignore[arg-type]
    if not arg:
        what = "HOST:PORT" if kind.startswith("tcp") else "PATH"
        raise LocalSpecError(f"{text!r}: expected {kind}:{what}")
    if kind in ("tcp", "tcp-listen"):
        host, port = parse_hostport(arg)
        if kind == "tcp" and port == 0:
            raise LocalSpecError(f"{text!r}: cannot connect to port 0")
        return LocalSpec(kind, host=host, port=port)  # type: ignore[arg-type]
    return LocalSpec(kind, path=arg)  # type: ignore[arg-type]


def _path_kind_hint(path: str) -> str:
    """Which ``--local`` spelling a bare path probably meant, from what the path is."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        mode = 0
    # The error stays one line whatever the path holds.
    path = path if path.isprintable() else path.encode("unicode_escape").decode("ascii")
    if stat.S_ISSOCK(mode):
        return f"for this unix socket write --local unix:{path}"
    if stat.S_ISCHR(mode) or path.startswith("/dev/"):
        return f"for this terminal device write --local tty:{path}"
    return f"write --local tty:{path} for a terminal device, unix:{path} for a unix socket"


def open_local_end(spec: LocalSpec, *, link: Path | None = None) -> LocalEnd:
    """Make the (not yet started) local end for ``spec``. Only its own kind's module is
    imported: an idle bridge keeps in memory what it uses."""
    if link is not None and spec.kind != "pty":
        raise LocalSpecError("--link only applies to --local pty")
    match spec.kind:
        case "pty":
            from chardev_bridge.local.pty import PtyEnd

            return PtyEnd(link)
        case "tty":
            from chardev_bridge.local.tty import TtyEnd

            return TtyEnd(spec.path)
        case "stdio":
            from chardev_bridge.local.stdio import StdioEnd

            return StdioEnd()
        case "tcp" | "tcp-listen" | "unix" | "unix-listen":
            from chardev_bridge.local import sockets

            if spec.kind == "tcp":
                return sockets.TcpConnectEnd(spec.host, spec.port)
            if spec.kind == "tcp-listen":
                return sockets.TcpListenEnd(spec.host, spec.port)
            if spec.kind == "unix":
                return sockets.UnixConnectEnd(spec.path)
            return sockets.UnixListenEnd(spec.path)
    raise AssertionError(spec.kind)
