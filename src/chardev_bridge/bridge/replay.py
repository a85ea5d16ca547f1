"""When what a TLS 1.3 client sent a silent server may still have to go out again.

TLS 1.3 lets a client finish its handshake before the server has judged its certificate, and
QEMU 7.2 judges it only then: on a rejection it closes without reading, and everything the
client sent meanwhile is lost with the connection. So a connecting bridge keeps a copy of what
it sends a server that has said nothing yet, until one of these shows that the server took the
session:

* the server says something (data, or anything the TLS layer turns into data);
* the server's TCP acknowledged more than a server that reads nothing can hold unread (its
  receive buffer): it is reading, so it accepted us;
* the replay window ends: a rejection comes on the path of the handshake's last flight, so a
  few handshake durations after it, it would have come.

The rules here are pure; :class:`chardev_bridge.bridge.datapath.Session` applies them.
"""

from __future__ import annotations

import enum

# A TLS server that ends the connection within this time of the handshake, having sent nothing
# but perhaps an alert, rejected our certificate after the handshake.
QUICK_REJECT_SECONDS = 2.0

# The replay window. Measured on loopback: QEMU 7.2 (tls-authz) closed 0.07-6.6 ms after our
# handshake completed, an OpenSSL server 0.5-7.5 ms, for handshakes of 2-15 ms. So a few
# handshake durations are enough; the floor absorbs a busy host's scheduling.
REPLAY_WINDOW_FLOOR = 0.2
REPLAY_WINDOW_HANDSHAKES = 4

# What a server that reads nothing can have acknowledged at most: its socket's receive buffer.
# Linux starts one at tcp_rmem[1], 128 KiB by default, and grows it only as the application
# reads; a TLS 1.3 server that never read acknowledged 130 KB here (client handshake included),
# one with SO_RCVBUF raised to 1 MiB 2 MB. Past this many acknowledged bytes the server is
# reading what we send.
PEER_UNREAD_MAX = 4 * 1024 * 1024

# The most kept while the server's acknowledgments can be read. Flow control already bounds
# the copy by PEER_UNREAD_MAX plus our own send buffer (4 MiB by Linux's default): this only
# guards a host tuned far past that.
KEPT_MAX = 16 * 1024 * 1024

# The most kept when they cannot be read (a transport that is not a TCP socket): past it the
# sender waits for the server to speak or for the window to end.
KEPT_MAX_UNSEEN = 256 * 1024


class ReplayStep(enum.Enum):
    """What to do before sending the next piece to a server that has said nothing."""

    #: Send it and keep a copy.
    KEEP = "keep"
    #: The server took the session: forget the copy, send without keeping.
    CONFIRMED = "confirmed"
    #: The copy is as large as it may get: wait for the server or the window first.
    WAIT = "wait"


def replay_window(handshake_seconds: float) -> float:
    """Seconds after a TLS 1.3 client handshake in which a server's silent close means it
    rejected us (and threw away unread what we sent): a few handshake durations, at least
    :data:`REPLAY_WINDOW_FLOOR`, at most :data:`QUICK_REJECT_SECONDS`."""
    window = max(REPLAY_WINDOW_FLOOR, REPLAY_WINDOW_HANDSHAKES * handshake_seconds)
    return min(window, QUICK_REJECT_SECONDS)


def next_step(*, kept: int, piece: int, acknowledged: int | None, window_left: float) -> ReplayStep:
    """The rule for the next ``piece`` bytes, given the ``kept`` bytes already copied, what the
    server's TCP has ``acknowledged`` in all (None: unknown) and the window's time left."""
    if window_left < 0:
        return ReplayStep.CONFIRMED
    if acknowledged is not None and acknowledged > PEER_UNREAD_MAX:
        return ReplayStep.CONFIRMED
    limit = KEPT_MAX if acknowledged is not None else KEPT_MAX_UNSEEN
    return ReplayStep.KEEP if kept + piece <= limit else ReplayStep.WAIT
