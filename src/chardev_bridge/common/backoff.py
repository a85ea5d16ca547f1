"""Reconnect timing and log-flood control for a connecting bridge."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: First delay after a refused connection. A refusal comes back at once and costs the peer
#: one SYN and one RST: nothing listens yet, typically a QEMU that is restarting, and the
#: guest's boot messages are lost until we are connected (QEMU with ``server=on,wait=off``
#: drops what no client reads).
REFUSED_INITIAL = 0.1


@dataclass
class Backoff:
    """Exponential backoff with jitter between ``initial`` and ``cap`` seconds.

    Jitter spreads the retries of many bridges that lost the same peer at once.
    """

    initial: float
    cap: float
    _current: float = field(init=False)

    def __post_init__(self) -> None:
        self._current = self.initial

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the next, up to ``cap``."""
        delay = min(self._current, self.cap)
        self._current = min(self._current * 2, self.cap)
        return delay * random.uniform(0.8, 1.0) if delay > 0 else 0.0

    def reset(self) -> None:
        """Start again from ``initial`` (after a session that lasted)."""
        self._current = self.initial


def is_refused(exc: BaseException) -> bool:
    """Whether a connect failure was a refusal on every address tried (ECONNREFUSED).

    trio's ``open_tcp_stream`` raises an ``OSError`` whose cause is a group of the errors of
    each address; one address that timed out or was unreachable makes it not a refusal.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        if isinstance(current, BaseExceptionGroup):
            return all(is_refused(sub) for sub in current.exceptions)
        current = current.__cause__
    return False


@dataclass
class ReconnectBackoff:
    """A connecting bridge's delays between attempts (``--reconnect``, ``--reconnect-max``).

    A refused connection is retried fast: from :data:`REFUSED_INITIAL`, doubling up to
    ``initial`` and no further, so a restarted QEMU is reached within ``initial`` seconds of
    listening. Anything else (a timeout, an unreachable host, a failed handshake, a session
    that ended) backs off gently from ``initial`` up to ``cap``.
    """

    initial: float
    cap: float
    _refused: Backoff = field(init=False)
    _other: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self._refused = Backoff(min(REFUSED_INITIAL, self.initial), self.initial)
        self._other = Backoff(self.initial, max(self.cap, self.initial))

    def next_delay(self, refused: bool) -> float:
        """The delay before the next attempt, after a refused connection or another end."""
        return (self._refused if refused else self._other).next_delay()

    def reset(self) -> None:
        """Start again from the shortest delays (after a session that lasted)."""
        self._refused.reset()
        self._other.reset()


@dataclass
class RepeatFilter:
    """Says whether to log the n-th repeat of the same failure: the 1st, 2nd, 4th, 8th...

    A peer that is down for a day then costs a few dozen log lines, not thousands.
    """

    _last: str | None = None
    _count: int = 0

    def should_log(self, message: str) -> tuple[bool, int]:
        """(log it?, how many times in a row it has now happened)."""
        if message != self._last:
            self._last, self._count = message, 0
        self._count += 1
        return (self._count & (self._count - 1)) == 0, self._count

    def quiet(self, message: str) -> bool:
        """Whether ``message``, if it happened again now, would go unlogged."""
        n = self._count + 1
        return message == self._last and (n & (n - 1)) != 0

    def reset(self) -> None:
        """Forget the last failure (a session succeeded)."""
        self._last, self._count = None, 0
