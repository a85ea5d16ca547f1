"""The parts of trio's stream checks (``trio.testing.check_*_stream``) that apply to every
local-side stream, written out with the same assertions trio makes: some of those streams
differ from a plain trio stream on purpose, so they cannot run trio's checks whole."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints

MiB = 1 << 20


async def check_one_way_basics(s: trio.abc.SendStream, r: trio.abc.ReceiveStream) -> None:
    """The opening of ``check_one_way_stream``: simple sends, b"" with no meaning, bytearray
    and memoryview accepted, max_bytes validated, every call a checkpoint, two concurrent
    receives refused, and ``wait_send_all_might_not_block`` returning on an empty stream."""

    async def do_send_all(data: bytes | bytearray | memoryview) -> None:
        with assert_checkpoints():
            await s.send_all(data)

    async def do_receive_some(max_bytes: int | None = None) -> bytes | bytearray:
        with assert_checkpoints():
            return await r.receive_some(max_bytes)

    async def checked_receive_1(expected: bytes) -> None:
        assert await do_receive_some(1) == expected

    async def send_empty_then_y() -> None:
        await do_send_all(b"")
        await do_send_all(b"y")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_send_all, b"x")
        nursery.start_soon(checked_receive_1, b"x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_empty_then_y)
        nursery.start_soon(checked_receive_1, b"y")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_send_all, bytearray(b"1"))
        nursery.start_soon(checked_receive_1, b"1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_send_all, memoryview(b"2"))
        nursery.start_soon(checked_receive_1, b"2")

    with pytest.raises(ValueError):
        await r.receive_some(-1)
    with pytest.raises(ValueError):
        await r.receive_some(0)
    with pytest.raises(TypeError):
        await r.receive_some(1.5)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_send_all, b"x")
        assert await do_receive_some() == b"x"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_send_all, b"x")
        assert await do_receive_some(None) == b"x"

    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(do_receive_some, 1)
            nursery.start_soon(do_receive_some, 1)

    async def wait_then_stop(scope: trio.CancelScope) -> None:
        with assert_checkpoints():
            await s.wait_send_all_might_not_block()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_then_stop, nursery.cancel_scope)
        nursery.start_soon(do_receive_some, 1)


async def check_duplex(s1: trio.abc.Stream, s2: trio.abc.Stream) -> None:
    """``check_two_way_stream``'s duplex test: 1 MiB each way at once, random chunk sizes on
    both ends, every byte in order."""
    data = random.Random(0).randbytes(MiB)

    async def sender(s: trio.abc.Stream, payload: bytes, seed: int) -> None:
        rng, view = random.Random(seed), memoryview(payload)
        while view:
            size = rng.randint(1, 1 << 14)
            await s.send_all(view[:size])
            view = view[size:]

    async def receiver(s: trio.abc.Stream, expected: bytes, seed: int) -> None:
        rng, got = random.Random(seed), bytearray()
        while len(got) < len(expected):
            chunk = await s.receive_some(rng.randint(1, 1 << 14))
            assert chunk
            got += chunk
        assert got == expected

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, s1, data, 0)
            nursery.start_soon(sender, s2, data[::-1], 1)
            nursery.start_soon(receiver, s1, data[::-1], 2)
            nursery.start_soon(receiver, s2, data, 3)


async def check_both_directions(
    maker: Callable[[], Awaitable[tuple[trio.abc.Stream, trio.abc.Stream]]],
) -> None:
    """The basics from each side to the other on fresh pairs, then the duplex test."""
    a, b = await maker()
    await check_one_way_basics(a, b)
    a, b = await maker()
    await check_one_way_basics(b, a)
    a, b = await maker()
    await check_duplex(a, b)
