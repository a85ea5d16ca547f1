"""``--logfile``: a copy of the traffic, as QEMU's chardev ``logfile``/``logappend`` keep it.

Logging must never stop the data path: a write error (full disk, removed directory) is
reported once and the bytes keep flowing; writes resume by themselves when the file works.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import BinaryIO

from chardev_bridge.config import TrafficLogConfig

log = logging.getLogger("chardev_bridge")


def hex_lines(direction: str, data: bytes | bytearray, when: dt.datetime) -> bytes:
    """Timestamped hex-dump lines: ``TIME > 0000  48 65 6c 6c 6f        |Hello|``."""
    stamp = when.isoformat(timespec="microseconds")
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{stamp} {direction} {offset:04x}  {hexes:<47}  |{text}|\n")
    return "".join(lines).encode()


class TrafficLog:
    """Appends what crosses the bridge to a file; see :class:`TrafficLogConfig`."""

    def __init__(self, cfg: TrafficLogConfig) -> None:
        self.cfg = cfg
        try:
            self._file: BinaryIO = cfg.path.open("ab" if cfg.append else "wb", buffering=0)
        except OSError as exc:
            # At start, as in QEMU: better no bridge than one that silently logs nothing.
            raise OSError(f"--logfile {cfg.path}: {exc.strerror or exc}") from exc
        self._failing = False

    def to_remote(self, data: bytes | bytearray) -> None:
        """Record bytes going to the remote (always logged)."""
        self._write(">", data)

    def to_local(self, data: bytes | bytearray) -> None:
        """Record bytes coming from the remote (logged with direction ``both``)."""
        if self.cfg.direction == "both":
            self._write("<", data)

    def _write(self, direction: str, data: bytes | bytearray) -> None:
        if self.cfg.format == "hex":
            data = hex_lines(direction, data, dt.datetime.now(dt.UTC))
        try:
            self._file.write(data)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.error(
                    "traffic log %s: %s; the bridge keeps forwarding, the log misses bytes",
                    self.cfg.path,
                    exc.strerror or exc,
                )
            return
        if self._failing:
            self._failing = False
            log.info("traffic log %s is being written again", self.cfg.path)

    def close(self) -> None:
        """Close the file."""
        try:
            self._file.close()
        except OSError:
            pass
