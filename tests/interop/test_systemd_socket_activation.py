"""Socket activation by the real ``systemd-socket-activate``: a named listener reaches trio."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.peers import require_tool
from tests.support.procs import SRC

pytestmark = pytest.mark.interop

# Runs as the activated service: takes the fds, echoes one line on the "console1" listener, and
# prints what it saw for the test to check.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    import trio
    import chardev_bridge.serve.systemd as systemd

    async def main() -> None:
        seen = {k: os.environ.get(k) for k in systemd.LISTEN_VARIABLES}
        pid_matched = seen["LISTEN_PID"] == str(os.getpid())
        taken = systemd.take_listen_fds()
        for name, socks in taken.items():
            for sock in socks:
                systemd.check_listening_stream(sock, name)
        [listener] = systemd.listeners_from(taken["console1"])
        async with listener, await listener.accept() as stream:
            line = b""
            while not line.endswith(b"\\n"):
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                line += chunk
            await stream.send_all(b"console1 echoes " + line)
        print(json.dumps({
            "module": systemd.__file__,
            "names": sorted(taken),
            "seen": seen,
            "pid_matched": pid_matched,
            "left": [k for k in systemd.LISTEN_VARIABLES if k in os.environ],
        }))

    trio.run(main)
    """
)


def connect_when_listening(port: int, proc: subprocess.Popen[str]) -> socket.socket:
    """Connect to ``port`` once the activator listens on it (it prints nothing we can wait on)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_first_connection_reaches_the_listener_named_console1_through_trio() -> None:
    activate = require_tool("systemd-socket-activate")
    port = free_port()

    # The activator passes its child only the variables named with -E.
    command = [
        activate,
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=console1",
        f"--setenv=PYTHONPATH={SRC}",
        sys.executable,
        "-c",
        CHILD,
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            with connect_when_listening(port, proc) as conn:
                conn.sendall(b"hello from the test\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            stdout, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert reply == b"console1 echoes hello from the test\n", stderr
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert Path(report["module"]).is_relative_to(SRC)
    assert report["names"] == ["console1"]
    assert report["seen"]["LISTEN_FDS"] == "1"
    assert report["seen"]["LISTEN_FDNAMES"] == "console1"
    assert report["pid_matched"] is True
    assert report["left"] == []


def _activated_bridge_carries_a_line(tmp_path: Path, bridge_args: list[str]) -> str:
    """Run ``chardev-bridge`` under the activator with the socket named ``mon`` passed;
    a client's line must reach the bridge's unix-listen local end. Returns its stderr."""
    port = free_port()
    local = tmp_path / "mon.sock"
    command = [
        require_tool("systemd-socket-activate"),
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=mon",
        f"--setenv=PYTHONPATH={SRC}",
        sys.executable,
        "-m",
        "chardev_bridge",
        *bridge_args,
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        try:
            with connect_when_listening(port, proc) as conn:
                conn.sendall(b"hello through an activated socket\n")
                deadline = time.monotonic() + 10
                while not local.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(10)
                    client.connect(str(local))
                    got = b""
                    while not got.endswith(b"\n"):
                        got += client.recv(4096)
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=15)
    assert got == b"hello through an activated socket\n", stderr
    assert proc.returncode == 0, stderr
    return stderr


def test_serve_bridge_accepts_on_the_socket_systemd_passed_by_name(tmp_path: Path) -> None:
    config = tmp_path / "consoles.toml"
    config.write_text(
        f'[bridge.vm2-monitor]\nserver = true\nlisten-fd = "mon"\n'
        f'local = "unix-listen:{tmp_path}/mon.sock"\n'
    )
    stderr = _activated_bridge_carries_a_line(tmp_path, ["serve", "--config", str(config)])
    assert "chardev-bridge[vm2-monitor]: session from 127.0.0.1:" in stderr


def test_cli_listen_fd_accepts_on_the_socket_systemd_passed(tmp_path: Path) -> None:
    stderr = _activated_bridge_carries_a_line(
        tmp_path, ["--server", "--listen-fd", "mon", "--local", f"unix-listen:{tmp_path}/mon.sock"]
    )
    assert "chardev-bridge: session from 127.0.0.1:" in stderr
