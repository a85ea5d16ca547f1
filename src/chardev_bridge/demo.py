"""`make demo`: the main job end to end on a throw-away PKI, with no setup.

A TLS server bridge and a TLS client bridge, each with its own pty, are started with the real
command line; a line written to one pty arrives on the other, and the reply comes back.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chardev_bridge.local.termios_raw import make_raw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "chardev_bridge", *args]


def _show(cmd: list[str]) -> None:
    print("$ chardev-bridge " + shlex.join(cmd[3:]), flush=True)


def _wait_for(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} did not appear in {path}:\n{content}")


def _read_line(fd: int, timeout: float = 10) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no full line on the pty; got {buf!r}")
        buf += os.read(fd, 4096)
    return buf


def _log_lines(path: Path, *needles: str) -> list[str]:
    lines = path.read_text().splitlines()
    return [
        line.split("chardev-bridge: ", 1)[-1] for line in lines if any(n in line for n in needles)
    ]


def run_demo(workdir: Path) -> None:
    """Run the demo in ``workdir``; raises on any failure."""
    pki = workdir / "pki"
    init = _cmd("creds", "init", str(pki))
    _show(init)
    subprocess.run(init, check=True, stdout=subprocess.DEVNULL)
    print(f"  throw-away PKI in QEMU's layout: {pki}/{{ca,server,client}}\n")

    port = str(_free_port())
    server_cmd = _cmd(
        "--server", "--host", "127.0.0.1", "--port", port, "--tls-creds", str(pki / "server")
    )
    client_cmd = _cmd("--host", "127.0.0.1", "--port", port, "--tls-creds", str(pki / "client"))
    logs = {name: workdir / f"{name}.log" for name in ("server", "client")}
    procs: list[subprocess.Popen[str]] = []
    try:
        ptys: dict[str, str] = {}
        for name, cmd in (("server", server_cmd), ("client", client_cmd)):
            _show(cmd)
            with logs[name].open("w") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("pty: "):
                raise RuntimeError(f"{name} bridge did not start:\n{logs[name].read_text()}")
            ptys[name] = line.removeprefix("pty: ")
            print(f"  {name} bridge's local end: {ptys[name]}")
            _wait_for(logs[name], "listening on" if name == "server" else "connected to")
        _wait_for(logs["server"], "session from")

        fds = {}
        for name, path in ptys.items():
            fds[name] = os.open(path, os.O_RDWR | os.O_NOCTTY)
            make_raw(fds[name])
        message = b"hello from the client's pty, over TLS\n"
        os.write(fds["client"], message)
        got = _read_line(fds["server"])
        print(f"\nwrote to {ptys['client']}:  {message!r}")
        print(f"read from {ptys['server']}: {got!r}")
        reply = b"and back again\n"
        os.write(fds["server"], reply)
        back = _read_line(fds["client"])
        print(f"wrote to {ptys['server']}:  {reply!r}")
        print(f"read from {ptys['client']}: {back!r}")
        if got != message or back != reply:
            raise RuntimeError("the bytes did not arrive unchanged")
        for fd in fds.values():
            os.close(fd)
        print("\nwhat each bridge logged about its session:")
        for name in ("server", "client"):
            for line in _log_lines(logs[name], "session from", "connected to"):
                print(f"  {name}: {line}")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name in ("server", "client"):
        for line in _log_lines(logs[name], "disconnected"):
            print(f"  {name}: {line}")
    print("\ndemo OK: the line crossed TLS both ways, byte for byte.")


def main() -> int:
    """Entry point of ``python -m chardev_bridge.demo``."""
    with tempfile.TemporaryDirectory(prefix="chardev-bridge-demo-") as tmp:
        try:
            run_demo(Path(tmp))
        except Exception as exc:
            print(f"demo FAILED: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
