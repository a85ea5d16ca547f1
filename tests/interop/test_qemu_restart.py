"""QEMU restarting under a running bridge, which carries on without being restarted itself.

The recommended way to reach a restartable QEMU is a unix socket chardev
(``-chardev socket,path=…,server=on,wait=off``) and ``--local unix:PATH``: the socket path is
the VM's identity, unlike a ``-chardev pty`` whose number changes with every start and is then
reused by unrelated terminals. A QEMU TLS server killed mid-session and started again on the
same port gets the same pty back, and every byte written after the reconnection arrives.
What a QEMU that rejected our certificate (tls-authz) threw away unread reaches the QEMU that
accepts us next, once and in order.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.qemu import pki
from tests.support.bridges import running_bridge, wait_log
from tests.support.net import HOST, free_port
from tests.support.peers import (
    Qemu,
    qemu_in_thread,
    qemu_tls_server_args,
    require_qemu,
)
from tests.support.procs import cli_bridge
from tests.support.streams import open_pty, poll_flags, read_to_eof, read_until

pytestmark = pytest.mark.interop


async def qmp(stream: trio.abc.Stream, command: str) -> dict[str, object]:
    """Send one QMP command and return its answer."""
    await stream.send_all(json.dumps({"execute": command}).encode() + b"\r\n")
    answer: dict[str, object] = json.loads(await read_until(stream, b"\r\n"))
    return answer


async def test_a_unix_local_end_reaches_qemu_again_after_qemu_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="chardev_bridge")
    sock = tmp_path / "vm0.sock"
    qemu_args = [
        "-chardev",
        f"socket,id=ser0,path={sock},server=on,wait=off",
        "-mon",
        "chardev=ser0,mode=control",
    ]
    cfg = BridgeConfig(listen=True, host=HOST, port=0, local=LocalSpec("unix", path=str(sock)))
    with trio.fail_after(60):
        async with running_bridge(cfg) as bridge:
            async with qemu_in_thread(qemu_args):
                client = await trio.open_tcp_stream(HOST, bridge.ports[0])
                assert b'"QMP"' in await read_until(client, b"\r\n")
                assert await qmp(client, "qmp_capabilities") == {"return": {}}
            # QEMU has quit: its socket connection ends, and so does the session.
            _, how = await read_to_eof(client)
            assert how == "clean"
            await client.aclose()
            await wait_log(caplog, "^disconnected from")
            # A client that comes while QEMU is down waits for it; QEMU starts again on the
            # same path and the bridge connects to it without being restarted.
            client = await trio.open_tcp_stream(HOST, bridge.ports[0])
            await wait_log(caplog, rf"^local end unix {sock} not there")
            await trio.sleep(1.0)
            async with qemu_in_thread(qemu_args):
                with trio.fail_after(2):  # retried within a second of QEMU listening
                    assert b'"QMP"' in await read_until(client, b"\r\n")
                assert await qmp(client, "qmp_capabilities") == {"return": {}}
                status = await qmp(client, "query-status")
                assert status["return"] == {
                    "status": "prelaunch",
                    "singlestep": False,
                    "running": False,
                }
                await client.aclose()


async def test_qemu_sigkilled_and_restarted_on_the_same_port_and_qmp_works_again(
    tmp_path: Path,
) -> None:
    require_qemu()
    # QEMU-layout credentials, with dh-params.pem so that QEMU starts fast.
    creds = pki.init_pki(tmp_path / "pki")
    port = free_port()
    link = tmp_path / "vm-monitor"
    qemu_args = qemu_tls_server_args(creds.server_dir, port=port)
    args = ["--host", HOST, "--port", str(port), "--tls-creds", str(creds.client_dir)]
    args += ["--reconnect", "0.2", "--reconnect-max", "1", "--link", str(link)]

    def _query(n: int) -> bytes:
        return b'{"execute":"query-status","id":%d}\r\n' % n

    async def qmp(app: trio.abc.Stream, command: bytes) -> bytes:
        await app.send_all(command + b"\r\n")
        return await read_until(app, b"\r\n", timeout=10)

    with trio.fail_after(60):
        qemu = Qemu(qemu_args).__enter__()
        try:
            async with cli_bridge(args, name="bridge") as bridge:
                pty_path = await bridge.pty_path()
                async with open_pty(pty_path) as app:
                    greeting = await read_until(app, b"\r\n")
                    assert b'"QMP"' in greeting
                    assert (
                        await qmp(app, b'{"execute":"qmp_capabilities"}') == b'{"return": {}}\r\n'
                    )
                    # 500 pipelined commands; QEMU is killed while it answers them.
                    await app.send_all(b"".join(_query(i) for i in range(500)))
                    await read_until(app, b'"id": 20}', timeout=10)
                    assert qemu.proc is not None
                    qemu.proc.kill()
                    qemu.proc.wait(timeout=10)
                    qemu.close()
                    qemu = Qemu(qemu_args).__enter__()
                    # The same pty, the same fd: the new QEMU's greeting comes through it,
                    # after the old QEMU's answers that had arrived before it died (the
                    # session ends once they are read: remote bytes wait for the local end).
                    seen = await read_until(app, b'{"QMP"', timeout=15)
                    if b"\r\n" not in seen[seen.index(b'{"QMP"') :]:
                        await read_until(app, b"\r\n")
                    await app.send_all(b'{"execute":"qmp_capabilities"}\r\n')
                    await read_until(app, b'{"return": {}}\r\n')
                    # Everything written after the reconnection arrives once, in order.
                    await app.send_all(b"".join(_query(i) for i in range(1000, 1200)))
                    answers = await read_until(app, b'"id": 1199}\r\n', timeout=15)
                    ids = [int(m) for m in re.findall(rb'"id": (\d+)}', answers)]
                    assert ids == list(range(1000, 1200)), ids
                    assert answers.count(b'"status": "prelaunch"') == 200
                    assert bridge.count(r"disconnected from 127\.0\.0\.1") == 1
                    assert os.readlink(link) == pty_path
                    assert not poll_flags(app) & (select.POLLHUP | select.POLLERR)
                bridge.signal(signal.SIGTERM)
                assert await trio.to_thread.run_sync(bridge.wait) == 0
        finally:
            qemu.close()
    assert bridge.count(r"connected to 127\.0\.0\.1:\d+: TLSv1\.3") == 2
    assert not link.exists()


async def test_what_a_rejecting_qemu_threw_away_reaches_the_next_qemu_once_and_in_order(
    tmp_path: Path,
) -> None:
    require_qemu()
    creds = pki.init_pki(tmp_path / "pki")
    port = free_port()

    def qemu_args(allowed: str | None) -> list[str]:
        if allowed is None:
            return qemu_tls_server_args(creds.server_dir, port=port)
        authz = ["-object", f"authz-simple,id=auth0,identity={allowed}"]
        return [*authz, *qemu_tls_server_args(creds.server_dir, port=port, authz="auth0")]

    args = ["--host", HOST, "--port", str(port), "--tls-creds", str(creds.client_dir)]
    args += ["--reconnect", "0.2", "--reconnect-max", "0.5", "--when-disconnected", "block"]
    args += ["-v"]  # every attempt's line: repeats of the same failure are logged at debug
    count = 15_000  # about 600 KB: more than the first QEMU's kernel takes unread
    typed = b'{"execute":"qmp_capabilities"}\r\n'
    typed += b"".join(b'{"execute":"query-status","id":%d}\r\n' % i for i in range(count))
    # Only a session that sent something before the close tests the replay.
    rejected = r"[1-9]\d* bytes sent, 0 bytes received; .*probably rejected our client certificate"
    with trio.fail_after(150):
        async with cli_bridge(args, name="bridge") as bridge, trio.open_nursery() as nursery:
            app = open_pty(await bridge.pty_path())
            # Typed while no QEMU listens; the bridge pours it into the first session at once.
            nursery.start_soon(app.send_all, typed)
            with Qemu(qemu_args("CN=someone-else.example.com")):
                await bridge.wait_for(rejected, timeout=60)
            with Qemu(qemu_args(None)):
                answers = await read_until(app, b'"id": %d}\r\n' % (count - 1), timeout=60)
            await app.aclose()
    assert answers.startswith(b'{"QMP"') and answers.count(b'{"QMP"') == 1
    ids = [int(m) for m in re.findall(rb'"id": (\d+)}', answers)]
    assert ids == list(range(count)), (len(ids), ids[:5], ids[-5:])
    assert answers.count(b'{"return": {}}') == 1  # qmp_capabilities, once
