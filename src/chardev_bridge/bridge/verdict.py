"""How a session ended and what follows from it, decided on typed facts without any I/O.

A session ends with a :class:`Failure` (or none); :func:`judge_end` turns the facts of its end
into a :class:`Verdict`: whether the server rejected us after the handshake (and so threw away
what we sent, which the next session sends again), how loud the end is, and the hint a
person needs. Every rule about a session's end lives here, tested without trio.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from chardev_bridge.tls.errors import (
    PEER_CLOSED_WORDS,
    describe_tls_error,
    is_closed,
    is_peer_alert,
    root_cause,
)

Side = Literal["local", "remote"]


class FailureKind(enum.Enum):
    """What kind of failure ended a session."""

    #: The peer reset the connection (ECONNRESET).
    RESET = "reset"
    #: The peer had closed the connection under our send (EPIPE, ECONNABORTED).
    CLOSED = "closed"
    #: The peer's TLS alert said why.
    PEER_ALERT = "peer alert"
    #: Anything else: a bad record, a local end's I/O error.
    ERROR = "error"
    #: A TLS server ended the session right after the handshake: it rejected us.
    REJECTED = "rejected"
    #: A plain-TCP peer dropped us right after our first bytes: it expects TLS.
    EXPECTS_TLS = "expects TLS"


@dataclass(frozen=True)
class Failure:
    """Why a session ended badly: the kind, the side that failed, one line of words."""

    kind: FailureKind
    side: Side
    detail: str

    def __str__(self) -> str:
        return self.detail

    @property
    def lost_connection(self) -> bool:
        """A reset or close: the connection went, saying nothing about why."""
        return self.kind in (FailureKind.RESET, FailureKind.CLOSED)


def failure_from(exc: BaseException, side: Side) -> Failure:
    """The typed :class:`Failure` of ``side`` for ``exc``, with its words."""
    cause = root_cause(exc)
    if isinstance(cause, ConnectionResetError):
        kind = FailureKind.RESET
    elif is_closed(cause):
        kind = FailureKind.CLOSED
    elif is_peer_alert(cause):
        kind = FailureKind.PEER_ALERT
    else:
        kind = FailureKind.ERROR
    return Failure(kind, side, describe_tls_error(exc))


def first_or_telling(current: Failure | None, new: Failure) -> Failure:
    """The failure to report when ``new`` follows ``current``: the first one, unless the
    remote's alert arrives after our send to it failed (the alert says why)."""
    if current is None:
        return new
    alert_after_loss = (
        current.side == new.side == "remote"
        and current.lost_connection
        and new.kind is FailureKind.PEER_ALERT
    )
    return new if alert_after_loss else current


@dataclass(frozen=True)
class EndFacts:
    """What is known when a session has ended."""

    failure: Failure | None
    lasted: float
    to_local: int
    to_remote: int
    local_eof: bool
    remote_eof: bool
    # The remote's transport ended without TLS close_notify.
    ragged_eof: bool
    # Why the session was drained (shutdown, replaced, idle), else None.
    ended_by: str | None
    # We are a TLS 1.3 client that checks certificates: the server may reject us only after
    # the handshake, and within ``quick_reject_seconds`` of it.
    rejectable: bool
    quick_reject_seconds: float
    # Our close_notify went out (a local EOF passed on): a close after it is an answer.
    close_notify_sent: bool
    # We speak plain TCP, as the connecting side.
    plain_client: bool
    # A one-shot connecting bridge: its session's failure is its exit status.
    one_shot: bool


class Loudness(enum.Enum):
    """How the end of a session is logged."""

    INFO = "info"
    ERROR = "error"


@dataclass(frozen=True)
class Verdict:
    """What follows from a session's end."""

    failure: Failure | None
    # The server threw away what we sent it: the next session sends it again.
    rejected: bool
    loudness: Loudness
    # A warning to log beside the end (a plain close that may mean the server wants TLS).
    hint: str | None = None


def judge_end(
    facts: EndFacts, *, rejection: Callable[[], str], expects_tls: Callable[[str], str]
) -> Verdict:
    """Decide what a session's end means.

    ``rejection()`` words a rejection after the handshake (it follows what we sent);
    ``expects_tls(what_the_peer_did)`` words the hint for a plain-TCP peer that dropped us
    right after our first bytes.
    """
    failure = facts.failure
    if _rejected_after_handshake(facts):
        if failure is None or failure.lost_connection:
            failure = Failure(FailureKind.REJECTED, "remote", rejection())
        # (else the remote's alert says why)
        return Verdict(failure, rejected=True, loudness=Loudness.ERROR)
    hint = None
    loud = False
    if facts.plain_client and facts.to_local == 0 and facts.to_remote:
        # A TLS server meeting bytes that are no TLS handshake drops the connection: the
        # usual result of a forgotten --tls-creds. A reset is a failure; a plain close may
        # be a server's choice, so that only gets the hint.
        if failure is not None and failure.side == "remote" and failure.lost_connection:
            failure = Failure(FailureKind.EXPECTS_TLS, "remote", expects_tls(failure.detail))
            loud = True
        elif failure is None and facts.remote_eof and not facts.local_eof:
            hint = expects_tls(PEER_CLOSED_WORDS)
    if failure is not None and facts.one_shot:
        loud = True  # its exit status: the error, also under -q
    loudness = Loudness.ERROR if loud else Loudness.INFO
    return Verdict(failure, rejected=False, loudness=loudness, hint=hint)


def _rejected_after_handshake(facts: EndFacts) -> bool:
    """Soon after a TLS 1.3 handshake, having said nothing, the server ended the connection:
    it checked our certificate and said no, with an alert (OpenSSL, a listening bridge) or a
    bare close or reset (QEMU; a reset when our bytes arrived after its close). Either way it
    read nothing we sent."""
    failure = facts.failure
    remote_failed = failure is not None and failure.side == "remote"
    return (
        facts.rejectable
        and facts.to_local == 0
        and facts.lasted < facts.quick_reject_seconds
        and (failure is None or remote_failed)
        and not facts.close_notify_sent  # else our close_notify was the end (QEMU: no reply)
        and facts.ended_by is None
        and not (facts.remote_eof and not facts.ragged_eof)  # its close_notify: it chose to
        and (facts.ragged_eof or remote_failed)
    )
