"""The far side of every benchmark: a TLS server that requires a client certificate.

Run as a separate process (``python bench/bench_farside.py SERVERDIR REPORT_SOCKET``) so that it
never shares a GIL with the harness's own client loops or with a contestant. It prints ``port N``
on stdout once it is listening and logs one line per connection (protocol, cipher, or the
handshake error) on stderr. What a silent session (``Q``) cannot say over TLS it reports to the
harness as JSON datagrams on the unix socket REPORT_SOCKET (see `Reports`).

Why this far side: it is the same for every contestant, it is none of socat's, stunnel's or
chardev-bridge's code paths, and it is cheap per byte. Each connection gets a blocking thread;
the TLS work (handshake, ``SSL_read``, ``SSL_write``) runs in OpenSSL with the GIL released. The
socket is read in pieces of up to 1 MiB into a memory BIO and the records are decrypted from
there (`Conn`), so all the records that have arrived cost one ``recv(2)``, and each record one
Python call. (The earlier ``ssl.SSLSocket`` far side let OpenSSL read the socket itself, record
by record: behind socat's pty, which sends a record per pty read of a few KiB, it spent 3-4x the
CPU per byte that it spent behind the bridge's 16 KiB records.) ``openssl s_server`` as a sink
managed about 100 MB/s behind socat (small reads, every record written to stdout).

Its headroom is measured in every run (run.py, ``far_side_headroom`` in the JSON): the harness
encrypts the whole payload in advance, in records of 16 KiB and of 4 KiB, and pours the
ciphertext into a silent session, so that nothing but this process limits the figure; it must
beat every contestant's throughput. The bulk and pty rows also record every process's CPU use.
A full handshake costs it about 2 ms of CPU, which is OpenSSL 3.0's own cost (stunnel's client
side costs the same). Like QEMU, it sends no TLS session tickets, so every handshake any
contestant makes is a full one and none of them gets a resumption shortcut.

Protocol, driven by the first byte the client sends through the bridge:

- ``S`` + 8-byte big-endian N: reply ``R``, read exactly N bytes, reply ``K``, then sink to EOF.
- ``E``: reply ``R``, then echo every byte until EOF.
- ``I``: reply ``R``, then sink to EOF (an idle session, or a handshake probe that just closes).
- ``Q`` + 8-byte session id + 8-byte N: the silent far side. It never sends application data:
  it reports ``ready`` on REPORT_SOCKET once it has the header, reads exactly N bytes, reports
  ``done`` with its clock readings (handshake, first byte, last byte, the longest pause between
  reads), then sinks to EOF.

Clock readings are CLOCK_MONOTONIC (`now`), one clock for every process on the machine, so the
harness can set them against its own. The ``R`` reply (and the ``ready`` report) lets the harness
start its clock only once the whole path (local hop, bridge, TLS handshake) is up, so set-up cost
never leaks into a throughput or latency figure.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import ssl
import struct
import sys
import threading
import time
from pathlib import Path
from typing import cast

SOCKET_READ = 1 << 20
SINK_BUFFER = 1 << 16  # a read returns one record's plaintext, 16 KiB at most
ECHO_BUFFER = 1 << 16
THREAD_STACK = 256 * 1024  # 1000+ idle session threads must stay cheap
QUIET_HEADER = struct.Struct(">QQ")  # session id, byte count


def now() -> float:
    """CLOCK_MONOTONIC in seconds: comparable between the far side's and the harness's readings."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def log(line: str) -> None:
    """One line on stderr in one write(2), so lines from many threads never interleave."""
    os.write(2, (line + "\n").encode())


def make_context(server_dir: Path) -> ssl.SSLContext:
    """Build a server context from a QEMU-style server credentials directory."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_dir / "server-cert.pem", server_dir / "server-key.pem")
    ctx.load_verify_locations(server_dir / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0  # QEMU sends no tickets; keep every handshake a full one
    return ctx


class Conn:
    """A server-side TLS connection over a blocking socket, through memory BIOs.

    The socket is read in pieces of up to 1 MiB (one ``recv(2)`` for every record that has
    arrived), and each record is then decrypted from memory. It also keeps what the silent
    far side reports: when the handshake ended, the first and last byte arrived, how many
    records came, and the longest pause between two socket reads.
    """

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        # An anonymous mapping, not a bytearray (which zero-fills all its pages at once): an
        # idle session or a handshake probe touches only the pages its reads fill.
        self.buffer = memoryview(mmap.mmap(-1, SOCKET_READ))
        self.accepted = now()
        self.handshake_done = self.first = self.last = 0.0
        self.records = 0
        self.longest_pause = 0.0
        self.pause_after = 0  # plaintext bytes read before the longest pause began
        self.total = 0

    def flush(self) -> None:
        """Send whatever TLS has queued (handshake flights, alerts, application data)."""
        data = self.outgoing.read()
        if data:
            self.raw.sendall(data)

    def fill(self) -> None:
        """One socket read into the TLS input; EOFError when the peer closed."""
        n = self.raw.recv_into(self.buffer)
        if n == 0:
            raise EOFError
        t = now()
        if self.last and t - self.last > self.longest_pause:
            self.longest_pause, self.pause_after = t - self.last, self.total
        self.incoming.write(self.buffer[:n])

    def handshake(self) -> None:
        """Run the server handshake (which requires and checks the client certificate)."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()
        self.handshake_done = now()

    def read_into(self, view: memoryview) -> int:
        """Read up to len(view) plaintext bytes (one record at most); 0 at EOF."""
        while True:
            try:
                # With a buffer, read() returns a count (typeshed says bytes).
                n = cast(int, self.tls.read(len(view), view))
            except ssl.SSLWantReadError:
                self.flush()
                try:
                    self.fill()
                except EOFError:
                    return 0
                continue
            except ssl.SSLZeroReturnError:
                return 0
            self.last = now()
            self.first = self.first or self.last
            self.records += 1
            self.total += n
            return n

    def recv_exact(self, n: int) -> bytes:
        """Read exactly n bytes, or raise EOFError."""
        data = bytearray(n)
        view = memoryview(data)
        got = 0
        while got < n:
            k = self.read_into(view[got:])
            if k == 0:
                raise EOFError
            got += k
        return bytes(data)

    def sendall(self, data: bytes) -> None:
        """Encrypt and send `data`."""
        self.tls.write(data)
        self.flush()

    def cipher(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384``, for the log."""
        cipher = self.tls.cipher()
        return f"{self.tls.version()} {cipher[0] if cipher else '?'}"


class Reporter:
    """The far side's end of the report channel: one JSON datagram per event."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.lock = threading.Lock()

    def send(self, event: str, session: int, conn: Conn) -> None:
        """Report `event` for `session` with the connection's clock readings."""
        record = {
            "event": event,
            "id": session,
            "accepted": conn.accepted,
            "handshake_done": conn.handshake_done,
            "first": conn.first,
            "last": conn.last,
            "bytes": conn.total,
            "records": conn.records,
            "longest_pause": conn.longest_pause,
            "pause_after": conn.pause_after,
        }
        with self.lock:
            self.sock.sendto(json.dumps(record).encode(), self.path)


class Reports:
    """The harness's end of the report channel: a unix datagram socket it binds at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: dict[tuple[int, str], dict[str, float]] = {}

    def wait(self, session: int, event: str, timeout: float) -> dict[str, float]:
        """The report of `event` for `session`; TimeoutError if it does not come in time."""
        deadline = now() + timeout
        while (session, event) not in self.seen:
            left = deadline - now()
            if left <= 0:
                raise TimeoutError(f"the silent far side did not report {event!r}")
            self.sock.settimeout(left)
            record = json.loads(self.sock.recv(65536))
            self.seen[(record.pop("id"), record.pop("event"))] = record
        return self.seen.pop((session, event))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def sink(conn: Conn, limit: int | None) -> int:
    """Discard bytes until `limit` bytes were read (or EOF when limit is None)."""
    view = memoryview(bytearray(SINK_BUFFER))
    total = 0
    while limit is None or total < limit:
        want = SINK_BUFFER if limit is None else min(SINK_BUFFER, limit - total)
        n = conn.read_into(view[:want])
        if n == 0:
            break
        total += n
    return total


def echo(conn: Conn) -> None:
    """Send back every byte received, until EOF.

    The latency rows' far side, so it takes the fewest Python steps per round trip: one socket
    read, every complete record decrypted and encrypted again, one send, and no exception when
    nothing more has arrived (records left half-received wait for the next socket read).
    """
    tls, incoming, outgoing = conn.tls, conn.incoming, conn.outgoing
    raw, buffer = conn.raw, conn.buffer
    while n := raw.recv_into(buffer):
        incoming.write(buffer[:n])
        while incoming.pending or tls.pending():
            try:
                tls.write(tls.read(ECHO_BUFFER))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                return
        if reply := outgoing.read():
            raw.sendall(reply)


def serve(raw: socket.socket, ctx: ssl.SSLContext, reporter: Reporter) -> None:
    """Handshake and run one connection's protocol; never let an error kill the server."""
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        conn = Conn(raw, ctx)
        conn.handshake()
        log(f"tls {conn.cipher()}")
        run_protocol(conn, reporter)
    except (OSError, EOFError) as exc:
        log(f"error {type(exc).__name__}: {exc}")
    finally:
        raw.close()


def quiet(conn: Conn, reporter: Reporter) -> None:
    """The silent far side: read the header and N bytes, report, never send a byte."""
    session, size = QUIET_HEADER.unpack(conn.recv_exact(QUIET_HEADER.size))
    reporter.send("ready", session, conn)
    # The pause that counts is within the payload: not the one before it, while the
    # harness waited for the ``ready`` report.
    conn.longest_pause = 0.0
    if sink(conn, size) == size:
        reporter.send("done", session, conn)
    sink(conn, None)


def run_protocol(conn: Conn, reporter: Reporter) -> None:
    """Dispatch on the command byte (see the module docstring)."""
    command = conn.recv_exact(1)
    if command == b"S":
        (size,) = struct.unpack(">Q", conn.recv_exact(8))
        conn.sendall(b"R")
        got = sink(conn, size)
        if got == size:
            conn.sendall(b"K")
        sink(conn, None)
    elif command == b"E":
        conn.sendall(b"R")
        echo(conn)
    elif command == b"Q":
        quiet(conn, reporter)
    else:
        conn.sendall(b"R")
        sink(conn, None)


def main() -> int:
    """Listen on 127.0.0.1, print the port, serve each connection in its own thread."""
    ctx = make_context(Path(sys.argv[1]))
    reporter = Reporter(sys.argv[2])
    threading.stack_size(THREAD_STACK)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(f"port {listener.getsockname()[1]}", flush=True)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw, ctx, reporter), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
