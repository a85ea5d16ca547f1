"""The traffic log of a running bridge: ``--logfile`` keeps exactly the plaintext sent to the
remote (QEMU's ``logfile``), even what is dropped while disconnected; ``--logappend`` keeps
what was there; ``--logfile-direction both`` with ``--log-format hex`` gives timestamped
``>``/``<`` dump lines. (A log that cannot be written: faults/test_log_write_failures.py.)"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import TrafficLogConfig
from tests.support.bridges import listening_config, one_session, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.streams import open_pty, sha256

HEX_LINE = re.compile(
    r"^(?P<stamp>\S+) (?P<dir>[<>]) (?P<offset>[0-9a-f]{4})  (?P<hex>(?:[0-9a-f]{2} )*[0-9a-f]{2})"
    r" *  \|(?P<text>[^\n]*)\|$"
)


async def test_raw_log_holds_exactly_what_went_to_the_remote(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"stale content from an earlier run")
    to_remote, to_local = os.urandom(1 << 20), os.urandom(300_000)
    with trio.fail_after(30):
        cfg = listening_config(pki.server_dir, traffic_log=TrafficLogConfig(path))
        await one_session(cfg, pki.client_dir, to_remote, to_local)
    # QEMU's logfile: the bytes sent to the remote, nothing else, the old file truncated.
    assert sha256(path.read_bytes()) == sha256(to_remote)


async def test_logappend_keeps_earlier_content(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"earlier\n")
    with trio.fail_after(30):
        cfg = listening_config(pki.server_dir, traffic_log=TrafficLogConfig(path, append=True))
        await one_session(cfg, pki.client_dir, b"first session\n", b"ignored")
        await one_session(cfg, pki.client_dir, b"second session\n", b"ignored")
    assert path.read_bytes() == b"earlier\nfirst session\nsecond session\n"


def parse_hex_log(text: str) -> dict[str, bytearray]:
    """The bytes per direction from hex dump lines (and a check of every line's shape)."""
    out = {">": bytearray(), "<": bytearray()}
    offsets = {">": 0, "<": 0}
    stamps = []
    for line in text.splitlines():
        m = HEX_LINE.match(line)
        assert m, f"not a hex dump line: {line!r}"
        row = bytes.fromhex(m["hex"].replace(" ", ""))
        assert 1 <= len(row) <= 16
        text_col = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        assert m["text"] == text_col, line
        offset = int(m["offset"], 16)
        # Each write starts its offsets at 0; within it they step by 16.
        assert offset in (0, offsets[m["dir"]] + 16), line
        offsets[m["dir"]] = offset
        out[m["dir"]] += row
        stamps.append(dt.datetime.fromisoformat(m["stamp"]))
    assert stamps == sorted(stamps)
    assert all(s.tzinfo is not None for s in stamps)
    return out


async def test_hex_log_of_both_directions_has_stamped_direction_marked_lines(
    pki: PKI, tmp_path: Path
) -> None:
    path = tmp_path / "trace.log"
    to_remote = b"Hello from the pty\r\n\x00\x1b[0m" + os.urandom(5000)
    to_local = b"and from the remote\n" + os.urandom(7000)
    began = dt.datetime.now(dt.UTC)
    with trio.fail_after(30):
        log = TrafficLogConfig(path, direction="both", format="hex")
        cfg = listening_config(pki.server_dir, traffic_log=log)
        await one_session(cfg, pki.client_dir, to_remote, to_local)
    ended = dt.datetime.now(dt.UTC)
    text = path.read_text()
    got = parse_hex_log(text)
    assert bytes(got[">"]) == to_remote
    assert bytes(got["<"]) == to_local
    first = text.splitlines()[0]
    stamp = dt.datetime.fromisoformat(first.split(" ", 1)[0])
    assert began <= stamp <= ended
    assert " > 0000  48 65 6c 6c 6f 20 66 72 6f 6d 20 74 68 65 20 70  |Hello from the p|" in text


async def test_bytes_dropped_while_disconnected_are_still_logged(
    pki: PKI, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    """QEMU logs what its guest writes even with no client: so does --when-disconnected drop."""
    path = tmp_path / "console.log"
    cfg = listening_config(
        pki.server_dir, traffic_log=TrafficLogConfig(path), when_disconnected="drop"
    )
    with trio.fail_after(10):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            async with open_pty(ready.pty_path) as app:
                await app.send_all(b"boot messages nobody is connected for\n")
                await wait_log(info_logs, "^no remote connected: dropping local bytes")
                while path.stat().st_size < 38:
                    await trio.sleep(0.02)
    assert path.read_bytes() == b"boot messages nobody is connected for\n"
