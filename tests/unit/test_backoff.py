"""Reconnect delays: a refused connection is retried fast, anything else gently."""

from __future__ import annotations

import errno
import itertools
import random
import socket

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.common.backoff import REFUSED_INITIAL, ReconnectBackoff, is_refused
from chardev_bridge.local import LocalSpec
from tests.support.bridges import running_bridge, wait_log
from tests.support.net import HOST, free_port


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


async def test_a_refused_bridge_reaches_a_server_within_reconnect_seconds_of_it_listening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="chardev_bridge")
    reconnect = 1.0
    port = free_port()
    cfg = BridgeConfig(host=HOST, port=port, local=LocalSpec("pty"), reconnect=reconnect)
    with trio.fail_after(20):
        async with running_bridge(cfg):
            # QEMU restarting: refused for 3 s (a gentle backoff would now wait 4 s more).
            await trio.sleep(3.0)
            with socket.socket() as server:
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind((HOST, port))
                server.listen(1)
                listening = trio.current_time()
                await wait_log(caplog, r"^connected to ")
                lag = trio.current_time() - listening
    assert lag <= reconnect + 0.3, lag
    # The refusals are still logged at the 1st, 2nd, 4th... time only.
    errors = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    counts = [1] + [int(e.split("(")[-1].split()[0]) for e in errors[1:]]
    assert all(b == 2 * a for a, b in itertools.pairwise(counts)), errors
