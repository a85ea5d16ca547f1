"""What a connecting bridge keeps of what it sent a silent TLS 1.3 server, and when it lets go:
the window, the server's acknowledgments, the copy's bounds; the rules alone and in the data
path."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chardev_bridge.bridge.datapath import CARRY_PIECE, Session
from chardev_bridge.bridge.replay import (
    KEPT_MAX,
    KEPT_MAX_UNSEEN,
    PEER_UNREAD_MAX,
    REPLAY_WINDOW_FLOOR,
    ReplayStep,
    next_step,
    replay_window,
)


@pytest.mark.parametrize(
    ("handshake_seconds", "window"),
    [
        (0.0, REPLAY_WINDOW_FLOOR),  # loopback: the floor
        (0.004, REPLAY_WINDOW_FLOOR),
        (0.1, 0.4),  # a distant server: four handshakes' worth
        (0.3, 1.2),
        (5.0, 2.0),  # never longer than a rejection is believed at all
    ],
)
def test_replay_window_follows_the_handshake_with_a_floor_and_a_cap(
    handshake_seconds: float, window: float
) -> None:
    assert replay_window(handshake_seconds) == pytest.approx(window)


def test_a_server_that_acknowledged_more_than_it_can_hold_unread_took_the_session() -> None:
    step = next_step(
        kept=1 << 20, piece=CARRY_PIECE, acknowledged=PEER_UNREAD_MAX + 1, window_left=1
    )
    assert step is ReplayStep.CONFIRMED


def test_the_end_of_the_window_confirms_whatever_was_acknowledged() -> None:
    assert next_step(kept=0, piece=1, acknowledged=0, window_left=-0.001) is ReplayStep.CONFIRMED
    assert next_step(kept=0, piece=1, acknowledged=None, window_left=-1) is ReplayStep.CONFIRMED


def test_a_server_that_reads_nothing_gets_everything_kept_without_a_pause() -> None:
    # Flow control stops the sender at the server's receive buffer plus our send buffer.
    kept = 8 << 20
    step = next_step(kept=kept, piece=CARRY_PIECE, acknowledged=130_000, window_left=0.1)
    assert step is ReplayStep.KEEP


def test_the_copy_never_grows_past_its_bound() -> None:
    step = next_step(kept=KEPT_MAX, piece=1, acknowledged=130_000, window_left=0.1)
    assert step is ReplayStep.WAIT


def test_without_acknowledgments_the_copy_stops_at_256_kib_and_the_sender_waits() -> None:
    assert KEPT_MAX_UNSEEN == 256 * 1024
    keep = next_step(kept=KEPT_MAX_UNSEEN - 10, piece=10, acknowledged=None, window_left=1)
    wait = next_step(kept=KEPT_MAX_UNSEEN - 10, piece=11, acknowledged=None, window_left=1)
    assert (keep, wait) == (ReplayStep.KEEP, ReplayStep.WAIT)


async def _pour(app: trio.abc.Stream, peer: trio.abc.Stream, size: int) -> bytearray:
    """Send ``size`` bytes in at the local end; what the remote's far end received meanwhile."""
    await app.send_all(b"x" * size)
    got = bytearray()
    while len(got) < size:
        got += await peer.receive_some()
    return got


async def test_session_keeps_all_it_sent_a_server_that_has_acknowledged_little() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote, peer = trio.testing.memory_stream_pair()
    acknowledged = 100_000
    session = Session(
        local,
        remote,
        local_persistent=False,
        replay_window=60.0,
        acknowledged=lambda: acknowledged,
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await _pour(app, peer, 1 << 20)  # four times the old fixed cap, without a pause
            assert len(session.replay.kept) == 1 << 20
            acknowledged = PEER_UNREAD_MAX + 1  # the server reads: it took the session
            await _pour(app, peer, 1)
            assert len(session.replay.kept) == 0
            session.drain("test over")
    assert session.stats.to_remote == (1 << 20) + 1


async def test_session_without_acknowledgments_waits_at_the_cap_until_the_server_speaks() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote, peer = trio.testing.memory_stream_pair()
    session = Session(local, remote, local_persistent=False, replay_window=60.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await app.send_all(b"x" * (2 * KEPT_MAX_UNSEEN))
            got = bytearray()
            while len(got) < KEPT_MAX_UNSEEN:
                got += await peer.receive_some()
            await trio.testing.wait_all_tasks_blocked()
            assert len(got) == len(session.replay.kept) == KEPT_MAX_UNSEEN
            await peer.send_all(b"hello")  # the server speaks: the rest goes, uncopied
            while len(got) < 2 * KEPT_MAX_UNSEEN:
                got += await peer.receive_some()
            assert len(session.replay.kept) == 0
            session.drain("test over")
