"""Sessions that come and go (issue 4): reconnect backoff and its log rate, a pty that outlives
any number of remote sessions, --when-disconnected, --when-unread, --second-client,
--idle-timeout, the handshake timeout, and SIGTERM on the command line."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import re
import select
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from chardev_bridge.bridge import datapath
from chardev_bridge.bridge import run as bridge_module
from chardev_bridge.bridge import session as session_module
from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.common.backoff import Backoff, RepeatFilter
from chardev_bridge.local import LocalSpec
from chardev_bridge.tls.errors import REFUSED
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import (
    HOST,
    TlsServer,
    abort,
    client_context,
    free_port,
    server_context,
    tcp_connect,
    tls_connect,
)
from tests.support.procs import cli_bridge
from tests.support.streams import (
    open_pty,
    poll_flags,
    read_exactly,
    read_to_eof,
    read_until,
    sha256,
)

MiB = 1 << 20


def serving(pki: PKI, **kw: Any) -> BridgeConfig:
    """A listening TLS bridge on 127.0.0.1 (kernel-chosen port) with a pty."""
    return BridgeConfig(
        listen=True, host=HOST, port=0, local=LocalSpec("pty"), tls_creds=pki.server_dir, **kw
    )


def connecting(pki: PKI, port: int, **kw: Any) -> BridgeConfig:
    """A connecting TLS bridge with a pty."""
    return BridgeConfig(
        host=HOST, port=port, local=LocalSpec("pty"), tls_creds=pki.client_dir, **kw
    )


def segments(received: bytes | bytearray, payload: bytes) -> list[tuple[int, int]]:
    """``received`` as (offset, length) slices of ``payload``, in order (64-byte anchors)."""
    pos, found = 0, []
    while pos < len(received):
        at = payload.find(bytes(received[pos : pos + 64]))
        assert at >= 0, f"bytes at {pos} are not from the payload"
        n = min(64, len(received) - pos)
        while pos + n < len(received) and at + n < len(payload):
            if received[pos + n] != payload[at + n]:
                break
            n += 1
        found.append((at, n))
        pos += n
    return found


# -- backoff and log rate ---------------------------------------------------------------------


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


async def _refuse_handshakes(server: TlsServer, count: int) -> None:
    """Read each ClientHello, then close: the bridge sees an EOF during the handshake."""
    for _ in range(count):
        tcp = await server.next_tcp()
        await tcp.receive_some()
        await tcp.aclose()


async def test_reconnect_delays_grow_from_reconnect_to_reconnect_max(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting(pki, server.port, reconnect=0.1, reconnect_max=0.4)
        with trio.fail_after(10):
            async with running_bridge(cfg):
                await _refuse_handshakes(server, 7)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(server.connects)]
    nominal = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert len(gaps) == len(nominal), gaps
    for gap, expected in zip(gaps, nominal, strict=True):
        assert 0.8 * expected - 0.01 <= gap <= expected + 0.15, (gaps, nominal)
    # Seven identical failures make three log lines (the 1st, 2nd and 4th), not seven.
    lines = log_lines(info_logs, r"cannot connect to 127\.0\.0\.1")
    assert lines == [
        f"cannot connect to 127.0.0.1:{server.port}: the peer closed the connection during"
        " the handshake" + suffix
        for suffix in ("", " (2 times in a row)", " (4 times in a row)")
    ]


async def test_a_peer_down_for_long_costs_a_logarithmic_number_of_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    port = free_port()  # nothing listens: every attempt is refused
    cfg = BridgeConfig(host=HOST, port=port, local=LocalSpec("pty"), reconnect=0.01)
    cfg = BridgeConfig(**{**cfg.__dict__, "reconnect_max": 0.02})
    with trio.move_on_after(1.5):
        async with running_bridge(cfg):
            await trio.sleep_forever()
    attempts = len(log_lines(caplog, r"^reconnecting to "))
    errors = log_lines(caplog, r"^cannot connect to ")
    assert attempts >= 40, caplog.text
    assert len(errors) in (attempts.bit_length(), (attempts + 1).bit_length()), errors
    assert errors[0] == f"cannot connect to 127.0.0.1:{port}: {REFUSED}"
    assert errors[-1].endswith(f"({2 ** (len(errors) - 1)} times in a row)")


async def test_backoff_resets_after_a_session_that_lasted_but_not_after_a_short_one(
    pki: PKI, info_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "STABLE_SESSION_SECONDS", 0.5)
    server = TlsServer(server_context(pki.server_dir))
    closed_at: list[float] = []

    async def session(hold: float) -> None:
        conn = await server.accept()
        await conn.send_all(b"x")  # not a silent close (that looks like a rejection)
        await trio.sleep(hold)
        await conn.aclose()
        closed_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting(pki, server.port, reconnect=0.1, reconnect_max=0.8)
        with trio.fail_after(15):
            async with running_bridge(cfg):
                await _refuse_handshakes(server, 4)  # delays now at the cap: 0.8 s
                await session(0.0)  # short: no reset
                await session(0.7)  # lasted (> 0.5 s): reset
                await server.next_tcp()
        nursery.cancel_scope.cancel()
    after_short = server.connects[5] - closed_at[0]
    after_lasting = server.connects[6] - closed_at[1]
    assert 0.6 <= after_short <= 1.0, server.connects
    assert after_lasting <= 0.3, server.connects


# -- the pty outlives remote sessions ---------------------------------------------------------


async def test_pty_and_link_survive_reconnects_and_bytes_written_while_down_arrive(
    pki: PKI, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "console"
    server = TlsServer(server_context(pki.server_dir))
    offline_sent: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        # Explicit block without --hold-max: every byte is held, however long (a data channel).
        cfg = connecting(pki, server.port, reconnect=0.05, reconnect_max=0.1, link=link)
        cfg = BridgeConfig(**{**cfg.__dict__, "when_disconnected": "block"})
        with trio.fail_after(30):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                path = ready.pty_path
                app = open_pty(path)
                async with app, trio.open_nursery() as writers:
                    for round_ in range(4):
                        conn = await server.accept()
                        if offline_sent:
                            # Written while no remote was there: delivered now, whole.
                            got = await read_exactly(conn, len(offline_sent[-1]))
                            assert sha256(got) == sha256(offline_sent[-1])
                        hello = f"hello {round_}\n".encode()
                        await conn.send_all(hello)
                        assert await read_until(app, hello) == hello
                        reply = f"reply {round_}\n".encode()
                        await app.send_all(reply)
                        assert await read_exactly(conn, len(reply)) == reply
                        await conn.aclose()
                        await wait_log(info_logs, "^disconnected from", count=round_ + 1)
                        # The remote is gone. The application keeps its pty open and writes
                        # more than the pty buffer holds: the writer blocks, nothing is lost.
                        offline = os.urandom(300 * 1024)
                        offline_sent.append(offline)
                        writers.start_soon(app.send_all, offline)
                        await trio.sleep(0.2)
                        revents = poll_flags(app)
                        assert not revents & (select.POLLHUP | select.POLLERR), revents
                        assert os.readlink(link) == path
                    conn = await server.accept()
                    got = await read_exactly(conn, len(offline_sent[-1]))
                    assert sha256(got) == sha256(offline_sent[-1])
                    await conn.aclose()
        nursery.cancel_scope.cancel()
    assert len(log_lines(info_logs, "^connected to 127.0.0.1")) == 5
    assert log_lines(info_logs, "^local end: ") == [f"local end: pty {path} (link {link})"]


# src bug (reported): when a session starts, Bridge._claim() cancels the task that discards
# local bytes between sessions, but that task leaves receive_some() only when trio next runs
# it; if the session's pump reads first (trio picks either order), the pty raises
# BusyResourceError and the whole bridge dies. Ten sessions make the crash near certain (the
# chance of dodging it is 2**-10), so the mark stays strict; remove it with the fix.
async def test_when_disconnected_drop_discards_and_counts_bytes_written_while_down(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    rounds = 10
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting(
            pki, server.port, reconnect=0.01, reconnect_max=0.02, when_disconnected="drop"
        )
        with trio.fail_after(30):
            async with running_bridge(cfg) as ready:
                assert ready.pty_path is not None
                async with open_pty(ready.pty_path) as app:
                    for round_ in range(rounds):
                        conn = await server.accept()
                        await wait_log(info_logs, r"^connected to", count=round_ + 1)
                        online = f"online {round_}\n".encode()
                        await app.send_all(online)
                        # Nothing written while no remote was there comes before it.
                        assert await read_exactly(conn, len(online)) == online
                        await conn.aclose()
                        await wait_log(info_logs, "^disconnected from", count=round_ + 1)
                        # The writer is never blocked: the bytes go nowhere, fast.
                        with trio.fail_after(2):
                            for _ in range(10):
                                await app.send_all(b"d" * 10_000)
                        await trio.sleep(0.1)  # let the bridge discard the last of them
        nursery.cancel_scope.cancel()
    assert log_lines(info_logs, "dropped while disconnected") == [
        "100000 local bytes were dropped while disconnected"
    ] * (rounds - 1)
    assert len(log_lines(info_logs, "^no remote connected: dropping")) == rounds


# -- a pty nobody reads -----------------------------------------------------------------------


async def test_when_unread_buffer_keeps_the_remote_flowing_and_keeps_the_newest_bytes(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    scrollback = 64 * 1024
    payload = os.urandom(4 * MiB)
    received = bytearray()
    cfg = serving(pki, when_unread="buffer", scrollback=scrollback)
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            conn, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            # Nobody has the pty open, yet the remote is never stalled.
            with trio.fail_after(10):
                for start in range(0, len(payload), 64 * 1024):
                    await conn.send_all(payload[start : start + 64 * 1024])
            await wait_log(info_logs, r"scrollback full at 65536 bytes")
            await trio.sleep(0.5)  # the bridge takes in what is still in flight

            def dropped_in_all() -> int:
                found = log_lines(info_logs, r"bytes were dropped from the scrollback in all$")
                return int(found[-1].split("; ")[1].split()[0]) if found else -len(payload)

            async with open_pty(ready.pty_path) as app:
                # Read until every byte is either here or counted as dropped.
                while len(received) + dropped_in_all() < len(payload):
                    with trio.move_on_after(0.2):
                        received += await app.receive_some()
            await conn.aclose()
    dropped = dropped_in_all()
    assert dropped > 0
    assert len(received) + dropped == len(payload)
    # Oldest bytes dropped, newest kept: the received bytes are slices of the payload in
    # order, ending with the last --scrollback bytes.
    parts = segments(received, payload)
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(parts)), parts
    assert parts[-1][0] + parts[-1][1] == len(payload)
    assert sha256(received[-scrollback:]) == sha256(payload[-scrollback:])
    assert len(received) <= scrollback + datapath.CHUNK + 256 * 1024


async def test_a_bridge_that_ends_delivers_its_scrollback_to_a_late_reader_first(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    # No --reconnect: the bridge ends with its session, while the scrollback still holds
    # almost everything the remote sent, and nobody has the pty open yet.
    payload = os.urandom(512 * 1024)
    server = TlsServer(server_context(pki.server_dir))
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting(pki, server.port, when_unread="buffer", scrollback=MiB)

        async def bridge(task_status: trio.TaskStatus[bridge_module.BridgeReady]) -> None:
            codes.append(await bridge_module.run_bridge(cfg, task_status=task_status))

        with trio.fail_after(30):
            ready: bridge_module.BridgeReady = await nursery.start(bridge)
            assert ready.pty_path is not None
            conn = await server.accept()
            await conn.send_all(payload)
            await conn.aclose()
            await wait_log(info_logs, r"^disconnected from ")
            async with open_pty(ready.pty_path) as app:
                got = await read_exactly(app, len(payload))
            while not codes:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert sha256(got) == sha256(payload)
    assert codes == [0]
    assert not log_lines(info_logs, "scrollback; they are lost")


@pytest.mark.parametrize("size", [40 * 1024, 512 * 1024])
async def test_a_bridge_that_ends_unread_says_how_much_scrollback_it_lost(
    pki: PKI, info_logs: pytest.LogCaptureFixture, size: int
) -> None:
    server = TlsServer(server_context(pki.server_dir))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        cfg = connecting(pki, server.port, when_unread="buffer", scrollback=MiB, shutdown_grace=0.3)
        with trio.fail_after(30):
            await nursery.start(bridge_module.run_bridge, cfg)
            conn = await server.accept()
            await conn.send_all(os.urandom(size))
            await conn.aclose()
            [line] = await wait_log(info_logs, r"did not read the last \d+ bytes")
        nursery.cancel_scope.cancel()
    lost = int(line.split("the last ")[1].split()[0])
    # All but what the pty's own queue took (about 15 KiB, measured; a write to it that
    # never finished counts whole).
    assert size - 32 * 1024 < lost <= size, line


async def test_when_unread_block_backpressures_the_remote_warns_and_loses_nothing(
    pki: PKI, info_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datapath, "UNREAD_WARNING_SECONDS", 1.0)
    payload = os.urandom(8 * MiB)
    sent = 0
    received = hashlib.sha256()
    with trio.fail_after(60):
        async with running_bridge(serving(pki)) as ready:
            assert ready.pty_path is not None
            conn, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))

            async def send() -> None:
                nonlocal sent
                for start in range(0, len(payload), 256 * 1024):
                    await conn.send_all(payload[start : start + 256 * 1024])
                    sent = start + 256 * 1024

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await wait_log(info_logs, r"^the local end has taken no bytes for \d+s")
                stalled_at = sent
                await trio.sleep(0.5)
                assert sent == stalled_at < len(payload) // 2, (sent, stalled_at)
                async with open_pty(ready.pty_path) as app:
                    got = 0
                    while got < len(payload):
                        chunk = await app.receive_some(MiB)
                        received.update(chunk)
                        got += len(chunk)
                    await wait_log(info_logs, r"^the local end is being read again")
            await conn.aclose()
    assert received.hexdigest() == sha256(payload)
    assert log_lines(info_logs, "remote peer is stalled until something reads it")


# -- a second client --------------------------------------------------------------------------


async def test_second_client_reject_refuses_the_newcomer_and_keeps_the_session(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(serving(pki)) as ready:
            assert ready.pty_path is not None
            first, first_name = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            async with open_pty(ready.pty_path) as app:
                await first.send_all(b"before\n")
                assert await read_until(app, b"before\n") == b"before\n"
                tcp, second_name = await tcp_connect(ready.ports[0])
                second = trio.SSLStream(tcp, client_context(pki.client_dir), server_hostname=HOST)
                with pytest.raises(trio.BrokenResourceError):
                    await second.do_handshake()
                await trio.aclose_forcefully(second)
                payload = os.urandom(MiB)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first.send_all, payload)
                    got = await read_exactly(app, len(payload))
                assert sha256(got) == sha256(payload)
                await app.send_all(b"after\n")
                assert await read_exactly(first, 6) == b"after\n"
            await first.aclose()
    assert log_lines(info_logs, "^refused") == [
        f"refused {second_name}: a session with {first_name} is active (--second-client reject)"
    ]


async def test_second_client_replace_hands_over_without_losing_or_repeating_a_byte(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    payload = os.urandom(8 * MiB)
    cfg = serving(pki, second_client="replace")
    with trio.fail_after(30):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            ctx = client_context(pki.client_dir)
            old, old_name = await tls_connect(ready.ports[0], ctx)
            async with open_pty(ready.pty_path) as app, trio.open_nursery() as nursery:
                # The old client's own bytes reach the application before the takeover.
                await old.send_all(b"old says hi\n")
                assert await read_until(app, b"old says hi\n") == b"old says hi\n"

                async def write_all() -> None:
                    for start in range(0, len(payload), 64 * 1024):
                        await app.send_all(payload[start : start + 64 * 1024])

                nursery.start_soon(write_all)
                old_got = bytearray()
                while len(old_got) < MiB:
                    old_got += await old.receive_some()
                new, new_name = await tls_connect(ready.ports[0], ctx)
                # The old client gets what was in flight to it, then a clean close_notify.
                rest, how = await read_to_eof(old)
                old_got += rest
                assert how == "clean"
                new_got = await read_exactly(new, len(payload) - len(old_got))
                await new.send_all(b"new says hi\n")
                assert await read_until(app, b"new says hi\n") == b"new says hi\n"
            await new.aclose()
    assert sha256(old_got + new_got) == sha256(payload)
    assert log_lines(info_logs, "replaces the session") == [
        f"{new_name} replaces the session with {old_name} (--second-client replace)"
    ]
    assert log_lines(info_logs, f"^disconnected from {old_name} .*; replaced by {new_name}$")


# -- timeouts ---------------------------------------------------------------------------------


async def test_idle_timeout_ends_only_an_idle_session(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(serving(pki, idle_timeout=1.0)) as ready:
            assert ready.pty_path is not None
            conn, name = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            async with open_pty(ready.pty_path) as app:
                # Busy for 1.5 s with gaps shorter than the timeout: the session stays.
                for i in range(6):
                    await conn.send_all(b"%d\n" % i)
                    await read_until(app, b"%d\n" % i)
                    await trio.sleep(0.25)
                assert not log_lines(info_logs, "^disconnected")
                began = trio.current_time()
                rest, how = await read_to_eof(conn, timeout=5)
                idle_for = trio.current_time() - began
    assert (rest, how) == (b"", "clean")
    assert 0.9 <= idle_for <= 2.5
    [line] = log_lines(info_logs, "^disconnected from")
    assert line.startswith(f"disconnected from {name} after")
    # The idle check runs once a second: idle for 1 to 2 s.
    assert re.search(r"; idle for [12]s \(--idle-timeout\)$", line), line


async def test_handshake_timeout_drops_a_silent_client_while_a_good_one_gets_through(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(serving(pki, handshake_timeout=0.5)) as ready:
            assert ready.pty_path is not None
            silent, silent_name = await tcp_connect(ready.ports[0])
            good, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
            async with open_pty(ready.pty_path) as app:
                payload = os.urandom(256 * 1024)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(good.send_all, payload)
                    assert sha256(await read_exactly(app, len(payload))) == sha256(payload)
                rest, how = await read_to_eof(silent, timeout=3)
                assert (rest, how) == (b"", "clean")
                await app.send_all(b"still here\n")
                assert await read_exactly(good, 11) == b"still here\n"
            await good.aclose()
    assert log_lines(info_logs, "^dropped") == [
        f"dropped {silent_name}: no TLS handshake within 0.5s"
    ]


# src bug (reported): the remote->pty pump holds a chunk it could not write to an unread pty;
# when the remote dies meanwhile the session never ends (Session._fail keeps that pump
# running "to deliver what arrived", and drain() only stops reads), so the dead peer keeps
# the line: every new client is refused as "a session ... is active" and --idle-timeout
# cannot end it. Deterministic.
async def test_a_dead_remote_does_not_hold_the_line_while_the_pty_is_unread(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        # The idle timeout leaves the dead client time to hand its bytes to the kernel even on
        # a loaded machine; the line must be free again soon after it.
        async with running_bridge(serving(pki, idle_timeout=2.0)) as ready:
            assert ready.pty_path is not None
            ctx = client_context(pki.client_dir)
            dead, dead_name = await tls_connect(ready.ports[0], ctx)
            await dead.send_all(os.urandom(64 * 1024))  # more than an unread pty holds
            await trio.sleep(0.3)
            abort(dead.transport_stream.socket)  # the remote is gone for good (RST)
            await trio.sleep(4.5)  # > --idle-timeout + its 1 s check interval
            try:
                new, new_name = await tls_connect(ready.ports[0], ctx)
            except trio.BrokenResourceError:
                pytest.fail(f"the next client was refused: {log_lines(info_logs, '^refused')}")
            await new.send_all(b"the next client\n")
            await wait_log(info_logs, "^session from " + re.escape(new_name))
            async with open_pty(ready.pty_path) as app:
                got = await read_until(app, b"the next client\n")
            await new.aclose()
    assert got.endswith(b"the next client\n")
    assert log_lines(info_logs, "^disconnected from " + re.escape(dead_name))


# -- SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_mid_transfer_delivers_in_flight_bytes_sends_close_notify_exits_0(
    pki: PKI, tmp_path: Path
) -> None:
    link = tmp_path / "console"
    logfile = tmp_path / "to-remote.log"
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    args += ["--link", str(link), "--logfile", str(logfile)]
    with trio.fail_after(30):
        async with cli_bridge(args) as proc:
            pty_path = await proc.pty_path()
            port = await proc.port()
            conn, _ = await tls_connect(port, client_context(pki.client_dir))
            app = open_pty(pty_path)
            written = 0

            async def write_forever() -> None:
                nonlocal written
                try:
                    while True:
                        await app.send_all(os.urandom(64 * 1024))
                        written += 64 * 1024
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return  # the bridge has gone: EIO on the pty

            async with app, trio.open_nursery() as nursery:
                nursery.start_soon(write_forever)
                received = bytearray()
                while len(received) < 2 * MiB:
                    received += await conn.receive_some()
                    await trio.sleep(0.001)  # a slowish reader: bytes are in flight
                proc.signal(signal.SIGTERM)
                rest, how = await read_to_eof(conn)
                received += rest
                nursery.cancel_scope.cancel()
            code = await trio.to_thread.run_sync(proc.wait)
    assert how == "clean"  # close_notify, not a ragged TCP close
    assert code == 0
    assert not link.exists() and not link.is_symlink()
    # Everything the bridge took from the pty (the traffic log records it as it is read)
    # reached the remote before the bridge exited.
    logged = logfile.read_bytes()
    assert len(received) == len(logged) and sha256(received) == sha256(logged)
    assert 2 * MiB <= len(received) <= written + 64 * 1024  # + a write cut short by EIO
    log = proc.log()
    assert "SIGTERM: shutting down (in-flight bytes first)" in log
    assert "bytes received; bridge shutting down" in log
