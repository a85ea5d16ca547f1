"""Processes in tests: ``python -m chardev_bridge`` as a user runs it, and peer processes
(their pipes, output, listening ports and memory).

Every process started by an ``async with`` here is killed when the block ends, however it ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
# Neither the bridge nor gnutls-cli may pick up a priority file from the caller's environment.
BASE_ENV = {k: v for k, v in os.environ.items() if k != "GNUTLS_SYSTEM_PRIORITY_FILE"}
ENV = {**BASE_ENV, "PYTHONPATH": str(SRC)}
# How every stderr line of the bridge starts after the timestamp (cli.py's logging format).
LINE = " chardev-bridge: "


# -- the command line, run to its end ----------------------------------------------------------


def bridge_cmd(*args: str) -> list[str]:
    """``python -m chardev_bridge ARGS``."""
    return [sys.executable, "-m", "chardev_bridge", *args]


TRACEBACK = "Traceback (most recent call last)"


def assert_no_traceback(output: str) -> None:
    """Fail on a Python traceback in a child's output: every failure the program knows of is
    one line of words; a traceback means an unexpected exception."""
    assert TRACEBACK not in output, f"unexpected traceback:\n{output}"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m chardev_bridge ARGS`` to its end (start-up failures, one-shot commands)."""
    done = subprocess.run(
        bridge_cmd(*args),
        env=env or ENV,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert_no_traceback(done.stderr)
    return done


def stderr_messages(stderr: str) -> list[str]:
    """The messages of the bridge's stderr lines, without their timestamps."""
    return [line.split(LINE, 1)[-1] for line in stderr.splitlines() if line]


# -- the command line in the background --------------------------------------------------------


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``, the peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/{pid}/status")


class CliBridge:
    """``python -m chardev_bridge ARGS`` with stdout and stderr collected by threads."""

    def __init__(
        self, args: Sequence[str], *, name: str = "bridge", env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.name = name
        self.proc = subprocess.Popen(
            bridge_cmd(*self.args),
            env=env or ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout)),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr)),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _collect(self, pipe: object, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:  # type: ignore[attr-defined]
            with self._lock:
                into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything logged on stderr so far."""
        with self._lock:
            return "\n".join(self.stderr)

    def count(self, pattern: str) -> int:
        """How many stderr lines match the regular expression ``pattern``."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self.stderr if regex.search(line))

    def _find(self, lines: list[str], regex: re.Pattern[str], skip: int) -> re.Match[str] | None:
        with self._lock:
            seen = 0
            for line in lines:
                found = regex.search(line)
                if found:
                    seen += 1
                    if seen > skip:
                        return found
        return None

    async def wait_for(
        self, pattern: str, *, timeout: float = 10, skip: int = 0, stdout: bool = False
    ) -> re.Match[str]:
        """The (``skip``+1)-th log line matching ``pattern``; fails after ``timeout``."""
        regex = re.compile(pattern)
        lines = self.stdout if stdout else self.stderr
        deadline = trio.current_time() + timeout
        while True:
            found = self._find(lines, regex, skip)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                # Let the reader threads catch up with the last words.
                await trio.sleep(0.1)
                found = self._find(lines, regex, skip)
                if found is not None:
                    return found
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()}"
                )
            if trio.current_time() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.log()}")
            await trio.sleep(0.02)

    async def pty_path(self, timeout: float = 10) -> str:
        """The pty path the bridge printed on stdout."""
        found = await self.wait_for(r"^pty: (\S+)$", timeout=timeout, stdout=True)
        return found.group(1)

    async def port(self, timeout: float = 10) -> int:
        """The port a listening bridge logged."""
        found = await self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout=timeout)
        return int(found.group(1))

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def close(self) -> None:
        """Make sure the process is gone (for ``finally``)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@asynccontextmanager
async def cli_bridge(
    args: Sequence[str], *, name: str = "bridge", env: dict[str, str] | None = None
) -> AsyncIterator[CliBridge]:
    """A :class:`CliBridge` that is killed on the way out whatever happens."""
    bridge = CliBridge(args, name=name, env=env)
    try:
        yield bridge
    finally:
        bridge.close()
    assert_no_traceback(bridge.log())


async def reap(proc: trio.Process) -> None:
    """Kill ``proc`` if it still runs, wait for it and close our ends of its pipes."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                await pipe.aclose()


def socket_count(pid: int) -> int:
    """Sockets a process has open (from /proc/PID/fd)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


async def exit_status(bridge: CliBridge, timeout: float = 15) -> int:
    """Wait (in a thread) for a :class:`CliBridge` to exit; its exit status."""
    return await trio.to_thread.run_sync(bridge.wait, timeout)


# -- peer processes ----------------------------------------------------------------------------


@dataclass
class Peer:
    """A running peer process: its pipes, and the output it has written so far.

    ``output`` collects stdout too when the peer was started with ``collect_stdout``
    (for peers that print diagnostics there); else read :attr:`stdout` yourself.
    """

    process: trio.Process
    stderr: bytearray = field(default_factory=bytearray)
    output: bytearray = field(default_factory=bytearray)

    @property
    def stdin(self) -> trio.abc.SendStream:
        """The peer's standard input."""
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        """The peer's standard output."""
        assert self.process.stdout is not None
        return self.process.stdout

    def stderr_text(self) -> str:
        """What the peer wrote on stderr so far, for assertions and failure messages."""
        return self.stderr.decode(errors="replace")

    def output_text(self) -> str:
        """What the peer wrote on stdout so far (with ``collect_stdout``)."""
        return self.output.decode(errors="replace")


async def wait_for_stderr(peer: Peer, text: str, timeout: float = 10) -> None:
    """Wait until ``peer`` has written ``text`` on stderr."""
    try:
        with trio.fail_after(timeout):
            while text not in peer.stderr_text():
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise AssertionError(f"no {text!r} on stderr; got: {peer.stderr_text()!r}") from None


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


@asynccontextmanager
async def running_peer(
    command: Sequence[str], *, collect_stdout: bool = False, env: dict[str, str] | None = None
) -> AsyncIterator[Peer]:
    """Run ``command`` with piped stdin/stdout/stderr (and ``env``, if given); killed at the
    end of the block."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            list(command),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        peer = Peer(process)
        assert process.stderr is not None
        nursery.start_soon(_collect, process.stderr, peer.stderr)
        if collect_stdout:
            assert process.stdout is not None
            nursery.start_soon(_collect, process.stdout, peer.output)
        try:
            yield peer
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                with trio.move_on_after(5):
                    await process.wait()
                nursery.cancel_scope.cancel()
                for pipe in (process.stdin, process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()
        assert_no_traceback(peer.stderr_text())


def listening_ports(pid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket process ``pid`` listens on (from /proc).

    Addresses are as the kernel prints them (hex); ``0100007F`` is 127.0.0.1, ``00000000``
    any IPv4 address, and IPv6 addresses have 32 hex digits.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                address, port = local.split(":")
                found.append((address, int(port, 16)))
    return found


async def wait_ipv4_port(peer: Peer, timeout: float = 10) -> int:
    """The IPv4 TCP port ``peer`` listens on (127.0.0.1 or any address), once it listens."""
    with trio.fail_after(timeout):
        while True:
            if peer.process.poll() is not None:
                raise RuntimeError(
                    f"{peer.process.args!r} exited with {peer.process.returncode}:"
                    f" {peer.stderr_text()}"
                )
            for address, port in listening_ports(peer.process.pid):
                if len(address) == 8:
                    return port
            await trio.sleep(0.02)
