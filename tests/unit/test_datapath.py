"""The data path over in-memory streams: exactly once, in order, with every close order; what a
failing remote had sent still arrives, and its alert is the failure reported."""

from __future__ import annotations

import os
import ssl

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from chardev_bridge.bridge.datapath import Carry, Session, splice
from chardev_bridge.bridge.verdict import FailureKind

chunks = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


async def feed(stream: trio.abc.HalfCloseableStream, parts: list[bytes], close: bool) -> None:
    for part in parts:
        await stream.send_all(part)
        await trio.sleep(0)
    if close:
        await stream.send_eof()


async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


@settings(max_examples=60, deadline=None)
@given(up=chunks, down=chunks, local_first=st.booleans())
def test_socket_ends_deliver_every_byte_in_any_chunking_and_close_order(
    up: list[bytes], down: list[bytes], local_first: bool
) -> None:
    async def main() -> None:
        app, local = trio.testing.memory_stream_pair()
        remote, peer = trio.testing.memory_stream_pair()
        got_up, got_down = bytearray(), bytearray()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, peer, got_up)
                nursery.start_soon(drain, app, got_down)

                async def closers() -> None:
                    first, second = (app, up), (peer, down)
                    if not local_first:
                        first, second = second, first
                    await feed(first[0], first[1], True)
                    await feed(second[0], second[1], True)

                nursery.start_soon(closers)
                stats = await splice(local, remote, local_persistent=False)
        assert bytes(got_up) == b"".join(up)
        assert bytes(got_down) == b"".join(down)
        assert stats.to_remote == len(got_up) and stats.to_local == len(got_down)
        assert stats.local_eof and stats.remote_eof and stats.failure is None

    trio.run(main)


async def test_remote_eof_ends_session_of_persistent_end_but_not_the_end() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote, peer = trio.testing.memory_stream_pair()
    await peer.send_all(b"from remote")
    await peer.send_eof()
    got = bytearray()
    with trio.fail_after(5):
        stats = await splice(local, remote, local_persistent=True)
        got += await app.receive_some()
    assert got == b"from remote"
    assert stats.remote_eof and not stats.local_eof
    # The local end was neither closed nor half-closed: it still carries bytes.
    await local.send_all(b"still here")
    assert await app.receive_some() == b"still here"


async def test_bytes_unsent_to_a_vanished_remote_wait_in_carry_for_next_session() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote, peer = trio.testing.lockstep_stream_pair()
    carry = Carry()
    await app.send_all(b"must not be lost")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def vanish_while_send_blocks() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await peer.aclose()

            nursery.start_soon(vanish_while_send_blocks)
            stats = await splice(local, remote, local_persistent=True, carry=carry)
    assert stats.remote_eof or (stats.failure is not None and stats.failure.side == "remote")
    assert bytes(carry.pending) == b"must not be lost"
    # The next session starts with what the last one could not deliver.
    remote2, peer2 = trio.testing.memory_stream_pair()
    got = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def read_then_close() -> None:
                got.extend(await peer2.receive_some())
                await peer2.send_eof()

            nursery.start_soon(read_then_close)
            await splice(local, remote2, local_persistent=True, carry=carry)
    assert got == b"must not be lost" and bytes(carry.pending) == b""


async def test_remote_failure_still_delivers_what_already_arrived() -> None:
    app, local = trio.testing.lockstep_stream_pair()
    remote, peer = trio.testing.memory_stream_pair()
    await peer.send_all(b"arrived before the failure")
    got = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def slow_reader() -> None:
                await trio.sleep(0.2)
                got.extend(await app.receive_some())

            nursery.start_soon(slow_reader)
            await trio.testing.wait_all_tasks_blocked()
            await peer.aclose()
            await splice(local, remote, local_persistent=True)
    assert got == b"arrived before the failure"


class _RemoteThatDies(trio.abc.HalfCloseableStream):
    """Takes ``accepts`` writes whole, then every write fails as on a reset connection."""

    def __init__(self, accepts: int) -> None:
        self.accepts = accepts
        self.got = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.accepts == 0:
            raise trio.BrokenResourceError("[Errno 104] Connection reset by peer")
        self.accepts -= 1
        self.got += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@settings(max_examples=60, deadline=None)
@given(parts=chunks, accepts=st.integers(min_value=0, max_value=6))
def test_carry_gives_the_next_session_exactly_what_a_dying_remote_did_not_take(
    parts: list[bytes], accepts: int
) -> None:
    wanted = b"".join(parts)

    async def main() -> None:
        app, local = trio.testing.memory_stream_pair()
        first, carry = _RemoteThatDies(accepts), Carry()
        second, peer = trio.testing.memory_stream_pair()
        got = bytearray()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                one = Session(local, first, local_persistent=True, carry=carry, grace=0.01)
                nursery.start_soon(one.run)
                await feed(app, parts, False)
                # The first remote dies on a write, or it took everything: end it then.
                while not one.stats.failure and len(first.got) < len(wanted):
                    await trio.sleep(0.001)
                one.drain("test: first remote done")
            async with trio.open_nursery() as nursery:
                two = Session(local, second, local_persistent=True, carry=carry)
                nursery.start_soon(two.run)
                await app.send_eof()
                while len(first.got) + len(got) < len(wanted):
                    got += await peer.receive_some()
                await peer.send_eof()
        assert bytes(first.got) + bytes(got) == wanted
        assert two.stats.failure is None

    trio.run(main)


class _HandsOverAfterStop(trio.abc.HalfCloseableStream):
    """A stream whose receive has its bytes in hand at a shielded checkpoint when the
    session is drained, as every trio stream can: checkpoint_if_cancelled, take the bytes,
    cancel_shielded_checkpoint."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, data: bytes) -> None:
        self.inner = inner
        self.data = data
        self.in_hand = trio.Event()
        self.release = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.data:
            data, self.data = self.data, b""
            self.in_hand.set()
            with trio.CancelScope(shield=True):
                await self.release.wait()
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_drain_delivers_bytes_a_receive_had_in_hand_both_ways() -> None:
    # A drain stops both readers while each receive already holds its bytes; those are
    # "already read" and must still reach their destination, then close_notify/EOF.
    app, local_inner = trio.testing.memory_stream_pair()
    remote_inner, peer = trio.testing.memory_stream_pair()
    local = _HandsOverAfterStop(local_inner, b"typed just before the drain")
    remote = _HandsOverAfterStop(remote_inner, b"answered just before the drain")
    session = Session(local, remote, local_persistent=False)
    got_up, got_down = bytearray(), bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, peer, got_up)
            nursery.start_soon(drain, app, got_down)

            async def drain_while_in_hand() -> None:
                await local.in_hand.wait()
                await remote.in_hand.wait()
                session.drain("test")
                local.release.set()
                remote.release.set()

            nursery.start_soon(drain_while_in_hand)
            stats = await session.run()
            await local.aclose()  # as the bridge does once a socket end's session is over
    assert bytes(got_up) == b"typed just before the drain"
    assert bytes(got_down) == b"answered just before the drain"
    assert stats.ended_by == "test" and stats.failure is None


class _RemoteThatCannotTakeMore(trio.abc.HalfCloseableStream):
    """A remote whose last words have already arrived and to which every send fails."""

    def __init__(self, arrived: trio.abc.ReceiveStream) -> None:
        self.arrived = arrived

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("[Errno 32] Broken pipe")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.arrived.receive_some(4096)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _RemoteThatResetsThenAlerts(trio.abc.HalfCloseableStream):
    """A server that sent an alert and closed: our send meets the reset before our receive
    has read the alert."""

    def __init__(self) -> None:
        self.send_failed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.send_failed.set()
        raise trio.BrokenResourceError from ConnectionResetError(104, "Connection reset by peer")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.send_failed.wait()
        alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
        alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
        raise trio.BrokenResourceError from alert

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.trio
async def test_the_alert_a_remote_sent_is_its_failure_even_when_a_send_failed_first() -> None:
    app, local = trio.testing.memory_stream_pair()
    await app.send_all(b"typed\n")
    session = Session(local, _RemoteThatResetsThenAlerts(), local_persistent=False)
    with trio.fail_after(10):
        stats = await session.run()
    assert stats.failure is not None
    assert stats.failure.side == "remote"
    assert stats.failure.kind is FailureKind.PEER_ALERT
    assert str(stats.failure) == "the peer rejected our certificate: unknown CA (alert unknown_ca)"


@pytest.mark.trio
async def test_a_failed_send_still_delivers_what_the_remote_had_sent() -> None:
    app, local = trio.testing.memory_stream_pair()
    remote_side, arrived = trio.testing.memory_stream_pair()
    reply = os.urandom(40_000)
    await remote_side.send_all(reply)
    await remote_side.send_eof()
    got = bytearray()

    async def application() -> None:
        got.extend(await app.receive_some(4096))
        await app.send_all(b"next command\n")  # the send to the remote fails
        while data := await app.receive_some():
            got.extend(data)

    session = Session(local, _RemoteThatCannotTakeMore(arrived), local_persistent=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(application)
            stats = await session.run()
            await local.aclose()
    assert bytes(got) == reply
    assert stats.failure is not None and stats.failure.side == "remote"
