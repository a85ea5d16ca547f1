"""How long a connecting bridge keeps what it sent a silent TLS 1.3 server for a replay."""

from __future__ import annotations

import pytest

from chardev_bridge.bridge.session import REPLAY_WINDOW_FLOOR, replay_window


@pytest.mark.parametrize(
    ("handshake_seconds", "window"),
    [
        (0.0, REPLAY_WINDOW_FLOOR),  # loopback: the floor
        (0.004, REPLAY_WINDOW_FLOOR),
        (0.1, 0.4),  # a distant server: four handshakes' worth
        (0.3, 1.2),
        (5.0, 2.0),  # never longer than a rejection is believed at all
    ],
)
def test_replay_window_follows_the_handshake_with_a_floor_and_a_cap(
    handshake_seconds: float, window: float
) -> None:
    assert replay_window(handshake_seconds) == pytest.approx(window)
