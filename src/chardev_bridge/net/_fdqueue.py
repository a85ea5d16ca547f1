"""Bytes waiting unread in a file descriptor's receive queue (FIONREAD): a pty's input, or a
socket's data from a peer that has gone."""

from __future__ import annotations

import fcntl
import sys
import termios


def unread_bytes(fd: int) -> int | None:
    """Bytes queued for reading on ``fd``, or None when the kernel cannot say."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return None
    return int.from_bytes(raw, sys.byteorder)
