"""The local-side streams against trio's stream contract (``trio.testing.check_*_stream``).

TLSStream runs trio's whole ``check_half_closeable_stream`` in test_tlsstream.py. The streams
here differ from a plain trio stream by design in places, so each gets the part of trio's
checks that applies, written out below with the same assertions trio makes, plus a test of
what it does instead where it differs on purpose:

* :class:`ScrollbackEnd` (``--when-unread buffer``) must never block the remote, so
  ``send_all`` never waits (no "clogged" state exists) and concurrent sends cannot conflict;
  ``aclose`` leaves the wrapped local end to the bridge that owns it, so closing it neither
  ends the other side's reads nor makes later sends fail with ClosedResourceError.
* :class:`PtyEnd` keeps a slave fd of its own so that the pty outlives every application:
  an application closing its side is not an EOF for the bridge and never breaks its writes
  (bytes wait in the line discipline for the next reader).
* :class:`StdioEnd` is a plain half-closeable stream over the process's stdin/stdout and
  passes trio's whole ``check_half_closeable_stream``.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints

from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.scrollback import ScrollbackEnd
from chardev_bridge.local.stdio import StdioEnd
from tests.support.streams import open_pty

MiB = 1 << 20


# -- trio's checks that apply to every stream here, as trio writes them ------------------------


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


# -- ScrollbackEnd -----------------------------------------------------------------------------


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


# -- PtyEnd ------------------------------------------------------------------------------------


@asynccontextmanager
async def pty_pairs() -> AsyncIterator[Callable[[], Awaitable[tuple[PtyEnd, trio.abc.Stream]]]]:
    """A maker of (the bridge's PtyEnd, a stream over the slave as an application opens it);
    all are closed at the end."""
    made: list[trio.abc.AsyncResource] = []

    async def maker() -> tuple[PtyEnd, trio.abc.Stream]:
        end = PtyEnd()
        await end.start()
        app = open_pty(end.path)
        made.extend((app, end))
        return end, app

    try:
        yield maker
    finally:
        # Applications are closed first, so the drain wait is short.
        with trio.CancelScope(shield=True):
            for resource in made:
                await resource.aclose()


async def fill(end: trio.abc.SendStream) -> int:
    """Write until a send would wait (nobody reads): trio's clogged state. Returns the size.

    The tty layer moves bytes from the master's buffer on to the slave's asynchronously, so
    a pty that refused a write may take more a moment later: full means still full after a
    pause."""
    written = 0
    while True:
        with trio.move_on_after(0.2) as scope:
            await end.send_all(b"z" * 1024)
        if not scope.cancelled_caught:
            written += 1024
            continue
        with trio.move_on_after(0.3) as settled:
            await end.wait_send_all_might_not_block()
        if settled.cancelled_caught:
            return written


async def test_pty_end_meets_trios_send_receive_and_duplex_checks() -> None:
    async with pty_pairs() as maker:
        await check_both_directions(maker)


async def test_pty_end_clogged_waits_for_the_reader_and_refuses_concurrent_waits() -> None:
    async with pty_pairs() as maker:
        # trio: wait_send_all_might_not_block blocks until the receiver reads.
        end, app = await maker()
        assert await fill(end) > 0
        record: list[str] = []

        async def waiter(scope: trio.CancelScope) -> None:
            record.append("waiter sleeping")
            with assert_checkpoints():
                await end.wait_send_all_might_not_block()
            record.append("waiter woke up")
            scope.cancel()

        async def receiver() -> None:
            await trio.testing.wait_all_tasks_blocked()
            record.append("receiver starting")
            while True:
                await app.receive_some(16384)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter, nursery.cancel_scope)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(receiver)
        assert record == ["waiter sleeping", "receiver starting", "waiter woke up"]

        # trio: simultaneous waits are a BusyResourceError (two sends at once: see
        # test_pty_end_concurrent_send_all_raises_busy_resource_error).
        end, app = await maker()
        await fill(end)
        with trio.fail_after(5), pytest.RaisesGroup(trio.BusyResourceError):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(end.wait_send_all_might_not_block)
                nursery.start_soon(end.wait_send_all_might_not_block)


async def test_pty_end_close_gives_the_application_the_last_bytes_then_eof_and_broken_writes() -> (
    None
):
    # trio: "if send-then-graceful-close, receiver gets data then b''", and closing the
    # receiving side breaks the sender (here: the application's writes after the bridge left).
    async with pty_pairs() as maker:
        end, app = await maker()

        async def send_then_close() -> None:
            await end.send_all(b"y")
            # (aclose itself waits for the kernel to pass the byte on to the slave: see
            # test_pty_end_aclose_right_after_a_write_still_lets_a_reader_have_the_bytes.)
            with assert_checkpoints():
                await end.aclose()

        async def receive_then_eof() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert await app.receive_some(1) == b"y"
            assert await app.receive_some(1) == b""

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_then_close)
                nursery.start_soon(receive_then_eof)
        with pytest.raises(trio.BrokenResourceError):
            await app.send_all(b"x" * 100)
        with assert_checkpoints():
            await end.aclose()  # repeatable


async def test_pty_end_aclose_right_after_a_write_still_lets_a_reader_have_the_bytes() -> None:
    # A race with the kernel's flush work: run it on ten ptys at once so that the outcome
    # does not depend on luck (each loses its bytes most of the time today).
    results: dict[int, bytes] = {}
    async with pty_pairs() as maker:

        async def one(i: int) -> None:
            end, app = await maker()
            got = bytearray()

            async def late_reader() -> None:
                await trio.sleep(0.1)  # well within PtyEnd's 0.5 s stall allowance
                while chunk := await app.receive_some(100):
                    got.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(late_reader)
                await end.send_all(b"last words %d" % i)
                await end.aclose()
            results[i] = bytes(got)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
    assert results == {i: b"last words %d" % i for i in range(10)}


async def test_pty_end_outlives_an_application_that_closes_its_side() -> None:
    # By design (a serial line that is always there): trio's "closing r breaks s" and
    # "closing s gives r b''" do not apply to the application side of a pty. The bridge
    # neither reads EOF nor gets a broken write; what it writes waits for the next reader.
    async with pty_pairs() as maker:
        end, app = await maker()
        await app.send_all(b"before")
        assert await end.receive_some(100) == b"before"
        await app.aclose()
        with trio.move_on_after(0.3) as quiet:
            await end.receive_some(100)
        assert quiet.cancelled_caught, "the bridge read something after the application left"
        await end.send_all(b"for whoever opens it next")
        async with open_pty(end.path) as later:
            with trio.fail_after(5):
                assert await later.receive_some(100) == b"for whoever opens it next"


async def test_pty_end_concurrent_send_all_raises_busy_resource_error() -> None:
    async with pty_pairs() as maker:
        end, _ = await maker()
        with trio.fail_after(5), pytest.RaisesGroup(trio.BusyResourceError):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(end.send_all, b"a" * 10)
                nursery.start_soon(end.send_all, b"b" * 10)


async def test_pty_end_operations_after_aclose_raise_closed_resource_error() -> None:
    async with pty_pairs() as maker:
        end, _ = await maker()
        await end.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await end.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await end.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await end.wait_send_all_might_not_block()


async def test_pty_end_cancelled_aclose_still_closes() -> None:
    async with pty_pairs() as maker:
        end, app = await maker()
        await end.send_all(b"unread")
        with trio.CancelScope() as scope:
            scope.cancel()
            await end.aclose()
        # A cancelled close skips the drain wait (closing a pty discards its unread input,
        # which is what the wait is for), but it closes: the application sees the hangup.
        hung_up = False
        with trio.move_on_after(2):
            while await app.receive_some(100):
                pass
            hung_up = True
        assert hung_up, "the pty is still open after a cancelled aclose()"


# -- StdioEnd ----------------------------------------------------------------------------------


@pytest.fixture
async def stdio_pairs() -> AsyncIterator[
    Callable[[], Awaitable[tuple[StdioEnd, trio.abc.HalfCloseableStream]]]
]:
    """A maker of (StdioEnd over a pipe pair put on fds 0 and 1 while it starts, the stream
    the far ends of those pipes make); the test's real fds 0 and 1 are put back at the end
    (StdioEnd.send_eof points fd 1 at /dev/null, as it must for a real stdout)."""
    saved = os.dup(0), os.dup(1)
    made: list[trio.abc.AsyncResource] = []

    async def maker() -> tuple[StdioEnd, trio.abc.HalfCloseableStream]:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        end = StdioEnd()
        try:
            await end.start()
        finally:
            os.dup2(saved[0], 0)
            os.dup2(saved[1], 1)
            os.close(in_r)
            os.close(out_w)
        far = trio.StapledStream(trio.lowlevel.FdStream(in_w), trio.lowlevel.FdStream(out_r))
        made.extend((far, end))
        return end, far

    try:
        yield maker
    finally:
        with trio.CancelScope(shield=True):
            for resource in made:
                await trio.aclose_forcefully(resource)
        for fd, saved_fd in enumerate(saved):
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


StdioMaker = Callable[[], Awaitable[tuple[StdioEnd, trio.abc.HalfCloseableStream]]]


async def test_stdio_end_meets_trios_send_receive_and_duplex_checks(
    stdio_pairs: StdioMaker,
) -> None:
    await check_both_directions(stdio_pairs)


async def test_stdio_end_half_closes_both_ways_as_trio_checks(stdio_pairs: StdioMaker) -> None:
    # check_half_closeable_stream's own part, with StdioEnd first on each side.
    async def send_x_then_eof(s: trio.abc.HalfCloseableStream) -> None:
        await s.send_all(b"x")
        with assert_checkpoints():
            await s.send_eof()

    async def expect_x_then_eof(r: trio.abc.HalfCloseableStream) -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert await r.receive_some(10) == b"x"
        assert await r.receive_some(10) == b""

    for flip in (False, True):
        end, far = await stdio_pairs()
        s1, s2 = (far, end) if flip else (end, far)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_x_then_eof, s1)
                nursery.start_soon(expect_x_then_eof, s2)
            with pytest.raises(trio.ClosedResourceError):
                await s1.send_all(b"y")
            with assert_checkpoints():
                await s1.send_eof()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_x_then_eof, s2)
                nursery.start_soon(expect_x_then_eof, s1)
    assert end.exhausted  # stdin's EOF ends the local end for good


async def test_stdio_end_close_ends_the_far_reader_and_breaks_the_far_writer(
    stdio_pairs: StdioMaker,
) -> None:
    end, far = await stdio_pairs()
    await end.send_all(b"last")
    with assert_checkpoints():
        await end.aclose()
    with trio.fail_after(5):
        assert await far.receive_some(10) == b"last"
        assert await far.receive_some(10) == b""
        with pytest.raises(trio.BrokenResourceError):
            while True:
                await far.send_all(b"x" * 100)
    with pytest.raises(trio.ClosedResourceError):
        await end.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await end.wait_send_all_might_not_block()


async def test_stdio_end_receive_after_aclose_raises_closed_resource_error(
    stdio_pairs: StdioMaker,
) -> None:
    end, _ = await stdio_pairs()
    await end.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await end.receive_some(10)
    with assert_checkpoints():
        await end.aclose()


async def test_stdio_end_cancelled_aclose_still_closes(stdio_pairs: StdioMaker) -> None:
    end, _ = await stdio_pairs()
    with trio.CancelScope() as scope:
        scope.cancel()
        await end.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await end.send_all(b"123")


async def test_stdio_end_passes_trios_whole_half_closeable_check(stdio_pairs: StdioMaker) -> None:
    await trio.testing.check_half_closeable_stream(stdio_pairs, None)
