"""The recommended way to reach a restartable QEMU: a unix socket chardev
(``-chardev socket,path=…,server=on,wait=off``) and ``--local unix:PATH``. The socket path is
the VM's identity, unlike a ``-chardev pty`` whose number changes with every start and is then
reused by unrelated terminals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from tests.support.bridges import running_bridge, wait_log
from tests.support.net import HOST
from tests.support.peers import qemu_in_thread
from tests.support.streams import read_to_eof, read_until

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
