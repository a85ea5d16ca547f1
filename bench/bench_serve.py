"""The console server at scale, beside separate processes and stunnel (part of ``make bench``).

One ``chardev-bridge serve`` process holds PAIRS pairs of bridges (default 250, so 500
bridges): ``s<i>`` listens with TLS (local end a unix socket), ``c<i>`` connects to it with
TLS (local end a pty), all on one credential directory. Measured:

* exec to ``READY=1`` (sd_notify, our own datagram socket), and to every session up;
* RSS with every session live;
* context switches and CPU of the whole process over 10 s while everything is idle;
* a SIGHUP with nothing changed: RELOADING=1 to READY=1, and no session dropped;
* a one-line round trip on every pair (pty → TLS → unix socket and back).

Beside it: SEPARATE pairs as separate ``chardev-bridge`` processes (memory and idle wake-ups
scaled to PAIRS; 500 processes would take much of this machine), and stunnel holding PAIRS
server and PAIRS client services in one config with PAIRS live connections.

    python bench/bench_serve.py              # 250 pairs
    python bench/bench_serve.py --pairs 20   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
import tty
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench_certs import Creds, make_creds
from bench_procs import BenchError, Proc, Procs, free_port, memory_kib

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MIB = 1024
IDLE_SECONDS = 10.0


def context_switches(pid: int) -> dict[int, int]:
    """Voluntary and involuntary context switches so far, of each thread of ``pid``."""
    counts: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        counts[int(task.name)] = sum(
            int(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        )
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cost(pids: list[int]) -> tuple[float, float]:
    """Context switches per second and CPU seconds of ``pids`` over IDLE_SECONDS (threads
    that begin meanwhile count from zero; those that end are left out)."""
    before = {p: context_switches(p) for p in pids}
    cpu = sum(cpu_seconds(p) for p in pids)
    time.sleep(IDLE_SECONDS)
    switches = 0
    for pid in pids:
        for tid, count in context_switches(pid).items():
            switches += count - before[pid].get(tid, 0)
    return switches / IDLE_SECONDS, sum(cpu_seconds(p) for p in pids) - cpu


def wait_for(what: str, ready: Callable[[], bool], timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        proc.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} within {timeout:g}s: {proc.tail()}")
        time.sleep(0.01)


def distinct_ports(count: int) -> list[int]:
    """``count`` different ports that were free a moment ago (the kernel may hand out the
    same free port twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def pair_tables(work: Path, creds: Creds, pairs: int) -> str:
    text = f'[defaults]\nreconnect = 1\nlink = "{work}/{{name}}"\n'
    for i, port in enumerate(distinct_ports(pairs)):
        text += (
            f'[bridge.s{i}]\nserver = true\nhost = "127.0.0.1"\nport = {port}\n'
            f'tls-creds = "{creds.server_dir}"\nlocal = "unix-listen:{work}/s{i}.sock"\n'
            f'[bridge.c{i}]\nhost = "127.0.0.1"\nport = {port}\ntls-creds = "{creds.client_dir}"\n'
        )
    return text


class Notifications:
    """Our own NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait(self, prefix: str, timeout: float, proc: Proc) -> float:
        """Block until a message starting with ``prefix``; returns when it came."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.1)
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"no {prefix} within {timeout:g}s") from None
                continue
            if message.startswith(prefix):
                return time.perf_counter()


def status(port: int) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_status", timeout=10) as reply:
        bridges: dict[str, dict[str, object]] = json.load(reply)["bridges"]
    return bridges


def round_trip(work: Path, name: str, local_sock: Path) -> None:
    """One line each way between a pty link and a unix local end."""
    fd = os.open(work / name, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(local_sock))
            os.write(fd, b"ping\n")
            got = b""
            while not got.endswith(b"\n"):
                got += client.recv(64)
            client.sendall(b"pong\n")
            back = b""
            while not back.endswith(b"\n"):
                back += os.read(fd, 64)
        if got != b"ping\n" or back != b"pong\n":
            raise BenchError(f"{name}: round trip gave {got!r}, {back!r}")
    finally:
        os.close(fd)


def measure_serve(procs: Procs, work: Path, creds: Creds, pairs: int) -> dict[str, float]:
    config = work / "consoles.toml"
    status_port = free_port()
    config.write_text(
        pair_tables(work, creds, pairs) + f'[status]\nlisten = "tcp:127.0.0.1:{status_port}"\n'
    )
    notify = Notifications(work / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "chardev_bridge", "serve", "-q", "--config", str(config)]
    started = time.perf_counter()
    proc = procs.spawn("serve", argv, env=env)
    ready = notify.wait("READY=1", 120, proc) - started
    clients = [f"c{i}" for i in range(pairs)]
    wait_for(
        "every session up",
        lambda: all(status(status_port)[c]["state"] == "connected" for c in clients),
        120,
        proc,
    )
    all_up = time.perf_counter() - started
    rss_kib, _ = memory_kib(proc.popen.pid)
    switches, cpu = idle_cost([proc.popen.pid])
    before = status(status_port)
    proc.popen.send_signal(signal.SIGHUP)
    hup = time.perf_counter()
    notify.wait("RELOADING=1", 30, proc)
    reload_s = notify.wait("READY=1", 60, proc) - hup
    after = status(status_port)
    dropped = sum(
        1
        for c in clients
        if after[c]["state"] != "connected" or after[c]["sessions"] != before[c]["sessions"]
    )
    began = time.perf_counter()
    for i in range(pairs):
        round_trip(work, f"c{i}", work / f"s{i}.sock")
    trips = time.perf_counter() - began
    procs.kill(proc)
    return {
        "exec to READY=1, s": ready,
        "exec to every session up, s": all_up,
        "RSS, MiB": rss_kib / MIB,
        "idle context switches /s": switches,
        "idle CPU s in 10 s": cpu,
        "SIGHUP, nothing changed, s": reload_s,
        "sessions dropped by SIGHUP": dropped,
        "round trips, all pairs, s": trips,
    }


def measure_separate(procs: Procs, work: Path, creds: Creds, pairs: int) -> dict[str, float]:
    """Separate processes, one per bridge."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    bridge = [sys.executable, "-m", "chardev_bridge", "-q"]
    live: list[Proc] = []
    for i, number in enumerate(distinct_ports(pairs)):
        port = ["--host", "127.0.0.1", "--port", str(number)]
        server = ["--server", *port, "--tls-creds", str(creds.server_dir)]
        client = [*port, "--reconnect", "1", "--tls-creds", str(creds.client_dir)]
        local = f"unix-listen:{work}/p{i}.sock"
        live.append(procs.spawn(f"s{i}", [*bridge, *server, "--local", local], env=env))
        link = work / f"p{i}"
        live.append(procs.spawn(f"c{i}", [*bridge, *client, "--link", str(link)], env=env))
        wait_for(f"pair {i}", link.exists, 60, live[-1])
    time.sleep(2.0)  # every client connects within its first try
    rss = sum(memory_kib(p.popen.pid)[0] for p in live) / MIB
    switches, cpu = idle_cost([p.popen.pid for p in live])
    for p in live:
        procs.kill(p)
    return {"RSS, MiB": rss, "idle context switches /s": switches, "idle CPU s in 10 s": cpu}


def measure_stunnel(procs: Procs, work: Path, creds: Creds, pairs: int) -> dict[str, float]:
    """stunnel with PAIRS server and PAIRS client services, a connection through each pair."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(pairs + 16)
    sink_port = sink.getsockname()[1]
    lines = ["foreground = yes", "pid =", "debug = warning"]
    entries: list[int] = []
    ports = distinct_ports(2 * pairs)
    for i in range(pairs):
        tls_port, plain_port = ports[2 * i], ports[2 * i + 1]
        entries.append(plain_port)
        lines += [
            f"[s{i}]",
            f"accept = 127.0.0.1:{tls_port}",
            f"connect = 127.0.0.1:{sink_port}",
            f"cert = {creds.server_dir / 'server-cert.pem'}",
            f"key = {creds.server_dir / 'server-key.pem'}",
            f"CAfile = {creds.server_dir / 'ca-cert.pem'}",
            "verifyChain = yes",
            f"[c{i}]",
            "client = yes",
            f"accept = 127.0.0.1:{plain_port}",
            f"connect = 127.0.0.1:{tls_port}",
            f"cert = {creds.client_cert}",
            f"key = {creds.client_key}",
            f"CAfile = {creds.ca}",
            "verifyChain = yes",
        ]
    conf = work / "stunnel.conf"
    conf.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    proc = procs.spawn("stunnel", ["stunnel", str(conf)])
    clients: list[socket.socket] = []
    held: list[socket.socket] = []
    try:
        for port in entries:
            deadline = time.monotonic() + 30
            while True:
                try:
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                    break
                except ConnectionRefusedError:
                    proc.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError(f"stunnel: nothing listens on {port}") from None
                    time.sleep(0.01)
        for client in clients:
            client.sendall(b"ping\n")
        sink.settimeout(30)
        for _ in clients:
            conn, _ = sink.accept()
            conn.settimeout(10)
            if conn.recv(5) != b"ping\n":
                raise BenchError("stunnel: a line did not arrive")
            held.append(conn)
        all_up = time.perf_counter() - started
        rss_kib, _ = memory_kib(proc.popen.pid)
        switches, cpu = idle_cost([proc.popen.pid])
    finally:
        for s in clients + held + [sink]:
            s.close()
        procs.kill(proc)
    return {
        "exec to every session up, s": all_up,
        "RSS, MiB": rss_kib / MIB,
        "idle context switches /s": switches,
        "idle CPU s in 10 s": cpu,
    }


TARGETS: dict[str, tuple[str, Callable[[float, int], bool]]] = {
    "exec to READY=1, s": ("<= 3 s", lambda v, n: v <= 3.0),
    "RSS, MiB": ("<= 100 MiB", lambda v, n: v <= 100.0),
    "idle context switches /s": ("< 10 /s", lambda v, n: v < 10.0),
    "SIGHUP, nothing changed, s": ("<= 1 s", lambda v, n: v <= 1.0),
    "sessions dropped by SIGHUP": ("0", lambda v, n: v == 0),
}


def run(pairs: int, separate: int) -> dict[str, object]:
    """Measure all three; print the table; return the figures."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        creds = make_creds(work / "pki")
        procs = Procs(work)
        results: dict[str, dict[str, float]] = {}
        try:
            results["serve"] = measure_serve(procs, work, creds, pairs)
            scale = pairs / separate
            measured = measure_separate(procs, work, creds, separate)
            results["separate"] = {k: v * scale for k, v in measured.items()}
            try:
                results["stunnel"] = measure_stunnel(procs, work, creds, pairs)
            except BenchError as exc:
                print(f"stunnel: n/a: {exc}")
                results["stunnel"] = {}
        finally:
            procs.kill_all()
    rows = list(results["serve"])
    header = ["figure", "serve", f"separate (x{pairs / separate:g})", "stunnel", "target", "met"]
    print(f"\nconsole server: {pairs} pairs ({2 * pairs} bridges), idle over {IDLE_SECONDS:g} s")
    print(" | ".join(header))
    for row in rows:
        value = results["serve"][row]
        target, met = TARGETS.get(row, ("-", lambda v, n: True))
        cells = [
            row,
            f"{value:.3g}",
            f"{results['separate'][row]:.3g}" if row in results["separate"] else "-",
            f"{results['stunnel'][row]:.3g}" if row in results["stunnel"] else "-",
            target,
            ("yes" if met(value, pairs) else "NO") if target != "-" else "-",
        ]
        print(" | ".join(cells))
    return {"pairs": pairs, "separate_measured": separate, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=250)
    parser.add_argument("--separate", type=int, default=25, help="pairs measured as processes")
    args = parser.parse_args(argv)
    figures = run(args.pairs, min(args.separate, args.pairs))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = BENCH_DIR / "results" / f"serve-{stamp}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
