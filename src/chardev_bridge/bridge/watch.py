"""When a session's watcher looks next and what it then finds, decided on typed facts.

Every session has a watcher beside its two pumps. It reports a local end nobody reads (the
remote is stalled behind it) and ends a session that has gone quiet for good: idle past
``--idle-timeout``, or a remote that closed while the local connection has had nothing more to
say. It costs no wake-ups while a session is idle: it sleeps until the next deadline these
rules give, or until bytes move. The rules are pure;
:class:`chardev_bridge.bridge.datapath.SessionWatch` applies them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

# A local end that takes no bytes for this long is reported: the remote is being stalled.
UNREAD_WARNING_SECONDS = 10.0

# While bytes flow, or a delivery waits, the watcher looks this often: a busy session pays
# one wake-up per interval, not one per delivery.
LOOK_INTERVAL = 1.0


@dataclass(frozen=True)
class WatchFacts:
    """What the watcher knows of its session when it looks."""

    now: float
    #: When bytes last moved either way (or the local end last took some).
    last_activity: float
    #: When the delivery the local end has not finished taking began (None: no delivery).
    delivering_since: float | None
    idle_timeout: float | None
    #: How long a session that is ending, or whose remote has closed, may still take.
    grace: float
    remote_eof: bool
    local_eof: bool
    #: A pty or tty: it outlives the remote session and is never ended for being quiet.
    local_persistent: bool


class Unread(enum.Enum):
    """What changed about a local end nobody reads."""

    #: Nothing to say: it reads, or it was already reported.
    UNCHANGED = "unchanged"
    #: It has taken nothing for UNREAD_WARNING_SECONDS: report it.
    STALLED = "stalled"
    #: It was reported and now reads again.
    READING_AGAIN = "reading again"


def _waiting_for_local_quiet(facts: WatchFacts) -> bool:
    # QEMU never half-closes: a socket local end that stays quiet after the remote closed
    # has nothing more to say.
    return facts.remote_eof and not facts.local_eof and not facts.local_persistent


def looks_each_interval(*, moving: bool, delivering: bool, warned: bool) -> bool:
    """Whether the watcher must look every :data:`LOOK_INTERVAL` (bytes flowing, a delivery
    the local end has not finished, or a stall reported) rather than only at deadlines."""
    return moving or delivering or warned


def next_look(facts: WatchFacts, *, each_interval: bool) -> float:
    """When the watcher must look next; infinity when nothing is due until it is woken."""
    looks = [math.inf]
    if each_interval:
        looks.append(facts.now + LOOK_INTERVAL)
    if facts.idle_timeout is not None:
        looks.append(facts.last_activity + facts.idle_timeout)
    if _waiting_for_local_quiet(facts):
        looks.append(facts.last_activity + facts.grace)
    return min(looks)


def unread_change(facts: WatchFacts, *, warned: bool) -> Unread:
    """Whether a local end nobody reads is newly stalled, reads again, or neither."""
    since = facts.delivering_since
    if since is not None and facts.now - since >= UNREAD_WARNING_SECONDS:
        return Unread.UNCHANGED if warned else Unread.STALLED
    return Unread.READING_AGAIN if warned else Unread.UNCHANGED


def end_reason(facts: WatchFacts) -> str | None:
    """Why the session must now end, in the words of its log line; None: it goes on.

    Nothing that moves for the idle timeout (an unread pty, a remote that vanished without a
    word) will move later either; a remote that closed for good must not hold the line.
    """
    idle = facts.now - facts.last_activity
    if facts.idle_timeout is not None and idle >= facts.idle_timeout:
        return f"idle for {idle:.0f}s (--idle-timeout)"
    if _waiting_for_local_quiet(facts) and idle >= facts.grace:
        return f"remote closed, local end quiet for {facts.grace:g}s"
    return None
