"""The formats of the console and traffic logs, without a bridge: escaped lines with the stamp of
their first byte, hex dump lines, and a log file that cannot be opened."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest

from chardev_bridge.bridge.config import TrafficLogConfig
from chardev_bridge.share.consolelog import ConsoleLog
from chardev_bridge.share.logformat import (
    PARTIAL_LINE_SECONDS,
    LogFormatter,
    escape_line,
    hex_lines,
)
from tests.support.bridges import CONSOLE_LINE


def test_escape_line_keeps_utf8_and_tab_and_escapes_other_controls() -> None:
    assert escape_line("é\t\x07\x7f\u0085 ok".encode() + b"\xff") == "é\t\\x07\\x7f\\u0085 ok\\xff"


def test_lines_join_pieces_of_a_line_under_its_first_stamp_even_mid_character(
    tmp_path: Path,
) -> None:
    log = tmp_path / "vm1.log"
    console = ConsoleLog(TrafficLogConfig(log, direction="from-remote", format="lines"))
    console.to_remote(b"typed\n")  # not this direction: never logged
    console.to_local(b"Gr\xc3")  # a line, and a character, cut in two
    console.flush()
    time.sleep(0.2)
    console.to_local(b"\xbc\xc3\x9fe\r\nprogress 10%\rprogress 20%\r\nlast")
    console.close()
    lines = log.read_text().splitlines()
    found = [CONSOLE_LINE.match(line) for line in lines]
    assert [m[2] for m in found if m] == [
        "Grüße",
        "progress 10%\\x0dprogress 20%",
        "last",  # no newline ever came: written at the end
    ]
    first, second = (dt.datetime.fromisoformat(m[1]) for m in found[:2] if m)
    assert (second - first).total_seconds() >= 0.15  # "Grüße" keeps the time it began


def test_a_line_without_its_newline_waits_until_it_is_stale_then_keeps_its_first_stamp() -> None:
    formatter = LogFormatter(TrafficLogConfig(Path("unused"), direction="both", format="lines"))
    began = 1_700_000_000.0
    assert formatter.records("<", b"login: ", began) == []
    assert formatter.next_partial_deadline(began) == PARTIAL_LINE_SECONDS
    assert formatter.stale_records(began + 0.5, everything=False) == []
    assert formatter.records(">", b"root\r\n", began + 0.6) == [
        b"2023-11-14T22:13:20.600+00:00 > root\n"
    ]
    stale = formatter.stale_records(began + PARTIAL_LINE_SECONDS, everything=False)
    assert stale == [b"2023-11-14T22:13:20.000+00:00 < login: \n"]
    assert formatter.next_partial_deadline(began + 2) is None


def test_hex_lines_format() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert hex_lines("<", b"Hi\x00\xff" * 5, when).decode().splitlines() == [
        "2024-05-06T07:08:09.123456+00:00 < 0000  48 69 00 ff 48 69 00 ff 48 69 00 ff 48 69 00 ff"
        "  |Hi..Hi..Hi..Hi..|",
        "2024-05-06T07:08:09.123456+00:00 < 0010  48 69 00 ff" + " " * 36 + "  |Hi..|",
    ]


def test_log_file_that_cannot_be_opened_is_an_error_at_start_naming_the_option(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-dir" / "traffic.log"
    with pytest.raises(OSError, match=rf"^--logfile {re.escape(str(missing))}: No such file"):
        ConsoleLog(TrafficLogConfig(path=missing))
