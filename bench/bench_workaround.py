"""CPU the QEMU 7.2 stall workaround adds per piece the bridge sends, measured in the TLS engine.

The workaround's whole effect on the sender is one more ``SSL_write`` per piece: the piece's last
byte goes in a record of its own (and 22 more bytes on the wire, 0.01 % of a 256 KiB piece). A
bulk round trip through the bench machine's scheduler spreads too widely to see that (one
contestant's five rounds span ±20 %), so this script encrypts the same piece with and without the
split, alternating many short batches so that both see the same machine, and prints the median
microseconds per piece of each as JSON. run.py divides the difference by the bridge's CPU time per
piece in the bulk rounds.

    PYTHONPATH=<bridge src> python bench_workaround.py CLIENT_CREDS_DIR SERVER_CREDS_DIR
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import sys
import time

from chardev_bridge.tls.engine import TLSEngine
from chardev_bridge.tls.stream import SEND_PIECE

BATCHES = 100
PIECES_PER_BATCH = 300


def engines(client_dir: str, server_dir: str) -> tuple[TLSEngine, TLSEngine]:
    """A client and a server engine with the handshake done, in memory."""
    client_ctx = ssl.create_default_context(cafile=f"{client_dir}/ca-cert.pem")
    client_ctx.load_cert_chain(f"{client_dir}/client-cert.pem", f"{client_dir}/client-key.pem")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(f"{server_dir}/server-cert.pem", f"{server_dir}/server-key.pem")
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSEngine(server_ctx, server_side=True)
    for _ in range(10):
        done = [engine.do_handshake() for engine in (client, server)]
        if all(done):
            return client, server
        server.receive_ciphertext(client.data_to_send())
        client.receive_ciphertext(server.data_to_send())
    raise RuntimeError("the in-memory handshake did not finish")


def main(client_dir: str, server_dir: str) -> None:
    sender, _ = engines(client_dir, server_dir)
    piece = memoryview(os.urandom(SEND_PIECE))
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(BATCHES):
        for split in (False, True):
            started = time.process_time()
            for _ in range(PIECES_PER_BATCH):
                sender.write_plaintext(piece, split_last=split)
                sender.data_to_send()
            timings[split].append((time.process_time() - started) / PIECES_PER_BATCH * 1e6)
    print(
        json.dumps(
            {
                "piece_bytes": SEND_PIECE,
                "with_us": statistics.median(timings[True]),
                "without_us": statistics.median(timings[False]),
                "batches": BATCHES,
                "pieces_per_batch": PIECES_PER_BATCH,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
