"""How the console log writes what crosses: raw, a hex dump, or timestamped console lines.

Pure formatting, no file and no thread: :class:`LogFormatter` turns chunks into log records
and keeps the console lines still waiting for their newline.
"""

from __future__ import annotations

import datetime as dt
import re

from chardev_bridge.share.config import TrafficLogConfig

#: A console line with no newline yet is written once no byte came for this long.
PARTIAL_LINE_SECONDS = 1.0

#: A console line longer than this is written in pieces (a binary flood has no newlines, and
#: the piece waiting for its newline must stay bounded).
LINE_MAX = 8192

# Bytes 0x20-0x7e as themselves, the rest as "." (the hex dump's text column).
_PRINTABLE = bytes(b if 32 <= b < 127 else ord(".") for b in range(256))

# Control characters other than tab as visible escapes, so that a log line is one line and
# a terminal showing the log does not obey them; C1 controls (U+0080-U+009F) too. Regular
# expressions find them: a console's text has few, and scanning for them runs in C.
_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROLS_BUT_NEWLINE = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
_C1_CONTROLS = re.compile("[\x80-\x9f]")
_BYTE_ESCAPES = {bytes([c]): b"\\x%02x" % c for c in [*range(0x20), 0x7F]}


def hex_lines(direction: str, data: bytes | bytearray, when: dt.datetime) -> bytes:
    """Timestamped hex-dump lines: ``TIME > 0000  48 65 6c 6c 6f        |Hello|``."""
    stamp = when.isoformat(timespec="microseconds")
    lines = []
    for offset in range(0, len(data), 16):
        row = bytes(data[offset : offset + 16])
        text = row.translate(_PRINTABLE).decode("ascii")
        lines.append(f"{stamp} {direction} {offset:04x}  {row.hex(' '):<47}  |{text}|\n")
    return "".join(lines).encode()


def escape_line(raw: bytes, *, keep_newlines: bool = False) -> str:
    """Console text made readable: UTF-8 kept, invalid bytes and control characters (but
    tab, and newlines if ``keep_newlines``) as ``\\xNN``, C1 controls as ``\\u00NN``."""
    controls = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    if controls.search(raw):
        raw = controls.sub(lambda m: _BYTE_ESCAPES[m[0]], raw)
    text = raw.decode("utf-8", "backslashreplace")
    if _C1_CONTROLS.search(text):
        text = _C1_CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
    return text


def _stamp(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="milliseconds")


def _split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (the last piece may have none)."""
    pieces, start = [], 0
    while (end := data.find(b"\n", start) + 1) > 0:
        pieces.append(data[start:end])
        start = end
    if start < len(data):
        pieces.append(data[start:])
    return pieces


class _Partial:
    """A console line still waiting for its newline, in one direction."""

    def __init__(self, began: float) -> None:
        self.began = began
        self.last = began
        self.data = bytearray()


class LogFormatter:
    """The records one log gets for each chunk; holds each direction's unfinished line."""

    def __init__(self, cfg: TrafficLogConfig) -> None:
        self.cfg = cfg
        self._partials: dict[str, _Partial] = {}

    def line_count(self, data: bytes | bytearray) -> int:
        """How many log lines ``data`` would have made."""
        if self.cfg.format == "hex":
            return -(-len(data) // 16)
        return data.count(b"\n") or 1

    def records(self, direction: str, data: bytes, when: float) -> list[bytes]:
        """The log records for one chunk; each ends at a line boundary where it can."""
        if self.cfg.format == "hex":
            text = hex_lines(direction, data, dt.datetime.fromtimestamp(when, dt.UTC))
            return _split_lines(text) if self.cfg.max_bytes else [text]
        if self.cfg.format == "raw":
            return _split_lines(data) if self.cfg.max_bytes else [data]
        return self._console_lines(direction, data, when)

    def _console_lines(self, direction: str, data: bytes, when: float) -> list[bytes]:
        """Stamped lines for the complete lines of ``data``: the first finishes a waiting
        partial line (and keeps its time), the others get the chunk's time. The text after
        the last newline waits for the rest of its line."""
        partial = self._partials.pop(direction, None)
        began = partial.began if partial is not None else when
        if partial is not None:
            data = bytes(partial.data) + data
        cut = data.rfind(b"\n") + 1
        records = []
        if cut:
            # A console ends its lines with \r\n: the log's own newline stands for both.
            text = escape_line(data[:cut].replace(b"\r\n", b"\n"), keep_newlines=True)
            lines = text.split("\n")[:-1]
            mark = f"{direction} " if self.cfg.direction == "both" else ""
            first = f"{_stamp(began)} {mark}{lines[0]}\n"
            if len(lines) > 1:
                prefix = f"{_stamp(when)} {mark}"
                first += prefix + f"\n{prefix}".join(lines[1:]) + "\n"
            block = first.encode()
            records = _split_lines(block) if self.cfg.max_bytes else [block]
            began = when
        if cut < len(data):
            rest = _Partial(began)
            rest.data += data[cut:]
            rest.last = when
            if len(rest.data) >= LINE_MAX:
                records.append(self._line_record(direction, rest))
            else:
                self._partials[direction] = rest
        return records

    def _line_record(self, direction: str, partial: _Partial) -> bytes:
        raw = bytes(partial.data)
        if raw.endswith(b"\n"):
            # A console ends its lines with \r\n: the log's own newline stands for both.
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        mark = f"{direction} " if self.cfg.direction == "both" else ""
        return f"{_stamp(partial.began)} {mark}{escape_line(raw)}\n".encode()

    def next_partial_deadline(self, now: float) -> float | None:
        """Seconds until a waiting partial line is due (None: none waits)."""
        if not self._partials:
            return None
        last = min(p.last for p in self._partials.values())
        return last + PARTIAL_LINE_SECONDS - now

    def stale_records(self, now: float, *, everything: bool) -> list[bytes]:
        """Records for the partial lines that waited long enough (all of them if ``everything``)."""
        records = []
        for direction, partial in list(self._partials.items()):
            if everything or now - partial.last >= PARTIAL_LINE_SECONDS:
                records.append(self._line_record(direction, partial))
                del self._partials[direction]
        return records
