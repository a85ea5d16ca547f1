"""The pty and stdio local ends against trio's stream contract (``trio.testing.check_*_stream``).

TLSStream runs trio's whole ``check_half_closeable_stream`` in unit/test_tlsstream.py, and
ScrollbackEnd its part of it in unit/test_scrollback_end.py. The streams here differ from a
plain trio stream by design in places, so each gets the part of trio's checks that applies
(tests/support/stream_checks.py), plus a test of what it does instead where it differs on
purpose:

* :class:`PtyEnd` keeps a slave fd of its own so that the pty outlives every application:
  an application closing its side is not an EOF for the bridge and never breaks its writes
  (bytes wait in the line discipline for the next reader).
* :class:`StdioEnd` is a plain half-closeable stream over the process's stdin/stdout and
  passes trio's whole ``check_half_closeable_stream``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints

from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.stdio import StdioEnd
from tests.support.stream_checks import check_both_directions
from tests.support.streams import open_pty

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
    # does not depend on luck (a close that did not wait would lose most of them).
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
