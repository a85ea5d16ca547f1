"""A console or traffic log that cannot be written (a full filesystem, /dev/full, a slow disk,
a rename that fails, a disk that comes back): the log loses lines and says so once, the data
path never loses a byte nor waits for the disk."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.config import TrafficLogConfig
from chardev_bridge.share.consolelog import QUEUE_MAX, ConsoleLog
from tests.support.bridges import listening_config, log_lines, one_session
from tests.support.certs import PKI
from tests.support.net import HOST, client_context, tcp_connect, tls_connect
from tests.support.procs import cli_bridge
from tests.support.streams import open_pty, read_exactly, sha256

MiB = 1 << 20


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (we run as root, as CI does), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_log_on_a_full_filesystem_loses_no_console_byte(full_fs: Path) -> None:
    log = full_fs / "vm1.log"
    args = ["--logfile-direction", "both", "--log-format", "hex"]
    down, up = os.urandom(4 * MiB), os.urandom(2 * MiB)
    with trio.fail_after(60):
        serving = ["--server", "--host", HOST, "--port", "0", "--logfile", str(log), *args]
        async with cli_bridge(serving) as proc:
            pty_path = await proc.pty_path()
            remote, _ = await tcp_connect(await proc.port())
            async with open_pty(pty_path) as app, trio.open_nursery() as nursery:
                nursery.start_soon(remote.send_all, down)
                nursery.start_soon(app.send_all, up)
                assert sha256(await read_exactly(app, len(down))) == sha256(down)
                assert sha256(await read_exactly(remote, len(up))) == sha256(up)
            await proc.wait_for(
                rf"traffic log {re.escape(str(log))}: No space left on device; the bridge keeps"
                " forwarding, the log misses bytes"
            )
            await remote.aclose()
            await proc.wait_for(r"disconnected from 127\.0\.0\.1")
            assert proc.proc.poll() is None
        assert proc.count(r"No space left on device") == 1
    assert 0 < log.stat().st_size <= 64 * 1024


class SlowFile:
    """A log file on a disk that takes 50 ms per write."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        time.sleep(0.05)
        self.data += data
        return len(data)

    def close(self) -> None:
        pass


def test_a_slow_disk_costs_log_lines_never_time_and_says_how_many_when_it_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    console = ConsoleLog(TrafficLogConfig(tmp_path / "log"))
    slow = SlowFile()
    console._file = slow  # type: ignore[assignment]
    chunk = os.urandom(256 * 1024)
    began = time.monotonic()
    for _ in range(4 * QUEUE_MAX // len(chunk)):
        console.to_remote(chunk)
    took = time.monotonic() - began
    assert took < 1.0  # 32 MiB offered to the log, none of it written on this thread
    assert console.flush(timeout=60)
    console.to_remote(b"caught up\n")
    console.close()
    lost = console.counters.snapshot()
    assert lost.log_bytes_lost >= QUEUE_MAX
    assert lost.log_lines_lost >= lost.log_bytes_lost // 1024  # random bytes: 1 in 256 is \n
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"traffic log {tmp_path / 'log'}: writing falls behind (a slow disk?); the bridge keeps"
        " forwarding, the log misses bytes",
        f"traffic log {tmp_path / 'log'} is being written again;"
        f" {lost.log_lines_lost} lines ({lost.log_bytes_lost} bytes) were lost",
    ]
    assert slow.data.endswith(b"caught up\n")


def test_a_rotation_that_cannot_rename_keeps_every_line_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "vm1.log"
    log.with_name("vm1.log.1").mkdir()  # FILE cannot be renamed onto a directory
    cfg = TrafficLogConfig(log, direction="from-remote", format="raw", max_bytes=100, backups=1)
    console = ConsoleLog(cfg)
    lines = [b"line %02d of the boot\n" % i for i in range(30)]
    for line in lines:
        console.to_local(line)
        console.flush()
    console.close()
    assert log.read_bytes() == b"".join(lines)
    said = [r.getMessage() for r in caplog.records if "cannot rotate" in r.getMessage()]
    assert len(said) == 1 and "keeps growing past --logfile-max" in said[0]


async def test_unwritable_log_never_stops_the_data_path_and_is_reported_once(
    pki: PKI, info_logs: pytest.LogCaptureFixture
) -> None:
    to_remote, to_local = os.urandom(256 * 1024), os.urandom(128 * 1024)
    log = TrafficLogConfig(Path("/dev/full"), direction="both", format="hex")
    with trio.fail_after(30):
        cfg = listening_config(pki.server_dir, traffic_log=log)
        await one_session(cfg, pki.client_dir, to_remote, to_local)
        await one_session(cfg, pki.client_dir, b"again\n", b"and again\n")
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
