"""Local bytes held while no remote session is up, and how old they may get (``--hold-max``).

Holding every byte until the next session is right for a data channel and wrong for a
console: a command typed while the VM rebooted would run in the next boot. With an age
bound the bridge reads the local end between sessions, notes when each piece arrived, and
hands the next session only what is younger than the bound; the rest is dropped and counted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: The most held at once; past it the local end is not read (its writers wait) until the
#: oldest piece ages out. One data-path chunk, as a session holds at most one.
HOLD_CAP = 256 * 1024

#: Seconds a pty local end holds bytes by default: a keystroke typed during a brief reconnect
#: still arrives, a command typed while a VM rebooted (many seconds) does not.
DEFAULT_PTY_HOLD_MAX = 2.0


def hold_limit(
    local_kind: str, when_disconnected: str | None, hold_max: float | None
) -> float | None:
    """How old held local bytes may get (None: no limit, every byte is held).

    An explicit ``hold_max`` always applies. Without it a pty, when ``when_disconnected`` was
    not chosen, gets :data:`DEFAULT_PTY_HOLD_MAX` (a pty is usually a person at a console);
    an explicit ``block`` keeps every byte, without an age limit, as data channels need.
    """
    if hold_max is not None:
        return hold_max
    if when_disconnected is None and local_kind == "pty":
        return DEFAULT_PTY_HOLD_MAX
    return None


def check_hold_max(local_kind: str, when_disconnected: str | None, hold_max: float | None) -> None:
    """Raise ``ValueError`` (naming the options) for a ``hold_max`` that cannot apply."""
    if hold_max is None:
        return
    if not (hold_max > 0 and math.isfinite(hold_max)):
        raise ValueError(f"--hold-max must be a number of seconds greater than 0, not {hold_max}")
    if when_disconnected == "drop":
        raise ValueError("--hold-max applies to held bytes; --when-disconnected drop holds none")
    if local_kind not in ("pty", "tty", "stdio"):
        raise ValueError(
            f"--hold-max applies to a pty, tty or stdio local end; a {local_kind} local end"
            " is opened per session and holds nothing between sessions"
        )


def dropped_line(count: int, max_age: float) -> str:
    """The log line for ``count`` bytes dropped by age."""
    return (
        f"dropped {count} local bytes held longer than {max_age:g}s while disconnected (--hold-max)"
    )


@dataclass
class HeldBytes:
    """Pieces of local bytes with the time each was read; no I/O, times are the caller's."""

    max_age: float
    cap: int = HOLD_CAP
    #: Bytes dropped by age since :meth:`take_dropped` last asked.
    dropped: int = 0
    _pieces: deque[tuple[float, bytes | bytearray]] = field(default_factory=deque)
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def room(self) -> int:
        """How many more bytes may be held now."""
        return max(0, self.cap - self._size)

    def add(self, data: bytes | bytearray, now: float) -> None:
        """Hold ``data``, read at ``now``."""
        if data:
            self._pieces.append((now, data))
            self._size += len(data)

    def expire(self, now: float) -> None:
        """Drop (and count) the pieces read more than ``max_age`` before ``now``."""
        while self._pieces and now - self._pieces[0][0] > self.max_age:
            _, data = self._pieces.popleft()
            self._size -= len(data)
            self.dropped += len(data)

    def next_expiry(self) -> float:
        """When the oldest piece ages out (``inf`` when nothing is held)."""
        return self._pieces[0][0] + self.max_age if self._pieces else math.inf

    def take(self) -> bytes:
        """Everything still held, oldest first; nothing is held afterwards."""
        data = b"".join(piece for _, piece in self._pieces)
        self._pieces.clear()
        self._size = 0
        return data

    def take_dropped(self) -> int:
        """Bytes dropped by age since the last call."""
        dropped, self.dropped = self.dropped, 0
        return dropped
