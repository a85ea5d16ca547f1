"""Child processes, ports and memory figures for the benchmark harness.

Every process the harness starts goes through `Procs.spawn`, which puts it in its own process
group so that `Procs.kill_all` (run from a ``finally``) also ends any children it forked, such as
socat's per-connection processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_INTERVAL = 0.001  # 1 ms: the resolution of the start-up figure

# sock_diag (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h), for is_listening().
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG_HEADER = 16
_SOCKID_SIZE = 48  # struct inet_diag_sockid
_TCP_LISTEN = 10
_LOOPBACK = socket.inet_aton("127.0.0.1")


class BenchError(Exception):
    """A contestant could not be measured; the message becomes the ``n/a: <reason>`` text."""


@dataclass
class Proc:
    """A started child process and the files its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float = field(default_factory=time.perf_counter)
    pty_link: Path | None = None  # set by contestants that name their pty with a symlink

    def tail(self) -> str:
        """The last non-empty line of stderr (or stdout), for error messages."""
        for path in (self.err_path, self.out_path):
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return lines[-1].strip()[:200]
        return "no output"

    def check_alive(self) -> None:
        """Raise BenchError if the process has already exited."""
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}: {self.tail()}")


class Procs:
    """Starts child processes with their output in log files, and kills them all at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: list[Proc] = []
        self.count = 0

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        """Start `argv` in a new session; stdout/stderr go to files (a pipe could fill up)."""
        self.count += 1
        safe = re.sub(r"[^\w-]+", "-", name)
        stem = self.log_dir / f"{self.count:05d}-{safe}"
        out_path, err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.perf_counter()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, out_path, err_path, started)
        self.live.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        """Kill `proc` and everything in its process group, then reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()
        if proc in self.live:
            self.live.remove(proc)

    def kill_all(self) -> None:
        """Kill every process still alive; safe to call more than once."""
        for proc in list(self.live):
            self.kill(proc)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(port: int) -> bool:
    """True if some socket listens on 127.0.0.1:port.

    Asks the kernel's sock_diag for the listening TCP sockets only, as ``ss -lt`` does. Not by
    connecting: a test connection would be bridged, and socat without ``fork`` serves exactly
    one connection, so connecting would use it up. Not from /proc/net/tcp either: after the
    handshake rounds it lists some 12,000 TIME_WAIT sockets, and reading it each millisecond
    kept one of the two cores busy (24 ms a read) while the start-up row timed contestants.
    """
    request = struct.pack(
        "=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN
    ) + bytes(_SOCKID_SIZE)
    flags = _NLM_F_REQUEST | _NLM_F_DUMP
    header = struct.pack("=IHHII", _NLMSG_HEADER + len(request), _SOCK_DIAG_BY_FAMILY, flags, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.sendto(header + request, (0, 0))
        while True:
            data = diag.recv(1 << 16)
            offset = 0
            while offset + _NLMSG_HEADER <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return False
                if kind == _NLMSG_ERROR:
                    raise BenchError("sock_diag refused to list the listening sockets")
                # inet_diag_msg: family, state, timer, retrans, then the source port and address.
                (sport,) = struct.unpack_from(">H", data, offset + _NLMSG_HEADER + 4)
                src = data[offset + _NLMSG_HEADER + 8 : offset + _NLMSG_HEADER + 12]
                if sport == port and src == _LOOPBACK:
                    return True
                offset += (length + 3) & ~3


def wait_until(proc: Proc, ready: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll `ready` every millisecond; return seconds since `proc` was exec'd."""
    deadline = time.perf_counter() + timeout
    while True:
        if ready():
            return time.perf_counter() - proc.started
        proc.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError(f"{proc.name}: no {what} after {timeout:.0f} s: {proc.tail()}")
        time.sleep(POLL_INTERVAL)


def wait_listening(proc: Proc, port: int, timeout: float = 10.0) -> float:
    """Wait until `proc` listens on `port`; return the time from exec to listening."""
    return wait_until(proc, lambda: is_listening(port), f"listener on port {port}", timeout)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, found through /proc/PID/task/TID/children."""
    pids = [pid]
    for current in pids:
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except FileNotFoundError:
                continue
            pids.extend(int(child) for child in children)
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of `pid`'s process tree, in seconds.

    Includes the children each member has already reaped (cutime, cstime), so that socat's
    short-lived per-connection processes are counted too.
    """
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime (14-17 in proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over `pid`'s process tree.

    PSS is what a multi-process design (socat ``fork``) really costs: RSS would count the shared
    libraries once per process.
    """
    rss = pss = 0
    for member in process_tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0])
            elif key == "Pss":
                pss += int(rest.split()[0])
    return rss, pss
