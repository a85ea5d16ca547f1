"""The rules about a session's end, on typed facts, without trio or sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chardev_bridge.bridge.verdict import (
    EndFacts,
    Failure,
    FailureKind,
    Loudness,
    Verdict,
    first_or_telling,
    judge_end,
)

RESET = Failure(FailureKind.RESET, "remote", "the peer reset the connection")
CLOSED = Failure(FailureKind.CLOSED, "remote", "the peer closed the connection")
ALERT = Failure(FailureKind.PEER_ALERT, "remote", "the peer rejected our certificate")
LOCAL = Failure(FailureKind.ERROR, "local", "input/output error")

# A TLS 1.3 client session that QEMU ended at once, without a word: a bare TCP close.
QUIET_CLOSE = EndFacts(
    failure=None,
    lasted=0.01,
    to_local=0,
    to_remote=12,
    local_eof=False,
    remote_eof=True,
    ragged_eof=True,
    ended_by=None,
    rejectable=True,
    quick_reject_seconds=2.0,
    close_notify_sent=False,
    plain_client=False,
    one_shot=False,
)


def judge(facts: EndFacts) -> Verdict:
    return judge_end(
        facts, rejection=lambda: "it probably rejected us", expects_tls=lambda w: f"{w}: want TLS?"
    )


def test_a_quiet_close_right_after_the_handshake_is_a_rejection_to_replay() -> None:
    verdict = judge(QUIET_CLOSE)
    assert verdict.rejected
    assert verdict.failure == Failure(FailureKind.REJECTED, "remote", "it probably rejected us")
    assert verdict.loudness is Loudness.ERROR


@pytest.mark.parametrize("lost", [RESET, CLOSED])
def test_a_reset_or_close_right_after_the_handshake_is_worded_as_the_rejection(
    lost: Failure,
) -> None:
    verdict = judge(replace(QUIET_CLOSE, failure=lost, remote_eof=False, ragged_eof=False))
    assert verdict.rejected
    assert verdict.failure is not None and verdict.failure.kind is FailureKind.REJECTED


def test_an_alert_right_after_the_handshake_is_a_rejection_that_keeps_its_words() -> None:
    verdict = judge(replace(QUIET_CLOSE, failure=ALERT, remote_eof=False, ragged_eof=False))
    assert verdict.rejected and verdict.failure == ALERT


@pytest.mark.parametrize(
    "change",
    [
        {"rejectable": False},  # TLS 1.2, a TLS server, no certificates: verified in-handshake
        {"to_local": 1},  # the server spoke: it accepted us
        {"lasted": 2.5},  # too late to be the certificate check
        {"close_notify_sent": True},  # our close_notify was the end; QEMU does not answer it
        {"ended_by": "bridge shutting down"},
        {"ragged_eof": False},  # its close_notify: it chose to end
        {"failure": LOCAL, "remote_eof": False, "ragged_eof": False},
    ],
)
def test_an_end_that_is_no_rejection_replays_nothing(change: dict[str, Any]) -> None:
    verdict = judge(replace(QUIET_CLOSE, **change))
    assert not verdict.rejected


def test_a_plain_client_reset_after_its_first_bytes_is_told_the_server_may_want_tls() -> None:
    facts = replace(
        QUIET_CLOSE, rejectable=False, plain_client=True, failure=RESET, remote_eof=False
    )
    verdict = judge(facts)
    assert verdict.failure == Failure(
        FailureKind.EXPECTS_TLS, "remote", "the peer reset the connection: want TLS?"
    )
    assert verdict.loudness is Loudness.ERROR and verdict.hint is None


def test_a_plain_client_closed_on_after_its_first_bytes_gets_only_a_hint() -> None:
    verdict = judge(replace(QUIET_CLOSE, rejectable=False, plain_client=True))
    assert verdict.failure is None and verdict.loudness is Loudness.INFO
    assert verdict.hint == "the peer closed the connection: want TLS?"


def test_a_one_shot_bridge_logs_its_failure_as_an_error() -> None:
    facts = replace(QUIET_CLOSE, rejectable=False, failure=LOCAL, one_shot=True)
    assert judge(facts).loudness is Loudness.ERROR
    assert judge(replace(facts, one_shot=False)).loudness is Loudness.INFO


def test_the_remote_alert_after_a_lost_send_is_the_failure_reported() -> None:
    assert first_or_telling(RESET, ALERT) == ALERT
    assert first_or_telling(None, RESET) == RESET
    assert first_or_telling(ALERT, RESET) == ALERT
    assert first_or_telling(LOCAL, ALERT) == LOCAL
