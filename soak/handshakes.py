"""Memory of a listening bridge over many TLS handshakes (not in CI, ``make soak-handshakes``).

A TLS server bridge (``python -m chardev_bridge``, pty local end, ``--second-client
replace``) takes N full handshakes from well-behaved TLS 1.2 and 1.3 clients, a quarter each
offering a ticket, offering none (session ids), or a TLS 1.3 client: each shuts down with
close_notify, which is what makes an OpenSSL server keep a session for resumption. Its RSS is
printed every ``--every`` handshakes; the run fails when it grew by more than ``--max-growth``
KiB after the warm-up.

    .venv/bin/python soak/handshakes.py --count 100000
    .venv/bin/python soak/handshakes.py --count 100000 --psk    # TLS-PSK (keys.psk) instead
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.certs import make_pki  # noqa: E402
from tests.support.net import client_context, free_port  # noqa: E402
from tests.support.procs import ENV, rss_kib  # noqa: E402

WARM_UP = 2000


def clients(client_dir: Path) -> list[ssl.SSLContext]:
    """TLS 1.2 with tickets, TLS 1.2 with session ids only, TLS 1.3, TLS 1.3."""
    contexts = []
    for version, ticket in [("1.2", True), ("1.2", False), ("1.3", True), ("1.3", True)]:
        ctx = client_context(client_dir)
        if version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if not ticket:
            ctx.options |= ssl.OP_NO_TICKET
        contexts.append(ctx)
    return contexts


def psk_clients(keys_dir: Path) -> list[ssl.SSLContext]:
    """A PSK client as the bridge makes one (sslpsk3 on Python < 3.13)."""
    from chardev_bridge.qemu.psk import build_psk_setup

    return [build_psk_setup(keys_dir, endpoint="client", username="qemu").context]


def handshake(port: int, ctx: ssl.SSLContext) -> None:
    """One full handshake, closed with close_notify."""
    with socket.create_connection(("127.0.0.1", port)) as tcp:
        # Else Nagle holds our close_notify for the server's delayed ACK (40 ms).
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hostname = "127.0.0.1" if ctx.check_hostname else None
        ctx.wrap_socket(tcp, server_hostname=hostname).unwrap()


def main() -> int:
    """Run the handshakes; exit 1 if memory grew past the bound after the warm-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--max-growth", type=int, default=4096, help="KiB (default 4096)")
    parser.add_argument("--psk", action="store_true", help="TLS-PSK instead of certificates")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.psk:
            keys = Path(tmp) / "psk"
            keys.mkdir()
            (keys / "keys.psk").write_text(f"qemu:{os.urandom(32).hex()}\n")
            (keys / "keys.psk").chmod(0o600)
            creds = ["--tls-creds-psk", str(keys)]
            contexts = psk_clients(keys)
        else:
            pki = make_pki(Path(tmp) / "pki")
            creds = ["--tls-creds", str(pki.server_dir)]
            contexts = clients(pki.client_dir)
        port = free_port()
        bridge = subprocess.Popen(
            [sys.executable, "-m", "chardev_bridge", "--server", "--host", "127.0.0.1",
             "--port", str(port), *creds, "--second-client", "replace", "-q"],
            env=ENV, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            start = time.monotonic()
            baseline = 0
            print(f"{'handshakes':>10} {'RSS KiB':>8} {'per s':>6}")
            for n in range(1, args.count + 1):
                handshake(port, contexts[n % len(contexts)])
                if n == WARM_UP:
                    baseline = rss_kib(bridge.pid)
                if n % args.every == 0 or n == WARM_UP:
                    rate = n / (time.monotonic() - start)
                    print(f"{n:>10} {rss_kib(bridge.pid):>8} {rate:>6.0f}", flush=True)
            growth = rss_kib(bridge.pid) - baseline
            print(f"growth after {WARM_UP} handshakes: {growth} KiB")
            return 0 if growth <= args.max_growth else 1
        finally:
            bridge.terminate()
            bridge.wait()


if __name__ == "__main__":
    sys.exit(main())
