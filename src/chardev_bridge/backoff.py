"""Reconnect timing and log-flood control for a connecting bridge."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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
