"""Reconnect delays and the rate of their log lines, against real listeners and TLS servers."""

from __future__ import annotations

import itertools
import logging
import socket
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge import session as session_module
from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.tls.errors import REFUSED
from tests.support.bridges import connecting_config, log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, TlsServer, abort, free_port, server_context


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
        cfg = connecting_config(server.port, pki.client_dir, reconnect=0.1, reconnect_max=0.4)
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
        cfg = connecting_config(server.port, pki.client_dir, reconnect=0.1, reconnect_max=0.8)
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


async def test_failures_that_end_working_sessions_are_each_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    monkeypatch.setattr(session_module, "STABLE_SESSION_SECONDS", 0.3)
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    cfg = BridgeConfig(
        host=HOST, port=listener.socket.getsockname()[1], local=LocalSpec("pty"), reconnect=0.01
    )
    with trio.fail_after(20):
        async with running_bridge(cfg):
            for _ in range(4):
                tcp = await listener.accept()
                await tcp.send_all(b"hello")  # a session that works ...
                await trio.sleep(0.6)
                abort(tcp.socket)  # ... then a reset
            await trio.sleep(0.3)
    lines = [r for r in caplog.records if r.getMessage().startswith("disconnected from")]
    assert len(lines) >= 4 and all(r.levelno == logging.INFO for r in lines), [
        (r.levelname, r.getMessage()) for r in lines
    ]


@pytest.mark.trio
async def test_a_local_end_that_stays_away_does_not_flood_the_log(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chardev_bridge")
    cfg = BridgeConfig(
        host=HOST,
        port=1,  # never reached: the local end fails first
        local=LocalSpec("unix", path=str(tmp_path / "not-there.sock")),
        tls_creds=pki.client_dir,
        reconnect=0.01,
        reconnect_max=0.01,
    )
    async with running_bridge(cfg):
        await trio.sleep(1.5)  # some 100 attempts
    failures = log_lines(caplog, "^cannot open local end unix ")
    assert 3 <= len(failures) <= 10
    assert failures[-1].endswith(f"({2 ** (len(failures) - 1)} times in a row)")
