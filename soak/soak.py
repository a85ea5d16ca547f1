"""Soak test (not in CI, ``make soak``): N minutes of churn through two real bridges.

A listening bridge (TLS, pty, ``--idle-timeout``, ``--second-client replace``) and a connecting
bridge (``--reconnect 0.2``, pty with a ``--link``) run as ``python -m chardev_bridge``
processes. Random payloads cross both ptys in framed rounds (a random marker, the length, the
bytes, their sha256) and are verified at the far end. Every few seconds the session is torn
down: the server is SIGKILLed mid-transfer and restarted on the same port, or SIGTERMed
(graceful) and restarted, or left idle until ``--idle-timeout`` ends the session; the connecting
bridge must reconnect each time and keep its pty path. Meanwhile 1,000 bad connections (plain
bytes, HTTP, silent, truncated or certificate-less TLS, an unknown CA) are spread over the run.
The RSS of both processes is sampled throughout.

At the end a small table: bytes moved, rounds, reconnects, bad connections, errors, peak RSS.
Exit status 0 when there were no errors.

    .venv/bin/python soak/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import signal
import ssl
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import trio  # noqa: E402
from tests.support.net import HOST, free_port  # noqa: E402
from tests.support.procs import CliBridge, rss_kib  # noqa: E402
from tests.support.streams import open_pty as open_pty_app  # noqa: E402

from chardev_bridge.qemu import pki  # noqa: E402

MAGIC = b"\xa5SOAK\x5a\x00\xff"
IDLE_TIMEOUT = 3.0
HANDSHAKE_TIMEOUT = 2.0
MiB = 1 << 20


@dataclass
class Stats:
    """What the run did; printed at the end."""

    bytes_up: int = 0  # near (connecting bridge's pty) -> far, verified
    bytes_down: int = 0
    rounds_ok: int = 0
    rounds_interrupted: int = 0  # cut by a kill or SIGTERM: expected, not an error
    stale_bytes: int = 0  # leftovers of interrupted rounds, skipped by the next one
    churn: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    bad_refused: int = 0  # attempted while the server was down
    errors: list[str] = field(default_factory=list)
    peak_rss_kib: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})

    def error(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.errors.append(f"{stamp} {message}")
        print(f"ERROR {stamp} {message}", file=sys.stderr, flush=True)


class FrameReader:
    """Reads a pty all the time, as a terminal would, and finds frames in what came, skipping
    whatever precedes them (stale bytes of a round cut short)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False
        self._more = trio.Event()

    async def pump(self) -> None:
        """Run in the background: everything the pty delivers goes into the buffer."""
        try:
            while chunk := await self.stream.receive_some(MiB):
                self.buf += chunk
                self._more.set()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.eof = True
        self._more.set()

    async def _wait(self) -> None:
        if self.eof:
            raise EOFError("the pty closed")
        self._more = trio.Event()
        await self._more.wait()

    async def _fill(self, size: int) -> None:
        while len(self.buf) < size:
            await self._wait()

    async def read(self, marker: bytes, stats: Stats) -> bytes:
        """The payload of the frame carrying ``marker``; raises ValueError if damaged."""
        head = MAGIC + marker
        while (at := self.buf.find(head)) < 0:
            keep = len(head) - 1
            if len(self.buf) > keep:
                stats.stale_bytes += len(self.buf) - keep
                del self.buf[:-keep]
            await self._wait()
        stats.stale_bytes += at
        del self.buf[:at]
        await self._fill(len(head) + 8)
        (size,) = struct.unpack("!Q", self.buf[len(head) : len(head) + 8])
        total = len(head) + 8 + size + 32
        await self._fill(total)
        payload = bytes(self.buf[len(head) + 8 : len(head) + 8 + size])
        digest = bytes(self.buf[total - 32 : total])
        del self.buf[:total]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError(f"frame {marker.hex()[:8]}: {size} bytes, sha256 mismatch")
        return payload


def frame(marker: bytes, payload: bytes) -> bytes:
    return (
        MAGIC
        + marker
        + struct.pack("!Q", len(payload))
        + payload
        + hashlib.sha256(payload).digest()
    )


class Soak:
    def __init__(self, minutes: float, bad_total: int, workdir: Path) -> None:
        self.duration = minutes * 60
        self.bad_total = bad_total
        self.stats = Stats()
        self.layout = pki.init_pki(workdir / "pki")
        self.port = free_port()
        self.link = workdir / "console"
        self.server: CliBridge | None = None
        self.old_servers: list[CliBridge] = []
        self.client: CliBridge | None = None
        self.far: trio.lowlevel.FdStream | None = None
        self.far_reader: FrameReader | None = None
        self.server_up = trio.Event()
        self.connects_seen = 0
        self.bad_tls = ssl.create_default_context(
            cafile=str(self.layout.client_dir / "ca-cert.pem")
        )
        other = pki.init_pki(workdir / "other-pki")
        self.unknown_ca = ssl.create_default_context(
            cafile=str(self.layout.client_dir / "ca-cert.pem")
        )
        self.unknown_ca.load_cert_chain(
            str(other.client_dir / "client-cert.pem"), str(other.client_dir / "client-key.pem")
        )

    # -- processes --------------------------------------------------------------------------

    async def start_server(self, nursery: trio.Nursery) -> None:
        args = ["--server", "--host", HOST, "--port", str(self.port)]
        args += ["--tls-creds", str(self.layout.server_dir), "--idle-timeout", str(IDLE_TIMEOUT)]
        args += ["--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--second-client", "replace"]
        self.server = CliBridge(args, name="server")
        path = await self.server.pty_path(timeout=20)
        self.far = open_pty_app(path)
        self.far_reader = FrameReader(self.far)
        nursery.start_soon(self.far_reader.pump)
        await self.server.wait_for(r"listening on", timeout=20)
        self.server_up.set()

    async def stop_server(self, how: str) -> None:
        assert self.server is not None
        self.server_up = trio.Event()
        self.note_rss("server", self.server.pid, "VmHWM")
        if how == "kill":
            self.server.kill()
        else:
            self.server.signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(self.server.wait, 20)
            if code != 0:
                self.stats.error(f"server exited with {code} on SIGTERM")
        self.server.close()
        self.old_servers.append(self.server)
        self.server = None
        if self.far is not None:
            await self.far.aclose()
            self.far = None

    def note_rss(self, role: str, pid: int, field_name: str = "VmRSS") -> None:
        try:
            value = rss_kib(pid, field_name)
        except (OSError, LookupError):
            return
        self.stats.peak_rss_kib[role] = max(self.stats.peak_rss_kib[role], value)

    async def sample_rss(self) -> None:
        while True:
            if self.client is not None:
                self.note_rss("client", self.client.pid)
            if self.server is not None:
                self.note_rss("server", self.server.pid)
            await trio.sleep(0.5)

    async def await_reconnect(self) -> None:
        """Wait for the connecting bridge's next 'connected to' line."""
        assert self.client is not None
        try:
            await self.client.wait_for(
                rf"connected to 127\.0\.0\.1:{self.port}: TLS", skip=self.connects_seen, timeout=30
            )
        except AssertionError as exc:
            self.stats.error(f"no reconnect within 30 s: {str(exc)[-300:]}")
            raise
        self.connects_seen += 1

    # -- traffic ----------------------------------------------------------------------------

    async def one_round(
        self, near: trio.lowlevel.FdStream, near_reader: FrameReader, *, big: bool = False
    ) -> None:
        """A payload each way, verified; raises on damage or when the session breaks."""
        assert self.far is not None and self.far_reader is not None
        far, far_reader = self.far, self.far_reader
        up, down = os.urandom(16), os.urandom(16)
        unit = 16 * 1024 if big else random.choice([1, 2, 64, 4096])
        up_payload = os.urandom(unit * random.randint(1, 512))
        down_payload = os.urandom(unit * random.randint(1, 512))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(near.send_all, frame(up, up_payload))
            nursery.start_soon(far.send_all, frame(down, down_payload))
            got_up = await far_reader.read(up, self.stats)
            got_down = await near_reader.read(down, self.stats)
        assert got_up == up_payload and got_down == down_payload
        self.stats.bytes_up += len(up_payload)
        self.stats.bytes_down += len(down_payload)
        self.stats.rounds_ok += 1

    async def rounds_for(
        self, seconds: float, near: trio.lowlevel.FdStream, reader: FrameReader
    ) -> None:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            try:
                with trio.fail_after(30):
                    await self.one_round(near, reader)
            except* ValueError as group:
                for exc in group.exceptions:
                    self.stats.error(str(exc))
            except* trio.TooSlowError:
                self.stats.error("a round stalled for 30 s without any churn")
                raise

    async def interrupted_round(
        self, near: trio.lowlevel.FdStream, reader: FrameReader, how: str
    ) -> None:
        """Start a round, then kill or SIGTERM the server in the middle of it."""
        done = False

        async def run_round() -> None:
            nonlocal done
            try:
                await self.one_round(near, reader, big=True)
                done = True
            except* ValueError as group:
                for exc in group.exceptions:
                    self.stats.error(str(exc))
            except* (EOFError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the session went away under the round, as intended

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_round)
            await trio.sleep(random.uniform(0.005, 0.1))
            await self.stop_server(how)
            nursery.cancel_scope.cancel()
        if not done:  # (a round that finished first was counted by one_round)
            self.stats.rounds_interrupted += 1

    # -- bad connections --------------------------------------------------------------------

    async def bad_connections(self) -> None:
        kinds = ["plain", "http", "silent", "truncated", "no-cert", "unknown-ca"]
        hello = _client_hello()
        interval = self.duration / self.bad_total
        async with trio.open_nursery() as nursery:
            for i in range(self.bad_total):
                nursery.start_soon(self.one_bad, kinds[i % len(kinds)], hello)
                await trio.sleep(random.uniform(0.4, 1.4) * interval)

    async def one_bad(self, kind: str, hello: bytes) -> None:
        self.stats.bad[kind] += 1
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT + 5):
                tcp = await trio.open_tcp_stream(HOST, self.port)
                async with tcp:
                    if kind in ("no-cert", "unknown-ca"):
                        ctx = self.bad_tls if kind == "no-cert" else self.unknown_ca
                        tls = trio.SSLStream(tcp, ctx, server_hostname=HOST)
                        await tls.do_handshake()
                        await tls.receive_some()
                        return
                    data = {
                        "plain": b"hello?\r\n",
                        "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        "silent": b"",
                        "truncated": hello[:50],
                    }[kind]
                    if data:
                        await tcp.send_all(data)
                    if kind != "truncated":
                        while await tcp.receive_some():
                            pass
        except OSError as exc:
            if "refused" in f"{exc} {exc.__cause__!r}".lower():
                self.stats.bad_refused += 1
        except (trio.BrokenResourceError, trio.TooSlowError):
            pass

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        began = trio.current_time()
        end = began + self.duration
        args = ["--host", HOST, "--port", str(self.port)]
        args += ["--tls-creds", str(self.layout.client_dir), "--reconnect", "0.2"]
        args += ["--reconnect-max", "2", "--link", str(self.link)]
        # A data channel: every byte written while the far bridge is down is kept for the
        # next session, however long the restart takes (a pty's default drops old ones).
        args += ["--when-disconnected", "block"]
        self.client = CliBridge(args, name="client")
        try:
            near_path = await self.client.pty_path(timeout=20)
            async with trio.open_nursery() as background:
                await self.start_server(background)
                await self.await_reconnect()
                background.start_soon(self.sample_rss)
                background.start_soon(self.bad_connections)
                near = open_pty_app(near_path)
                near_reader = FrameReader(near)
                background.start_soon(near_reader.pump)
                # Every kind of churn comes up in a short run; the timing stays random.
                actions = itertools.cycle(["kill", "idle", "kill", "term"])
                async with near:
                    while trio.current_time() < end:
                        await self.rounds_for(random.uniform(2, 5), near, near_reader)
                        if trio.current_time() >= end:
                            break
                        action = next(actions)
                        self.stats.churn[action] += 1
                        if action == "idle":
                            await trio.sleep(IDLE_TIMEOUT + 1.5)
                        else:
                            await self.interrupted_round(near, near_reader, action)
                            await trio.sleep(random.uniform(0, 1))  # down for a while
                            await self.start_server(background)
                        await self.await_reconnect()
                        if os.readlink(self.link) != near_path:
                            self.stats.error("the connecting bridge's pty link changed")
                        if self.client.proc.poll() is not None:
                            self.stats.error("the connecting bridge exited")
                            break
                        print(
                            f"{(trio.current_time() - began) / 60:5.1f} min: {action:<4}"
                            f" rounds {self.stats.rounds_ok}, reconnects {self.connects_seen - 1}",
                            flush=True,
                        )
                    # Let the bad connections finish their schedule quickly.
                    background.cancel_scope.cancel()
        finally:
            self.note_rss("client", self.client.pid, "VmHWM")
            for proc in (self.server, self.client):
                if proc is not None:
                    proc.signal(signal.SIGTERM)
                    try:
                        await trio.to_thread.run_sync(proc.wait, 20)
                    finally:
                        proc.close()
            if self.far is not None:
                await self.far.aclose()

    def server_log_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for proc in [*self.old_servers, *([self.server] if self.server else [])]:
            counts["TLS handshake failed"] += proc.count(r"TLS handshake with .* failed")
            counts["dropped (no handshake)"] += proc.count(r"^\S+ \S+ chardev-bridge: dropped ")
            counts["denied"] += proc.count(r"chardev-bridge: denied ")
            counts["refused"] += proc.count(r"chardev-bridge: refused ")
            counts["idle timeouts"] += proc.count(r"\(--idle-timeout\)")
        return counts

    def report(self, minutes: float, wall: float) -> str:
        s = self.stats
        logged = self.server_log_counts()
        rows = [
            ("duration", f"{minutes:g} min requested, {wall / 60:.1f} min run"),
            (
                "bytes moved (verified)",
                f"{(s.bytes_up + s.bytes_down) / MiB:.1f} MiB"
                f" (up {s.bytes_up / MiB:.1f}, down {s.bytes_down / MiB:.1f})",
            ),
            (
                "rounds",
                f"{s.rounds_ok} verified, {s.rounds_interrupted} cut by churn,"
                f" {s.stale_bytes} stale bytes skipped",
            ),
            (
                "reconnects",
                f"{self.connects_seen - 1} (kill -9 {s.churn['kill']}, SIGTERM {s.churn['term']},"
                f" idle timeout {s.churn['idle']}; server saw {logged['idle timeouts']} idle ends)",
            ),
            (
                "bad connections",
                f"{sum(s.bad.values())} ({', '.join(f'{k} {n}' for k, n in sorted(s.bad.items()))})"
                f"; {s.bad_refused} refused while the server was down",
            ),
            (
                "  server log lines",
                ", ".join(f"{k} {v}" for k, v in logged.items() if k != "idle timeouts"),
            ),
            ("errors", str(len(s.errors))),
            (
                "peak RSS",
                f"client {s.peak_rss_kib['client'] / 1024:.1f} MiB,"
                f" server {s.peak_rss_kib['server'] / 1024:.1f} MiB",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  {e}" for e in s.errors[:20]]
        return "\n".join(lines)


def _client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument(
        "--bad-connections", type=int, default=1000, help="spread over the run (default 1000)"
    )
    parser.add_argument("--seed", type=int, help="random seed (payloads stay random)")
    args = parser.parse_args(argv)
    if args.seed is not None:
        random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="chardev-soak-") as tmp:
        soak = Soak(args.minutes, args.bad_connections, Path(tmp))
        began = time.monotonic()
        try:
            trio.run(soak.run)
        except BaseException as exc:  # report what we have, then fail
            traceback.print_exc()
            soak.stats.error(f"aborted: {type(exc).__name__}: {exc}")
        print(soak.report(args.minutes, time.monotonic() - began))
    return 1 if soak.stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
