"""The far side of every benchmark: a TLS server that requires a client certificate.

Run as a separate process (``python bench/bench_farside.py SERVERDIR``) so that it never shares a
GIL with the harness's own client loops. It prints ``port N`` on stdout once it is listening and
logs one line per connection (protocol, cipher, or the handshake error) on stderr.

Why this far side: it is the same for every contestant, it is none of socat's, stunnel's or
chardev-bridge's code paths, and it is cheap per byte. Each connection gets a blocking thread;
the TLS work (handshake, ``SSL_read``, ``SSL_write``) runs in OpenSSL with the GIL released, and
the sink reads into a 1 MiB buffer, so Python costs one call per TLS record (<= 16 KiB) at most.
Measured on the 2-core bench machine: it sinks 1.1-1.6 GB/s from a direct client using about
0.7 core-seconds per GB (AES-256-GCM decryption and the kernel's copies, which any TLS sink
pays), while ``openssl s_server`` as a sink managed about 100 MB/s behind the same socat (it
spends its time in small reads and in writing every record to stdout). Each run shows the
headroom again: the ``direct`` column is the harness's own TLS client straight to this server,
and the bulk rows record every process's CPU use. On two cores, harness + bridge + far side
together are the limit at about 1 GB/s for every contestant alike. A full handshake costs it
about 2 ms of CPU, which is OpenSSL 3.0's own cost (stunnel's client side costs the same).
Like QEMU, it sends no TLS session tickets, so every handshake any contestant makes is a full
one and none of them gets a resumption shortcut.

Protocol, driven by the first byte the client sends through the bridge:

- ``S`` + 8-byte big-endian N: reply ``R``, read exactly N bytes, reply ``K``, then sink to EOF.
- ``E``: reply ``R``, then echo every byte until EOF.
- ``I``: reply ``R``, then sink to EOF (an idle session, or a handshake probe that just closes).

The ``R`` reply lets the harness start its clock only once the whole path (local hop, bridge, TLS
handshake) is up, so set-up cost never leaks into a throughput or latency figure.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
import threading
from pathlib import Path

SINK_BUFFER = 1 << 20
ECHO_BUFFER = 1 << 16
THREAD_STACK = 256 * 1024  # 1000+ idle session threads must stay cheap


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


def recv_exact(conn: ssl.SSLSocket, n: int) -> bytes:
    """Read exactly n bytes, or raise EOFError."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def sink(conn: ssl.SSLSocket, limit: int | None) -> int:
    """Discard bytes until `limit` bytes were read (or EOF when limit is None)."""
    buf = bytearray(SINK_BUFFER)
    view = memoryview(buf)
    total = 0
    while limit is None or total < limit:
        want = SINK_BUFFER if limit is None else min(SINK_BUFFER, limit - total)
        n = conn.recv_into(view, want)
        if n == 0:
            break
        total += n
    return total


def echo(conn: ssl.SSLSocket) -> None:
    """Send back every byte received, until EOF."""
    while True:
        data = conn.recv(ECHO_BUFFER)
        if not data:
            return
        conn.sendall(data)


def serve(raw: socket.socket, ctx: ssl.SSLContext) -> None:
    """Handshake and run one connection's protocol; never let an error kill the server."""
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        with ctx.wrap_socket(raw, server_side=True) as conn:
            cipher = conn.cipher()
            log(f"tls {conn.version()} {cipher[0] if cipher else '?'}")
            run_protocol(conn)
    except (OSError, EOFError) as exc:
        log(f"error {type(exc).__name__}: {exc}")
    finally:
        raw.close()


def run_protocol(conn: ssl.SSLSocket) -> None:
    """Dispatch on the command byte (see the module docstring)."""
    command = recv_exact(conn, 1)
    if command == b"S":
        (size,) = struct.unpack(">Q", recv_exact(conn, 8))
        conn.sendall(b"R")
        got = sink(conn, size)
        if got == size:
            conn.sendall(b"K")
        sink(conn, None)
    elif command == b"E":
        conn.sendall(b"R")
        echo(conn)
    else:
        conn.sendall(b"R")
        sink(conn, None)


def main() -> int:
    """Listen on 127.0.0.1, print the port, serve each connection in its own thread."""
    ctx = make_context(Path(sys.argv[1]))
    threading.stack_size(THREAD_STACK)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(f"port {listener.getsockname()[1]}", flush=True)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw, ctx), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
