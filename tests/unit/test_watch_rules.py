"""When a session's watcher looks, when it reports a local end nobody reads, and when it ends a
session that went quiet: the rules alone, without trio."""

from __future__ import annotations

import dataclasses
import math

import pytest

from chardev_bridge.bridge.watch import (
    LOOK_INTERVAL,
    UNREAD_WARNING_SECONDS,
    Unread,
    WatchFacts,
    end_reason,
    looks_each_interval,
    next_look,
    unread_change,
)

QUIET = WatchFacts(
    now=100.0,
    last_activity=100.0,
    delivering_since=None,
    idle_timeout=None,
    grace=5.0,
    remote_eof=False,
    local_eof=False,
    local_persistent=False,
)


def facts(**changes: object) -> WatchFacts:
    return dataclasses.replace(QUIET, **changes)  # type: ignore[arg-type]


def test_an_idle_session_without_deadlines_is_never_looked_at() -> None:
    assert next_look(QUIET, each_interval=False) == math.inf


@pytest.mark.parametrize(
    ("moving", "delivering", "warned", "expected"),
    [
        (False, False, False, False),
        (True, False, False, True),
        (False, True, False, True),
        (False, False, True, True),
    ],
)
def test_looks_each_interval_only_while_bytes_flow_wait_or_a_stall_was_reported(
    moving: bool, delivering: bool, warned: bool, expected: bool
) -> None:
    assert looks_each_interval(moving=moving, delivering=delivering, warned=warned) is expected


def test_a_busy_session_is_looked_at_once_an_interval() -> None:
    assert next_look(QUIET, each_interval=True) == QUIET.now + LOOK_INTERVAL


def test_the_idle_timeout_is_a_deadline_from_the_last_activity() -> None:
    quiet = facts(idle_timeout=30.0, last_activity=90.0)
    assert next_look(quiet, each_interval=False) == 120.0
    assert next_look(quiet, each_interval=True) == QUIET.now + LOOK_INTERVAL


def test_a_closed_remote_makes_a_deadline_only_for_a_socket_local_end() -> None:
    closed = facts(remote_eof=True, last_activity=98.0)
    assert next_look(closed, each_interval=False) == 103.0
    persistent = dataclasses.replace(closed, local_persistent=True)
    assert next_look(persistent, each_interval=False) == math.inf
    answered = dataclasses.replace(closed, local_eof=True)
    assert next_look(answered, each_interval=False) == math.inf


def test_reports_a_local_end_that_took_nothing_for_the_warning_time_once() -> None:
    stalled = facts(delivering_since=QUIET.now - UNREAD_WARNING_SECONDS)
    assert unread_change(stalled, warned=False) is Unread.STALLED
    assert unread_change(stalled, warned=True) is Unread.UNCHANGED
    recent = facts(delivering_since=QUIET.now - UNREAD_WARNING_SECONDS + 0.1)
    assert unread_change(recent, warned=False) is Unread.UNCHANGED


def test_says_when_a_reported_local_end_reads_again() -> None:
    assert unread_change(QUIET, warned=True) is Unread.READING_AGAIN
    assert unread_change(QUIET, warned=False) is Unread.UNCHANGED


def test_ends_a_session_idle_past_its_timeout() -> None:
    idle = facts(idle_timeout=30.0, last_activity=QUIET.now - 31.0)
    assert end_reason(idle) == "idle for 31s (--idle-timeout)"
    assert end_reason(facts(idle_timeout=30.0, last_activity=QUIET.now - 29.0)) is None


def test_ends_a_session_whose_remote_closed_once_the_socket_local_end_is_quiet() -> None:
    closed = facts(remote_eof=True, last_activity=QUIET.now - 5.0)
    assert end_reason(closed) == "remote closed, local end quiet for 5s"
    assert end_reason(dataclasses.replace(closed, last_activity=QUIET.now - 4.0)) is None
    # A pty or tty outlives remote sessions: it is never ended for being quiet.
    assert end_reason(dataclasses.replace(closed, local_persistent=True)) is None
