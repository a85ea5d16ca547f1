"""The measurements, driven from the harness's side of the local hop.

Every figure is taken between the local hop and the far side, through one contestant at a time,
with the contestant started fresh for each round. The far side's ``R`` reply, or its ``ready``
report for a silent session (see bench_farside.py), marks the moment the whole path is up;
clocks start after it. A silent session's clock stops at the far side's reading of its last
byte, which it reports with CLOCK_MONOTONIC, the harness's clock too (`now`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import select
import socket
import ssl
import statistics
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench_certs import Creds
from bench_contestants import Contestant, Setup, far_connections
from bench_farside import QUIET_HEADER, Reports, now
from bench_procs import (
    BenchError,
    Proc,
    Procs,
    cpu_seconds,
    free_port,
    memory_kib,
    wait_listening,
    wait_until,
)

SEND_CHUNK = 4 << 20  # harness-side writes: big, so the harness is never the bottleneck
PTY_CHUNK = 64 << 10
REPLY_TIMEOUT = 10.0  # covers a Python bridge's imports plus a TLS handshake
IO_TIMEOUT = 30.0
SESSION_TIMEOUT = 5.0
PTY_CONNECT_GRACE = 2.0
SETTLE = 0.5  # let freed/allocated memory settle before reading /proc
# What the idle-memory target is measured against: the interpreter with the imports a bridge
# cannot do without (CLARIFICATIONS.md, issue 15), in the same run.
IMPORT_FLOOR = (
    "import trio, ssl, cryptography.x509, signal; print('ready', flush=True); signal.pause()"
)


@dataclass
class Figure:
    """One measured value plus the raw numbers behind it (kept in the JSON)."""

    value: float
    details: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- connections


def tcp_connect(port: int, timeout: float = REPLY_TIMEOUT) -> socket.socket:
    """A TCP_NODELAY connection to 127.0.0.1:port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@functools.cache
def client_context(creds: Creds) -> ssl.SSLContext:
    """The harness's own TLS client context, built once (loading it costs more than a handshake)."""
    ctx = ssl.create_default_context(cafile=str(creds.ca))
    ctx.load_cert_chain(creds.client_cert, creds.client_key)
    return ctx


def tls_connect(creds: Creds, port: int) -> socket.socket:
    """A direct TLS connection to the far side: the no-bridge reference."""
    return client_context(creds).wrap_socket(tcp_connect(port), server_hostname="localhost")


def expect(sock: socket.socket, token: bytes) -> None:
    """Read exactly `token` from `sock` or raise BenchError."""
    got = b""
    while len(got) < len(token):
        chunk = sock.recv(len(token) - len(got))
        if not chunk:
            raise BenchError(f"connection closed while waiting for {token!r}")
        got += chunk
    if got != token:
        raise BenchError(f"expected {token!r} from the far side, got {got!r}")


def start_session(sock: socket.socket, command: bytes) -> None:
    """Send a far-side command and wait for its ``R``: the path is then fully up."""
    sock.sendall(command)
    expect(sock, b"R")


@contextmanager
def bridge(procs: Procs, contestant: Contestant, many: bool = False) -> Iterator[tuple[Proc, int]]:
    """Run a TCP-listening bridge for the duration of the block; errors name its last log line."""
    lport = free_port()
    proc = contestant.start_tcp(procs, lport, many)
    try:
        wait_listening(proc, lport)
        yield proc, lport
    except OSError as exc:
        raise BenchError(f"{exc!r}; its log: {proc.tail()}") from exc
    finally:
        procs.kill(proc)


# ---------------------------------------------------------------------------- 1. bulk


Transfer = Callable[[], float | None]


def timed_transfer(size: int, transfer: Transfer, watch: Sequence[int]) -> list[float]:
    """Time `transfer`, which moves `size` bytes and waits for the far side to have them all.

    `transfer` returns the far side's own clock reading of its last byte (a silent session), or
    None when the harness's clock at its return is the end (the far side's ``K`` came back).
    Returns [MB/s (10^6 bytes/s), each pid in `watch`'s CPU use over the interval in % of one
    core, then the harness's own]: on two cores, that shows which process is the bottleneck.
    """
    cpu0 = [cpu_seconds(pid) for pid in watch]
    harness0 = harness_cpu()
    started = now()
    end = transfer()
    returned = now()
    elapsed = (end or returned) - started
    cpu = [
        (cpu_seconds(pid) - t0) / (returned - started) * 100
        for pid, t0 in zip(watch, cpu0, strict=True)
    ]
    return [size / elapsed / 1e6, *cpu, (harness_cpu() - harness0) / (returned - started) * 100]


def harness_cpu() -> float:
    """This process's own CPU seconds (its writes into a pty are charged here, in the kernel)."""
    times = os.times()
    return times.user + times.system


def send_bulk(sock: socket.socket, data: memoryview, watch: Sequence[int]) -> list[float]:
    """Run the ``S`` protocol over `sock`; the clock runs from the first byte to ``K``."""
    sock.settimeout(IO_TIMEOUT)
    start_session(sock, b"S" + struct.pack(">Q", len(data)))

    def transfer() -> None:
        for offset in range(0, len(data), SEND_CHUNK):
            sock.sendall(data[offset : offset + SEND_CHUNK])
        expect(sock, b"K")

    return timed_transfer(len(data), transfer, watch)


def throughput_figure(rounds: list[list[float]], who: Sequence[str]) -> Figure:
    """The median MB/s of the rounds, with every round and the CPU use beside it."""
    details: dict[str, object] = {"rounds_mb_s": [round(r[0], 1) for r in rounds]}
    for i, name in enumerate(who, start=1):
        details[f"{name}_cpu_pct"] = [round(r[i]) for r in rounds]
    return Figure(statistics.median(r[0] for r in rounds), details)


def bulk_round(procs: Procs, contestant: Contestant, data: memoryview) -> list[float]:
    """Local TCP -> a fresh bridge -> TLS: [MB/s, bridge, far side and harness CPU %]."""
    with bridge(procs, contestant) as (proc, lport), tcp_connect(lport) as sock:
        return send_bulk(sock, data, [proc.popen.pid, contestant.setup.far_pid])


def bulk_direct(creds: Creds, far_pid: int, far_port: int, data: memoryview, rounds: int) -> Figure:
    """The harness's TLS client straight to the far side: the far side's headroom."""
    results = []
    for _ in range(rounds):
        with tls_connect(creds, far_port) as sock:
            results.append(send_bulk(sock, data, [far_pid]))
    return throughput_figure(results, ["farside", "harness"])


# ---------------------------------------------------------------------------- 2. pty


def make_raw(fd: int) -> None:
    """Full cfmakeraw (3.11's tty.setraw leaves INLCR/IGNCR and friends on)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def wait_fd(fd: int, event: int, timeout: float) -> None:
    """Block until `fd` is ready for `event` or raise BenchError."""
    poller = select.poll()
    poller.register(fd, event)
    if not poller.poll(timeout * 1000):
        raise BenchError(f"pty not ready after {timeout:.0f} s")


def pty_write_all(fd: int, data: memoryview) -> None:
    """Write everything, in chunks, never blocking longer than IO_TIMEOUT on one chunk."""
    offset = 0
    while offset < len(data):
        wait_fd(fd, select.POLLOUT, IO_TIMEOUT)
        offset += os.write(fd, data[offset : offset + PTY_CHUNK])


def pty_expect(fd: int, token: bytes) -> None:
    """Read exactly `token` from the pty or raise BenchError."""
    got = b""
    while len(got) < len(token):
        wait_fd(fd, select.POLLIN, REPLY_TIMEOUT)
        got += os.read(fd, len(token) - len(got))
    if got != token:
        raise BenchError(f"expected {token!r} through the pty, got {got!r}")


@contextmanager
def pty_bridge(procs: Procs, contestant: Contestant) -> Iterator[tuple[Proc, int]]:
    """A fresh bridge whose local end is a pty, connected to the far side: (its Proc, the pty
    opened raw). Errors name its last log line; it is killed when the block ends."""
    if not contestant.has_pty:
        raise BenchError(f"{contestant.name} cannot serve a pty")
    connections = far_connections(contestant.setup)

    def connected() -> bool:
        return far_connections(contestant.setup) > connections

    proc = contestant.start_pty(procs)
    try:
        wait_until(proc, lambda: contestant.pty_path(proc) is not None, "pty", REPLY_TIMEOUT)
        fd = os.open(str(contestant.pty_path(proc)), os.O_RDWR | os.O_NOCTTY)
        try:
            make_raw(fd)
            # Write only once the bridge is connected, in case it drops what a pty carries
            # while it has no peer; a bridge that connects on the first byte gets 2 s grace.
            with contextlib.suppress(BenchError):
                wait_until(proc, connected, "connection", PTY_CONNECT_GRACE)
            yield proc, fd
        finally:
            os.close(fd)
    except OSError as exc:
        raise BenchError(f"{exc!r}; its log: {proc.tail()}") from exc
    finally:
        procs.kill(proc)


def pty_round(procs: Procs, contestant: Contestant, data: memoryview) -> list[float]:
    """A writer on a fresh bridge's pty -> TLS: [MB/s, bridge, far side and harness CPU %]."""
    with pty_bridge(procs, contestant) as (proc, fd):
        pty_write_all(fd, memoryview(b"S" + struct.pack(">Q", len(data))))
        pty_expect(fd, b"R")

        def transfer() -> None:
            pty_write_all(fd, data)
            pty_expect(fd, b"K")

        return timed_transfer(len(data), transfer, [proc.popen.pid, contestant.setup.far_pid])


# ---------------------------------------------------------------------------- silent far side

Write = Callable[[memoryview], None]


def quiet_header(size: int) -> tuple[int, bytes]:
    """A new session id and the ``Q`` header announcing `size` bytes to the silent far side."""
    session = secrets.randbits(63)
    return session, b"Q" + QUIET_HEADER.pack(session, size)


def pour_silent(
    write: Write, reports: Reports, data: memoryview, watch: Sequence[int]
) -> tuple[list[float], dict[str, float]]:
    """Announce `data` to the silent far side, wait for its ``ready``, pour, wait for ``done``.

    The clock runs from the first payload byte the harness writes to the far side's reading of
    the last one. Returns the `timed_transfer` figures and the far side's ``done`` report.
    """
    session, header = quiet_header(len(data))
    write(memoryview(header))
    wait_report(reports, session, "ready")
    done: dict[str, float] = {}

    def transfer() -> float:
        write(data)
        done.update(wait_report(reports, session, "done"))
        return done["last"]

    return timed_transfer(len(data), transfer, watch), done


def wait_report(reports: Reports, session: int, event: str) -> dict[str, float]:
    """The far side's `event` report for `session`, or BenchError after IO_TIMEOUT."""
    try:
        return reports.wait(session, event, IO_TIMEOUT)
    except TimeoutError as exc:
        raise BenchError(str(exc)) from exc


def sock_writer(sock: socket.socket) -> Write:
    """Write everything to `sock` in SEND_CHUNK pieces."""
    sock.settimeout(IO_TIMEOUT)

    def write(data: memoryview) -> None:
        for offset in range(0, len(data), SEND_CHUNK):
            sock.sendall(data[offset : offset + SEND_CHUNK])

    return write


def silent_round(procs: Procs, contestant: Contestant, data: memoryview) -> list[float]:
    """Local TCP -> a fresh bridge -> TLS -> the silent far side: [MB/s, bridge, far side and
    harness CPU %, the far side's longest pause in s, its mean plaintext bytes per record]."""
    setup = contestant.setup
    with bridge(procs, contestant) as (proc, lport), tcp_connect(lport) as sock:
        watch = [proc.popen.pid, setup.far_pid]
        figures, done = pour_silent(sock_writer(sock), setup.reports, data, watch)
    return [*figures, *pause_and_records(done)]


def pause_and_records(done: dict[str, float]) -> list[float]:
    """[the longest pause the far side saw between reads, its mean plaintext bytes per record]:
    the second says what records the contestant sends (socat sends one per pty read)."""
    return [done["longest_pause"], done["bytes"] / max(done["records"], 1)]


def silent_pty_round(procs: Procs, contestant: Contestant, data: memoryview) -> list[float]:
    """A writer on a fresh bridge's pty -> TLS -> the silent far side: as `silent_round`."""
    setup = contestant.setup
    with pty_bridge(procs, contestant) as (proc, fd):
        watch = [proc.popen.pid, setup.far_pid]
        figures, done = pour_silent(
            functools.partial(pty_write_all, fd), setup.reports, data, watch
        )
    return [*figures, *pause_and_records(done)]


def silent_figure(rounds: list[list[float]]) -> Figure:
    """A throughput figure, with the longest pause the far side saw in each round and the mean
    size of the records it got."""
    figure = throughput_figure([r[:-2] for r in rounds], ["bridge", "farside", "harness"])
    figure.details["longest_pause_s"] = [round(r[-2], 4) for r in rounds]
    figure.details["record_bytes_mean"] = [round(r[-1]) for r in rounds]
    return figure


def encrypted_session(
    creds: Creds, port: int, header: bytes, data: memoryview, record: int
) -> tuple[socket.socket, bytes, bytearray]:
    """A TLS session to the far side, with `header` and `data` encrypted ahead of time.

    `data` goes in records of `record` bytes. Returns the socket and the two ciphertexts, ready
    to be poured with no TLS cost in the harness.
    """
    sock = tcp_connect(port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(creds).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        memory_handshake(sock, tls, incoming, outgoing)
    except BaseException:
        sock.close()
        raise
    tls.write(header)
    header_ciphertext = outgoing.read()
    payload = bytearray()
    for offset in range(0, len(data), record):
        tls.write(data[offset : offset + record])
        payload += outgoing.read()
    return sock, header_ciphertext, payload


def memory_handshake(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    """Run a client handshake over `sock` through memory BIOs."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            chunk = sock.recv(SEND_CHUNK)
            if not chunk:
                raise BenchError("the far side closed during the handshake") from None
            incoming.write(chunk)
    sock.sendall(outgoing.read())


def far_side_capacity(setup: Setup, data: memoryview, record: int) -> list[float]:
    """The silent far side's own speed: ciphertext in `record`-byte records, encrypted in
    advance, poured straight into it: [MB/s, far side CPU %, harness CPU %]."""
    session, header = quiet_header(len(data))
    sock, header_ciphertext, payload = encrypted_session(
        setup.creds, setup.far_port, header, data, record
    )
    with sock:
        write = sock_writer(sock)
        write(memoryview(header_ciphertext))
        wait_report(setup.reports, session, "ready")

        def transfer() -> float:
            write(memoryview(payload))
            return wait_report(setup.reports, session, "done")["last"]

        return timed_transfer(len(data), transfer, [setup.far_pid])


# ---------------------------------------------------------------------------- 3. latency

WARMUP = 200


def echo_samples(
    send: Callable[[bytes], object], recv: Callable[[], bytes], count: int
) -> list[float]:
    """`count` 1-byte echo round trips after a warm-up, in microseconds."""
    samples = []
    for i in range(WARMUP + count):
        started = time.perf_counter_ns()
        send(b"x")
        if recv() != b"x":
            raise BenchError("echo returned the wrong byte")
        if i >= WARMUP:
            samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def round_trips(sock: socket.socket, count: int) -> list[float]:
    """`count` 1-byte echo round trips over `sock` (the far side in ``E`` mode)."""
    sock.settimeout(IO_TIMEOUT)
    start_session(sock, b"E")
    return echo_samples(sock.sendall, lambda: sock.recv(1), count)


def pty_read_byte(fd: int) -> bytes:
    """One byte from the pty, waiting at most IO_TIMEOUT."""
    wait_fd(fd, select.POLLIN, IO_TIMEOUT)
    return os.read(fd, 1)


def pty_latency_round(procs: Procs, contestant: Contestant, count: int) -> list[float]:
    """A keystroke written to a fresh bridge's pty, echoed by the far side, read back from
    the pty: [p50, p99, min] in microseconds."""
    with pty_bridge(procs, contestant) as (_, fd):
        pty_write_all(fd, memoryview(b"E"))
        pty_expect(fd, b"R")
        samples = echo_samples(lambda b: os.write(fd, b), lambda: pty_read_byte(fd), count)
    return percentiles(samples)


def percentiles(samples: list[float]) -> list[float]:
    """[p50, p99, min] of the samples."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return [cuts[49], cuts[98], min(samples)]


def latency_round(procs: Procs, contestant: Contestant, count: int) -> list[float]:
    """1-byte echo round trips through a fresh bridge: [p50, p99, min] in microseconds."""
    with bridge(procs, contestant) as (_, lport), tcp_connect(lport) as sock:
        return percentiles(round_trips(sock, count))


def latency_figures(rounds: list[list[float]]) -> list[Figure]:
    """[p50, p99]: each the median over the rounds, so one noisy spell cannot decide it."""
    details: dict[str, object] = {
        "p50_rounds_us": [round(r[0], 1) for r in rounds],
        "p99_rounds_us": [round(r[1], 1) for r in rounds],
        "min_us": round(min(r[2] for r in rounds), 1),
    }
    p50 = statistics.median(r[0] for r in rounds)
    return [Figure(p50, details), Figure(statistics.median(r[1] for r in rounds), details)]


def latency_direct(creds: Creds, far_port: int, count: int, rounds: int) -> list[Figure]:
    """The same round trips without a bridge: the far side's own share of the latency."""
    results = []
    for _ in range(rounds):
        with tls_connect(creds, far_port) as sock:
            results.append(percentiles(round_trips(sock, count)))
    return latency_figures(results)


# ---------------------------------------------------------------------------- first byte


def fresh_session_round(procs: Procs, contestant: Contestant, data: memoryview) -> list[float]:
    """A new session to the silent far side, written at once: the clock starts before the
    harness connects to a fresh bridge's local port; the header and `data` follow at once.

    Returns [ms to the far side's first byte, s to its last byte, the far side's handshake
    duration in s (accept to done), the longest pause between its reads in s, the bytes it had
    read when that pause began].
    """
    reports = contestant.setup.reports
    session, header = quiet_header(len(data))
    with bridge(procs, contestant) as (_, lport):
        started = now()
        with tcp_connect(lport) as sock:
            write = sock_writer(sock)
            write(memoryview(header))
            write(data)
            done = wait_report(reports, session, "done")
    handshake = done["handshake_done"] - done["accepted"]
    first_ms = (done["first"] - started) * 1000
    return [first_ms, done["last"] - started, handshake, done["longest_pause"], done["pause_after"]]


def fresh_session_figures(rounds: list[list[float]]) -> list[Figure]:
    """[first byte ms, whole push s]: medians over the rounds, every reading in the details."""
    details: dict[str, object] = {
        "first_byte_ms_rounds": [round(r[0], 2) for r in rounds],
        "push_s_rounds": [round(r[1], 3) for r in rounds],
        "far_side_handshake_s": [round(r[2], 4) for r in rounds],
        "longest_pause_s": [round(r[3], 4) for r in rounds],
        "pause_after_bytes": [int(r[4]) for r in rounds],
    }
    first = statistics.median(r[0] for r in rounds)
    return [Figure(first, details), Figure(statistics.median(r[1] for r in rounds), details)]


# ---------------------------------------------------------------------------- 4. sessions


def open_idle_sessions(lport: int, wanted: int) -> list[socket.socket]:
    """Open up to `wanted` idle sessions one after another; stop at the first that fails.

    Stopping at the first failure is how the design limit shows: a one-session-per-process
    bridge leaves the second connection unanswered, refused or closed.
    """
    sessions: list[socket.socket] = []
    while len(sessions) < wanted:
        try:
            sock = tcp_connect(lport, SESSION_TIMEOUT)
        except OSError:
            break
        try:
            start_session(sock, b"I")
        except (OSError, BenchError):
            sock.close()
            break
        sessions.append(sock)
    return sessions


def close_all(socks: list[socket.socket]) -> None:
    """Close every socket in the list."""
    for sock in socks:
        sock.close()


def sessions_in_one_process(procs: Procs, contestant: Contestant, wanted: int) -> Figure:
    """Idle sessions in one bridge process: PSS/RSS delta over the process tree per session."""
    with bridge(procs, contestant, many=True) as (proc, lport):
        time.sleep(SETTLE)
        rss0, pss0 = memory_kib(proc.popen.pid)
        sessions = open_idle_sessions(lport, wanted)
        try:
            if not sessions:
                raise BenchError("not even one session could be opened")
            time.sleep(SETTLE)
            rss1, pss1 = memory_kib(proc.popen.pid)
        finally:
            close_all(sessions)
    n = len(sessions)
    details: dict[str, object] = {
        "sessions": n,
        "per_process_limit": n < wanted,
        "idle_process_rss_kib": rss0,
        "idle_process_pss_kib": pss0,
        "rss_delta_kib_per_session": round((rss1 - rss0) / n, 1),
        "pss_delta_kib_per_session": round((pss1 - pss0) / n, 1),
    }
    # PSS, not RSS: for socat's fork-per-connection design RSS counts shared pages once per
    # child; for a single process the two deltas agree.
    return Figure((pss1 - pss0) / n, details)


def sessions_one_per_process(procs: Procs, contestant: Contestant, count: int) -> Figure:
    """When a process serves one session: run `count` bridges with a session each.

    Each session then costs a whole process, so the figure is the PSS of a process holding one
    session (PSS shares the interpreter's and libraries' file pages fairly between them).
    """
    running: list[Proc] = []
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            lport = free_port()
            running.append(contestant.start_tcp(procs, lport, many=False))
            wait_listening(running[-1], lport)
            socks.append(tcp_connect(lport))
            start_session(socks[-1], b"I")
        time.sleep(SETTLE)
        figures = [memory_kib(p.popen.pid) for p in running]
    finally:
        close_all(socks)
        for p in running:
            procs.kill(p)
    pss = statistics.mean(f[1] for f in figures)
    rss = statistics.mean(f[0] for f in figures)
    details: dict[str, object] = {"processes": count, "rss_kib_per_process": round(rss, 1)}
    return Figure(pss, details)


def sessions(procs: Procs, contestant: Contestant, wanted: int, sample: int) -> list[Figure]:
    """[idle sessions one process held, memory per idle session], as the design allows."""
    one = sessions_in_one_process(procs, contestant, wanted)
    held = one.details["sessions"]
    assert isinstance(held, int)
    if held > 1:
        return [Figure(held), one]
    # The design holds one session per process: the honest per-session cost is a process.
    per_process = sessions_one_per_process(procs, contestant, min(sample, wanted))
    per_process.details["in_one_process"] = one.details
    return [Figure(held), per_process]


# ---------------------------------------------------------------------------- handshakes


Dial = Callable[[], socket.socket]


def handshake_worker(dial: Dial, deadline: float, counts: list[int], errors: list[str]) -> None:
    """Open, confirm and close sessions until the deadline, counting the good ones."""
    done = 0
    while time.perf_counter() < deadline:
        try:
            with dial() as sock:
                start_session(sock, b"I")
            done += 1
        except (OSError, BenchError) as exc:
            errors.append(repr(exc))
            break
    counts.append(done)


def handshake_rate(dial: Dial, seconds: float, workers: int, watch: dict[str, int]) -> Figure:
    """Sessions opened, confirmed and closed per second by `workers` parallel clients.

    The details give the CPU use of each process in `watch` (% of one core): with two cores it
    tells whether the bridge or the far side was the limit.
    """
    counts: list[int] = []
    errors: list[str] = []
    cpu0 = {name: cpu_seconds(pid) for name, pid in watch.items()}
    started = time.perf_counter()
    threads = [
        threading.Thread(target=handshake_worker, args=(dial, started + seconds, counts, errors))
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors and not sum(counts):
        raise BenchError(errors[0])
    details: dict[str, object] = {"workers": workers, "handshakes": sum(counts)}
    details.update(seconds=round(elapsed, 2), errors=errors[:3])
    for name, pid in watch.items():
        details[f"{name}_cpu_pct"] = round((cpu_seconds(pid) - cpu0[name]) / elapsed * 100)
    return Figure(sum(counts) / elapsed, details)


def handshakes_shared(procs: Procs, contestant: Contestant, seconds: float, workers: int) -> Figure:
    """New sessions per second into one long-running bridge.

    Each session is a full TLS handshake with the far side (it sends no session tickets).
    """
    with bridge(procs, contestant, many=True) as (proc, lport):
        watch = {"bridge": proc.popen.pid, "farside": contestant.setup.far_pid}
        figure = handshake_rate(
            lambda: tcp_connect(lport, SESSION_TIMEOUT), seconds, workers, watch
        )
    figure.details["mode"] = "one process"
    return figure


def handshakes_direct(
    creds: Creds, far_pid: int, far_port: int, seconds: float, workers: int
) -> Figure:
    """The harness's TLS clients straight to the far side: its handshake headroom."""
    watch = {"farside": far_pid}
    return handshake_rate(lambda: tls_connect(creds, far_port), seconds, workers, watch)


def handshakes_one_at_a_time(procs: Procs, contestant: Contestant, seconds: float) -> Figure:
    """Sessions per second for a bridge that holds one session at a time.

    Sessions in a row in one process if it serves one after another, else one new process per
    session (exec included), which is then what a new session costs.
    """
    with bridge(procs, contestant) as (_, lport):
        figure = handshake_rate(lambda: tcp_connect(lport, SESSION_TIMEOUT), seconds, 1, {})
    if not figure.details["errors"]:
        figure.details["mode"] = "one process, one session at a time"
        return figure
    return handshakes_per_process(procs, contestant, seconds)


def handshakes_per_process(procs: Procs, contestant: Contestant, seconds: float) -> Figure:
    """New sessions per second when each session needs a new bridge process (exec included)."""
    done = 0
    started = time.perf_counter()
    while done < 3 or time.perf_counter() - started < seconds:
        with bridge(procs, contestant) as (_, lport), tcp_connect(lport) as sock:
            start_session(sock, b"I")
        done += 1
    elapsed = time.perf_counter() - started
    details: dict[str, object] = {"mode": "process per session", "handshakes": done}
    details["seconds"] = round(elapsed, 2)
    return Figure(done / elapsed, details)


# ---------------------------------------------------------------------- 5. start-up, idle memory


def startup(procs: Procs, contestant: Contestant, rounds: int) -> Figure:
    """Seconds from exec to a LISTEN socket on the local port (median of `rounds`)."""
    results = []
    for _ in range(rounds):
        lport = free_port()
        proc = contestant.start_tcp(procs, lport, many=False)
        try:
            results.append(wait_listening(proc, lport))
        finally:
            procs.kill(proc)
    return Figure(statistics.median(results), {"rounds": [round(r, 4) for r in results]})


def rss_mib(proc: Proc) -> float:
    """The RSS of `proc`'s process tree in MiB, once its memory has settled."""
    time.sleep(SETTLE)
    return memory_kib(proc.popen.pid)[0] / 1024


def idle_rss(procs: Procs, contestant: Contestant, rounds: int) -> Figure:
    """RSS of one idle bridge (listening on its local port, no session) in MiB, median of
    `rounds` starts."""
    results = []
    for _ in range(rounds):
        with bridge(procs, contestant) as (proc, _):
            results.append(rss_mib(proc))
    return Figure(statistics.median(results), {"rounds_mib": [round(r, 2) for r in results]})


def has_output(proc: Proc) -> bool:
    """True once `proc` has written something to stdout."""
    return proc.out_path.stat().st_size > 0


def import_floor_rss(procs: Procs, rounds: int) -> Figure:
    """RSS in MiB of this interpreter (``-I``) holding only ``import trio, ssl,
    cryptography.x509``: what any bridge on this stack pays before it does anything."""
    results = []
    for _ in range(rounds):
        proc = procs.spawn("import floor", [sys.executable, "-I", "-c", IMPORT_FLOOR])
        try:
            wait_until(proc, functools.partial(has_output, proc), "imports", REPLY_TIMEOUT)
            results.append(rss_mib(proc))
        finally:
            procs.kill(proc)
    details: dict[str, object] = {"python": sys.executable, "code": IMPORT_FLOOR}
    details["rounds_mib"] = [round(r, 2) for r in results]
    return Figure(statistics.median(results), details)
