"""Viewers' memory (not in CI): a bridge's RSS while viewers misbehave and the remote pours.

A listening ``chardev-bridge`` process (plain TCP, pty local end, ``--viewers`` on a unix
socket, a ``--log-format lines`` console log of both directions unless ``--no-log``) gets a
remote that pours random bytes as fast as the pty application reads them. Meanwhile
``--max-viewers`` viewers misbehave in turns: some never read (each is dropped once 1 MiB
behind, then comes back at once), some read a little now and then, some type without end,
and one more than the limit keeps trying to attach. The bridge's RSS is sampled throughout.

At the end: bytes poured, drops, refusals, and the RSS at start, peak (VmHWM) and at the end.

    .venv/bin/python soak/viewers.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import trio  # noqa: E402
from tests.support.net import HOST, tcp_connect  # noqa: E402
from tests.support.procs import CliBridge, rss_kib  # noqa: E402
from tests.support.streams import open_pty as open_pty_app  # noqa: E402

MiB = 1 << 20


@dataclass
class Stats:
    """What the run did."""

    poured: int = 0
    attaches: int = 0
    samples: int = 0
    rss_start: int = 0
    rss_max_sampled: int = 0


async def _viewer(path: Path, kind: str, stats: Stats, stop: trio.Event) -> None:
    """One misbehaving viewer, reattaching whenever it is dropped."""
    while not stop.is_set():
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await sock.connect(str(path))
        except OSError:
            sock.close()
            await trio.sleep(0.1)
            continue
        stats.attaches += 1
        stream = trio.SocketStream(sock)
        try:
            while not stop.is_set():
                if kind == "stalled":
                    await trio.sleep(0.5)
                    # Dropped once behind: the bridge closed us; reading shows it.
                    with trio.move_on_after(0):
                        if not await stream.receive_some(1):
                            break
                elif kind == "sipping":
                    if not await stream.receive_some(1024):
                        break  # dropped, or refused
                    await trio.sleep(0.05)
                else:  # "typing"
                    await stream.send_all(os.urandom(4096))
                    await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()
        await trio.sleep(0.05)


async def run(seconds: float, viewers: int, with_log: bool) -> Stats:
    """The run; returns its figures."""
    stats = Stats()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watch.sock"
        args = ["--server", "--host", HOST, "--port", "0"]
        args += ["--viewers", f"unix-listen:{path}", "--max-viewers", str(viewers)]
        if with_log:
            args += ["--logfile", str(Path(tmp) / "console.log"), "--logfile-direction", "both"]
            args += ["--log-format", "lines", "--logfile-max", "4M", "--logfile-backups", "2"]
        proc = CliBridge(args)
        try:
            pty_path = await proc.pty_path()
            found = await proc.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout=10)
            remote, _ = await tcp_connect(int(found.group(1)))
            stop = trio.Event()
            stats.rss_start = proc.rss_kib()
            async with open_pty_app(pty_path) as app, trio.open_nursery() as nursery:

                async def pour() -> None:
                    block = os.urandom(256 * 1024)
                    while not stop.is_set():
                        await remote.send_all(block)

                async def drain() -> None:
                    while not stop.is_set():
                        stats.poured += len(await app.receive_some(MiB))

                async def sample() -> None:
                    while not stop.is_set():
                        stats.rss_max_sampled = max(stats.rss_max_sampled, proc.rss_kib())
                        stats.samples += 1
                        await trio.sleep(0.1)

                nursery.start_soon(pour)
                nursery.start_soon(drain)
                nursery.start_soon(sample)
                kinds = ["stalled", "sipping", "typing"]
                for i in range(viewers + 1):  # one more than allowed keeps knocking
                    nursery.start_soon(_viewer, path, kinds[i % 3], stats, stop)
                await trio.sleep(seconds)
                stop.set()
                nursery.cancel_scope.cancel()
            peak = rss_kib(proc.pid, "VmHWM")
            what = "with a lines console log" if with_log else "no log"
            print(
                f"poured {stats.poured / MiB:.0f} MiB in {seconds:.0f} s, {viewers} viewers, {what}"
            )
            print(f"viewer attaches: {stats.attaches}")
            print(f"RSS KiB: start {stats.rss_start}, max sampled {stats.rss_max_sampled},")
            print(f"         peak (VmHWM) {peak}, growth {(peak - stats.rss_start) / 1024:.1f} MiB")
            await remote.aclose()
        finally:
            proc.close()
        log = proc.log()
        print(f"dropped (fell behind): {log.count('fell ')}, refused: {log.count('refused')}")
    return stats


def main(argv: list[str] | None = None) -> int:
    """``soak/viewers.py [--seconds S] [--viewers N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--viewers", type=int, default=16)
    parser.add_argument("--no-log", action="store_true", help="no console log (viewers only)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    trio.run(run, args.seconds, args.viewers, not args.no_log)
    print(f"took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
