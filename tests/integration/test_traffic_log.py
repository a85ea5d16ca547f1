"""The traffic log (issue 4): ``--logfile`` keeps exactly the plaintext sent to the remote (QEMU's
``logfile``), ``--logappend`` keeps what was there, ``--logfile-direction both`` with
``--log-format hex`` gives timestamped ``>``/``<`` dump lines, and a log that cannot be written
never stops the data path and is reported once."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from chardev_bridge.bridge.config import BridgeConfig, TrafficLogConfig
from chardev_bridge.cli import build_parser, config_from_args
from chardev_bridge.local import LocalSpec
from chardev_bridge.share.consolelog import ConsoleLog, hex_lines
from tests.support.bridges import log_lines, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tls_connect
from tests.support.procs import cli_bridge
from tests.support.streams import open_pty, read_exactly, sha256

HEX_LINE = re.compile(
    r"^(?P<stamp>\S+) (?P<dir>[<>]) (?P<offset>[0-9a-f]{4})  (?P<hex>(?:[0-9a-f]{2} )*[0-9a-f]{2})"
    r" *  \|(?P<text>[^\n]*)\|$"
)


def serving(pki: PKI, log: TrafficLogConfig, **kw: Any) -> BridgeConfig:
    return BridgeConfig(
        listen=True,
        host=HOST,
        port=0,
        local=LocalSpec("pty"),
        tls_creds=pki.server_dir,
        traffic_log=log,
        **kw,
    )


async def one_session(pki: PKI, cfg: BridgeConfig, to_remote: bytes, to_local: bytes) -> None:
    """One session: the pty application sends ``to_remote``, the remote sends ``to_local``."""
    async with running_bridge(cfg) as ready:
        assert ready.pty_path is not None
        conn, _ = await tls_connect(ready.ports[0], client_context(pki.client_dir))
        async with open_pty(ready.pty_path) as app, trio.open_nursery() as nursery:
            nursery.start_soon(app.send_all, to_remote)
            nursery.start_soon(conn.send_all, to_local)
            assert sha256(await read_exactly(conn, len(to_remote))) == sha256(to_remote)
            assert sha256(await read_exactly(app, len(to_local))) == sha256(to_local)
        await conn.aclose()


async def test_raw_log_holds_exactly_what_went_to_the_remote(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"stale content from an earlier run")
    to_remote, to_local = os.urandom(1 << 20), os.urandom(300_000)
    with trio.fail_after(30):
        await one_session(pki, serving(pki, TrafficLogConfig(path)), to_remote, to_local)
    # QEMU's logfile: the bytes sent to the remote, nothing else, the old file truncated.
    assert sha256(path.read_bytes()) == sha256(to_remote)


async def test_logappend_keeps_earlier_content(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"earlier\n")
    with trio.fail_after(30):
        cfg = serving(pki, TrafficLogConfig(path, append=True))
        await one_session(pki, cfg, b"first session\n", b"ignored")
        await one_session(pki, cfg, b"second session\n", b"ignored")
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
        await one_session(pki, serving(pki, log), to_remote, to_local)
    ended = dt.datetime.now(dt.UTC)
    text = path.read_text()
    got = parse_hex_log(text)
    assert bytes(got[">"]) == to_remote
    assert bytes(got["<"]) == to_local
    first = text.splitlines()[0]
    stamp = dt.datetime.fromisoformat(first.split(" ", 1)[0])
    assert began <= stamp <= ended
    assert " > 0000  48 65 6c 6c 6f 20 66 72 6f 6d 20 74 68 65 20 70  |Hello from the p|" in text


def test_hex_lines_format() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert hex_lines("<", b"Hi\x00\xff" * 5, when).decode().splitlines() == [
        "2024-05-06T07:08:09.123456+00:00 < 0000  48 69 00 ff 48 69 00 ff 48 69 00 ff 48 69 00 ff"
        "  |Hi..Hi..Hi..Hi..|",
        "2024-05-06T07:08:09.123456+00:00 < 0010  48 69 00 ff" + " " * 36 + "  |Hi..|",
    ]


async def test_unwritable_log_never_stops_the_data_path_and_is_reported_once(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    to_remote, to_local = os.urandom(256 * 1024), os.urandom(128 * 1024)
    log = TrafficLogConfig(Path("/dev/full"), direction="both", format="hex")
    with trio.fail_after(30):
        await one_session(pki, serving(pki, log), to_remote, to_local)
        await one_session(pki, serving(pki, log), b"again\n", b"and again\n")
    lines = log_lines(info_logs, "^traffic log")
    assert (
        lines
        == [
            "traffic log /dev/full: No space left on device; the bridge keeps forwarding,"
            " the log misses bytes"
        ]
        * 2
    )  # once per bridge run, however many writes failed


class FlakyFile:
    """A log file that fails ``failures`` writes, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.data += data
        return len(data)

    def close(self) -> None:
        pass


def test_a_log_that_comes_back_is_written_again_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    traffic = ConsoleLog(TrafficLogConfig(tmp_path / "log"))
    flaky = FlakyFile(failures=50)
    traffic._file = flaky  # type: ignore[assignment]
    for i in range(60):
        traffic.to_remote(b"%02d" % i)
        # One write each: the worker thread writes what it finds queued in one go.
        traffic.flush()
    traffic.close()
    assert flaky.data == b"".join(b"%02d" % i for i in range(50, 60))
    assert [r.getMessage() for r in caplog.records] == [
        f"traffic log {tmp_path / 'log'}: No space left on device; the bridge keeps forwarding,"
        " the log misses bytes",
        f"traffic log {tmp_path / 'log'} is being written again; 50 lines (100 bytes) were lost",
    ]


async def test_bytes_dropped_while_disconnected_are_still_logged(
    pki: PKI, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    """QEMU logs what its guest writes even with no client: so does --when-disconnected drop."""
    path = tmp_path / "console.log"
    cfg = serving(pki, TrafficLogConfig(path), when_disconnected="drop")
    with trio.fail_after(10):
        async with running_bridge(cfg) as ready:
            assert ready.pty_path is not None
            async with open_pty(ready.pty_path) as app:
                await app.send_all(b"boot messages nobody is connected for\n")
                await wait_log(info_logs, "^no remote connected: dropping local bytes")
                while path.stat().st_size < 38:
                    await trio.sleep(0.02)
    assert path.read_bytes() == b"boot messages nobody is connected for\n"


async def test_cli_traffic_log_to_dev_full_keeps_forwarding(pki: PKI) -> None:
    args = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    args += ["--logfile", "/dev/full", "--logappend", "--logfile-direction", "both"]
    payload = os.urandom(1 << 20)
    with trio.fail_after(30):
        async with cli_bridge(args) as proc:
            pty_path = await proc.pty_path()
            conn, _ = await tls_connect(await proc.port(), client_context(pki.client_dir))
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:
                nursery.start_soon(app.send_all, payload)
                assert sha256(await read_exactly(conn, len(payload))) == sha256(payload)
                nursery.start_soon(conn.send_all, payload)
                assert sha256(await read_exactly(app, len(payload))) == sha256(payload)
            await conn.aclose()
            await proc.wait_for(r"disconnected from 127\.0\.0\.1")
            assert proc.proc.poll() is None
    assert proc.count(r"traffic log /dev/full: No space left on device") == 1


def test_cli_traffic_log_options() -> None:
    args = ["--logfile", "f.log", "--logappend", "--logfile-direction", "both"]
    cfg = config_from_args(build_parser().parse_args([*args, "--log-format", "hex"]))
    assert cfg.traffic_log == TrafficLogConfig(Path("f.log"), True, "both", "hex")
    cfg = config_from_args(build_parser().parse_args(["--logfile", "f.log"]))
    assert cfg.traffic_log == TrafficLogConfig(Path("f.log"), False, "to-remote", "raw")
    assert config_from_args(build_parser().parse_args([])).traffic_log is None


def test_log_file_that_cannot_be_opened_is_an_error_at_start_naming_the_option(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-dir" / "traffic.log"
    with pytest.raises(OSError, match=rf"^--logfile {re.escape(str(missing))}: No such file"):
        ConsoleLog(TrafficLogConfig(path=missing))
