"""ScrollbackEnd (``--when-unread buffer``) against trio's stream contract, over memory streams.

It must never block the remote, so ``send_all`` never waits (no "clogged" state exists) and
concurrent sends cannot conflict; ``aclose`` leaves the wrapped local end to the bridge that
owns it, so closing it neither ends the other side's reads nor makes later sends fail with
ClosedResourceError. Each of those differences has a test of what it does instead."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints

from chardev_bridge.local.scrollback import ScrollbackEnd
from tests.support.stream_checks import check_both_directions

MiB = 1 << 20


@asynccontextmanager
async def scrollback_pairs(
    limit: int = 4 * MiB, *, lockstep: bool = False
) -> AsyncIterator[Callable[[], Awaitable[tuple[ScrollbackEnd, trio.abc.Stream]]]]:
    """A maker of (ScrollbackEnd around one end of a memory stream pair, the other end), each
    ScrollbackEnd delivering from a background task as the bridge runs it."""
    async with trio.open_nursery() as nursery:

        async def maker() -> tuple[ScrollbackEnd, trio.abc.Stream]:
            pair = (
                trio.testing.lockstep_stream_pair()
                if lockstep
                else trio.testing.memory_stream_pair()
            )
            end = ScrollbackEnd(pair[0], limit)
            nursery.start_soon(end.run)
            return end, pair[1]

        yield maker
        nursery.cancel_scope.cancel()


async def test_scrollback_end_meets_trios_send_receive_and_duplex_checks() -> None:
    async with scrollback_pairs() as maker:
        await check_both_directions(maker)


async def test_scrollback_end_never_blocks_a_sender_whose_local_end_is_clogged() -> None:
    # With lockstep streams every inner send waits for a receive: trio's "clogged" state.
    # ScrollbackEnd must not pass that on to the remote (by design there is no clogged state,
    # so trio's clogged checks, which expect waiting and BusyResourceError, cannot apply).
    payload = os.urandom(256 * 1024)
    async with scrollback_pairs(lockstep=True) as maker:
        end, reader = await maker()
        with trio.fail_after(1):
            for i in range(0, len(payload), 4096):
                with assert_checkpoints():
                    await end.send_all(payload[i : i + 4096])
            with assert_checkpoints():
                await end.wait_send_all_might_not_block()
            # Concurrent sends do not conflict either: each one is a single append.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(end.send_all, b"A" * 10)
                nursery.start_soon(end.send_all, b"A" * 10)
        got = bytearray()
        with trio.fail_after(10):
            while len(got) < len(payload) + 20:
                got += await reader.receive_some(1 << 16)
        assert bytes(got) == payload + b"A" * 20
        assert end.dropped == 0


async def test_scrollback_end_keeps_the_newest_bytes_when_the_local_end_stops_reading() -> None:
    async with scrollback_pairs(limit=1000, lockstep=True) as maker:
        end, reader = await maker()
        await end.send_all(b"first")  # taken by the deliverer: stuck in the inner send
        await trio.testing.wait_all_tasks_blocked()
        payload = bytes(range(256)) * 10
        await end.send_all(payload)
        assert end.dropped == len(payload) - 1000
        got = bytearray()
        with trio.fail_after(5):
            while len(got) < 5 + 1000:
                got += await reader.receive_some(4096)
        assert bytes(got) == b"first" + payload[-1000:]


async def test_scrollback_end_send_fails_for_good_once_the_local_end_is_gone() -> None:
    # trio: "closing the r side leads to BrokenResourceError on the s side (eventually)" and
    # "once detected, the stream stays broken".
    async with scrollback_pairs() as maker:
        end, reader = await maker()
        await reader.aclose()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            while True:
                await end.send_all(b"x" * 100)
        with pytest.raises(trio.BrokenResourceError):
            await end.send_all(b"x" * 100)
        with pytest.raises(trio.ClosedResourceError):
            await reader.receive_some(4096)


async def test_scrollback_end_aclose_leaves_the_wrapped_local_end_to_its_owner() -> None:
    # By design: the bridge owns (and closes) the pty/tty it wraps, so ScrollbackEnd.aclose
    # is a no-op and trio's "send after aclose raises ClosedResourceError" / "the receiver
    # then sees b''" do not apply. What applies: aclose checkpoints and is repeatable.
    async with scrollback_pairs() as maker:
        end, reader = await maker()
        for _ in range(2):
            with assert_checkpoints():
                await end.aclose()
        await end.send_all(b"still delivered")
        with trio.fail_after(5):
            assert await reader.receive_some() == b"still delivered"
