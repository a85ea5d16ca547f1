"""A second client while a session is active: --second-client reject and replace."""

from __future__ import annotations

import os

import pytest
import trio

from tests.support.bridges import listening_config, log_lines, running_bridge
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tcp_connect, tls_connect
from tests.support.streams import open_pty, read_exactly, read_to_eof, read_until, sha256

MiB = 1 << 20


async def test_second_client_reject_refuses_the_newcomer_and_keeps_the_session(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with running_bridge(listening_config(pki.server_dir)) as ready:
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
    cfg = listening_config(pki.server_dir, second_client="replace")
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
