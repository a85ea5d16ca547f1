"""Real peers for interop tests: finding their binaries, and QEMU driven over QMP on stdio.

An interop test calls :func:`require_tool`; a missing binary skips the test with the package to
install, except under ``CI=true``, where it fails: CI installs every peer and must not go green
by skipping them. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.streams import read_until

# Debian packages that ship each peer (see .ci/run).
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "gnutls-cli": "gnutls-bin",
    "gnutls-serv": "gnutls-bin",
    "certtool": "gnutls-bin",
    "openssl": "openssl",
    "socat": "socat",
    "stunnel4": "stunnel4",
    "ss": "iproute2",
    "systemd-socket-activate": "systemd",
    "setpriv": "util-linux",
    "make": "make",
}


def require_tool(name: str) -> str:
    """The path of peer binary ``name``; skip the test without it (fail when CI=true)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found (Debian package {PACKAGES.get(name, name)})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI=true, so interop peers must be installed", pytrace=False)
    pytest.skip(message)


def require_qemu() -> str:
    """``qemu-system-x86_64``, which under CI=true must be the QEMU 7.2 these tests target."""
    binary = require_tool("qemu-system-x86_64")
    version = _qemu_version(binary)
    if os.environ.get("CI") == "true" and not version.startswith("QEMU emulator version 7.2"):
        pytest.fail(f"the interop tests target QEMU 7.2, found: {version}", pytrace=False)
    return binary


@functools.cache
def _qemu_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (result.stdout.splitlines() or ["?"])[0]


class QemuError(Exception):
    """QEMU exited during start-up; ``stderr`` holds its message."""

    def __init__(self, returncode: int, stderr: str):
        super().__init__(f"QEMU exited with {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def qemu_errors(stderr: str) -> list[str]:
    """QEMU's error messages without the ``qemu-system-x86_64: [option: ]`` prefix."""
    messages = []
    for line in stderr.splitlines():
        match = re.match(r"^qemu-system-\w+: (?:-\w+ \S+: )?(.*)$", line)
        if match and "terminating on signal" not in line:
            messages.append(match.group(1))
    return messages


class Qemu:
    """A paused, machine-less QEMU with QMP on stdio, built from ``args``.

    ``with Qemu([...]) as q:`` waits for the QMP greeting (so every ``-object`` loaded and every
    chardev listens), raising :class:`QemuError` if QEMU exits instead.
    """

    def __init__(self, args: Sequence[str], timeout: float = 10.0):
        self.binary = require_qemu()
        self.args = list(args)
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def __enter__(self) -> Qemu:
        cmd = [self.binary, "-machine", "none", "-nodefaults", "-display", "none", "-S"]
        self.proc = subprocess.Popen(
            [*cmd, *self.args, "-qmp", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        greeting = self._read_json()
        if greeting is None or "QMP" not in greeting:
            raise self._failure()
        self.execute("qmp_capabilities")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failure(self) -> QemuError:
        assert self.proc is not None and self.proc.stderr is not None
        returncode = self.proc.wait(timeout=self.timeout)
        return QemuError(returncode, self.proc.stderr.read().decode(errors="replace"))

    def _read_json(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" not in self._buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise TimeoutError("no answer from QEMU's QMP monitor")
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            # QEMU also prints on stdout, e.g. "char device redirected to /dev/pts/3".
            if line.startswith(b"{"):
                result: dict[str, Any] = json.loads(line)
                return result

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value (events are skipped)."""
        assert self.proc is not None and self.proc.stdin is not None
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            reply = self._read_json()
            if reply is None:
                raise self._failure()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            return reply.get("return")

    def port(self, chardev_id: str) -> int:
        """The TCP port a ``server=on,port=0`` socket chardev listens on."""
        for chardev in self.execute("query-chardev"):
            if chardev["label"] == chardev_id:
                match = re.search(r"tcp:[^,]*:(\d+)", chardev["filename"])
                if match:
                    return int(match.group(1))
        raise LookupError(f"no TCP chardev {chardev_id!r}")

    def close(self) -> None:
        """Ask QEMU to quit; kill it if it does not."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"execute": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # QEMU exited with our quit command still buffered
        self.proc = None


def tls_creds_args(
    obj_id: str, directory: str, endpoint: str, *, priority: str | None = None, extra: str = ""
) -> list[str]:
    """``-object tls-creds-x509,...`` for QEMU."""
    spec = f"tls-creds-x509,id={obj_id},dir={directory},endpoint={endpoint}"
    if priority is not None:
        spec += f",priority={priority}"
    return ["-object", spec + extra]


def tls_monitor_args(
    chardev_id: str, creds_id: str, *, authz: str | None = None, port: int = 0
) -> list[str]:
    """A QMP monitor on a TLS server chardev on 127.0.0.1 (``port`` 0: chosen by the kernel)."""
    spec = f"socket,id={chardev_id},host=127.0.0.1,port={port},server=on,wait=off"
    spec += f",tls-creds={creds_id}"
    if authz is not None:
        spec += f",tls-authz={authz}"
    return ["-chardev", spec, "-mon", f"chardev={chardev_id},mode=control"]


def qemu_tls_server_args(server_dir: Path, *, authz: str | None = None, port: int = 0) -> list[str]:
    """QEMU as TLS server: a QMP monitor on chardev ``mon0`` (127.0.0.1; ``port`` 0: chosen by
    the kernel, :meth:`Qemu.port` finds it) with the credentials of ``server_dir``."""
    return [
        *tls_creds_args("tls0", str(server_dir), "server"),
        *tls_monitor_args("mon0", "tls0", authz=authz, port=port),
    ]


def qemu_tls_client_args(client_dir: Path, port: int) -> list[str]:
    """QEMU as TLS client: a QMP monitor on a reconnecting client chardev to 127.0.0.1:port."""
    chardev = f"socket,id=mon0,host=127.0.0.1,port={port},server=off,reconnect=1,tls-creds=tls0"
    return [
        *tls_creds_args("tls0", str(client_dir), "client"),
        *["-chardev", chardev, "-mon", "chardev=mon0,mode=control"],
    ]


def gnutls_cli_command(creds_dir: Path, port: int, *extra: str) -> list[str]:
    """``gnutls-cli`` as a TLS client of 127.0.0.1:port with ``creds_dir``'s CA and client
    certificate (run it with :data:`tests.support.procs.BASE_ENV`)."""
    return [
        require_tool("gnutls-cli"),
        *["--x509cafile", str(creds_dir / "ca-cert.pem")],
        *["--x509certfile", str(creds_dir / "client-cert.pem")],
        *["--x509keyfile", str(creds_dir / "client-key.pem")],
        *extra,
        *["-p", str(port), "127.0.0.1"],
    ]


async def start_qmp(stream: trio.abc.Stream) -> None:
    """On a stream that leads to QEMU's QMP monitor: the greeting arrives, and
    ``qmp_capabilities`` (one line, as a user types it) is answered."""
    assert (await read_until(stream, b"\r\n")).startswith(b'{"QMP"')
    await stream.send_all(b'{"execute":"qmp_capabilities"}\n')
    assert await read_until(stream, b"\r\n") == b'{"return": {}}\r\n'


def qemu_load(args: Sequence[str]) -> tuple[int, str]:
    """Start QEMU with ``args``, let it load them, quit; (exit status, stderr)."""
    binary = require_qemu()
    cmd = [binary, "-machine", "none", "-nodefaults", "-display", "none", "-S", *args]
    proc = subprocess.run(
        [*cmd, "-qmp", "stdio"],
        input=b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
        capture_output=True,
        timeout=20,
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


@asynccontextmanager
async def qemu_in_thread(args: Sequence[str]) -> AsyncIterator[Qemu]:
    """A :class:`Qemu` whose blocking start and stop run in a thread, so that an in-process
    bridge keeps running meanwhile (QEMU may be connecting to it)."""
    qemu = Qemu(args)
    try:
        await trio.to_thread.run_sync(qemu.__enter__)
        yield qemu
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(qemu.close)
