"""Reconnect delays (a refused connection is retried fast, anything else gently) and the repeat
filter that keeps their log lines few."""

from __future__ import annotations

import errno
import random

import trio

from chardev_bridge.common.backoff import (
    REFUSED_INITIAL,
    Backoff,
    ReconnectBackoff,
    RepeatFilter,
    is_refused,
)


def nominal(delays: list[float], expected: list[float]) -> bool:
    """Each delay is its expected value less at most the 20 % jitter."""
    return all(0.8 * e <= d <= e for d, e in zip(delays, expected, strict=True))


def test_refused_connections_are_retried_from_a_tenth_of_a_second_up_to_reconnect() -> None:
    random.seed(16)
    backoff = ReconnectBackoff(1.0, 30.0)
    delays = [backoff.next_delay(refused=True) for _ in range(8)]
    assert REFUSED_INITIAL == 0.1
    assert nominal(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_a_host_that_is_down_or_times_out_backs_off_from_reconnect_to_reconnect_max() -> None:
    random.seed(16)
    backoff = ReconnectBackoff(1.0, 30.0)
    delays = [backoff.next_delay(refused=False) for _ in range(7)]
    assert nominal(delays, [1, 2, 4, 8, 16, 30, 30])


def test_refusals_and_timeouts_keep_their_own_pace_and_a_lasting_session_resets_both() -> None:
    random.seed(16)
    backoff = ReconnectBackoff(0.5, 8.0)
    pattern = [False, False, True, True, False, True]
    delays = [backoff.next_delay(refused=r) for r in pattern]
    assert nominal(delays, [0.5, 1.0, 0.1, 0.2, 2.0, 0.4])
    backoff.reset()
    assert nominal([backoff.next_delay(True), backoff.next_delay(False)], [0.1, 0.5])


def test_a_reconnect_shorter_than_the_refused_start_is_kept() -> None:
    backoff = ReconnectBackoff(0.02, 0.05)
    assert all(backoff.next_delay(refused=True) <= 0.02 for _ in range(5))


def refused(port: int) -> ConnectionRefusedError:
    return ConnectionRefusedError(errno.ECONNREFUSED, f"Error connecting to {port}")


def from_trio(*errors: OSError) -> OSError:
    """What trio.open_tcp_stream raises: an OSError caused by one error per address."""
    exc = OSError("all attempts to connect to localhost:9000 failed")
    exc.__cause__ = ExceptionGroup("all attempts", list(errors))
    return exc


def test_only_a_refusal_on_every_address_counts_as_refused() -> None:
    assert is_refused(from_trio(refused(1), refused(2)))
    assert is_refused(refused(1))
    # One address that timed out or could not be reached: the host may be down.
    assert not is_refused(from_trio(refused(1), TimeoutError(errno.ETIMEDOUT, "timed out")))
    assert not is_refused(from_trio(OSError(errno.EHOSTUNREACH, "No route to host")))
    assert not is_refused(trio.TooSlowError())
    assert not is_refused(ConnectionResetError(errno.ECONNRESET, "reset"))


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    random.seed(4)
    backoff = Backoff(0.5, 30.0)
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    delays = [backoff.next_delay() for _ in nominal]
    for delay, expected in zip(delays, nominal, strict=True):
        assert 0.8 * expected <= delay <= expected
    # Jitter: capped delays are not all the same (spreads many bridges' retries).
    assert len({round(d, 6) for d in delays[-4:]}) > 1
    backoff.reset()
    assert 0.4 <= backoff.next_delay() <= 0.5
    assert Backoff(0.0, 30.0).next_delay() == 0.0


def test_repeated_failures_are_logged_at_1_2_4_8_and_a_new_one_at_once() -> None:
    repeats = RepeatFilter()
    logged = [n for n in range(1, 101) if repeats.should_log("refused")[0]]
    assert logged == [1, 2, 4, 8, 16, 32, 64]
    assert repeats.should_log("another cause") == (True, 1)
    repeats.reset()
    assert repeats.should_log("another cause") == (True, 1)
