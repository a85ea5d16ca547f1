"""The contestants: how to start chardev-bridge, socat and stunnel as the TLS client bridge.

Each contestant is started fresh for every round of every measurement, listens (or opens a pty)
on the local side, and connects with TLS to the shared far side on 127.0.0.1. All of them verify
the far side's certificate against ``ca-cert.pem`` and the name ``localhost``, present the client
certificate, set TCP_NODELAY on both sockets where they can, and use their default TLS settings
(TLS 1.3 with AES-256-GCM for all three, which the far side's log confirms).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_certs import Creds
from bench_farside import Reports
from bench_procs import Proc, Procs

PTY_LINE = re.compile(r"^pty: (\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Setup:
    """What every contestant needs to know about this run."""

    creds: Creds
    far_port: int
    far_pid: int
    far_log: Path  # the far side's stderr: one ``tls ...`` line per accepted connection
    work: Path
    bridge_src: Path  # the directory that holds the chardev_bridge package
    reports: Reports  # what the far side reports of its silent sessions


def far_connections(setup: Setup) -> int:
    """How many TLS connections the far side has accepted so far."""
    return ("\n" + setup.far_log.read_text(errors="replace")).count("\ntls ")


class Contestant:
    """A bridge under test; subclasses say how to start it."""

    name = ""
    has_pty = False
    # The measurements it takes part in; empty: all of them.
    joins: tuple[str, ...] = ()

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def unavailable(self) -> str | None:
        """Why this contestant cannot run at all, or None if it can."""
        return None

    def start_tcp(self, procs: Procs, lport: int, many: bool) -> Proc:
        """Start a bridge that listens on 127.0.0.1:lport.

        `many` asks for a bridge that keeps serving new connections (socat needs ``fork`` for
        that; the others decide by themselves).
        """
        raise NotImplementedError

    def start_pty(self, procs: Procs) -> Proc:
        """Start a bridge whose local side is a new pty."""
        raise NotImplementedError

    def pty_path(self, proc: Proc) -> str | None:
        """The pty's slave path once the bridge has made it known, else None."""
        raise NotImplementedError


class ChardevBridge(Contestant):
    """This project, run from the source tree with the interpreter that runs the benchmark."""

    name = "chardev-bridge"
    has_pty = True

    def __init__(
        self,
        setup: Setup,
        extra_args: Sequence[str] = (),
        name: str = "",
        joins: tuple[str, ...] = (),
    ) -> None:
        """`extra_args` follow the contract's arguments.

        The variant that measures the QEMU 7.2 stall workaround's cost passes the switch that
        turns it off there, under its own `name`, and `joins` the bulk rounds only.
        """
        super().__init__(setup)
        self.extra_args = list(extra_args)
        self.name = name or self.name
        self.joins = joins

    def env(self) -> dict[str, str]:
        """The environment with the bridge's source tree first on PYTHONPATH."""
        env = dict(os.environ)
        src = str(self.setup.bridge_src)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        return env

    def argv(self, local: str) -> list[str]:
        """The command line for the given ``--local`` endpoint."""
        s = self.setup
        return [
            sys.executable, "-m", "chardev_bridge",
            "--host", "127.0.0.1", "--port", str(s.far_port),
            "--tls-creds", str(s.creds.client_dir), "--tls-hostname", "localhost",
            "--local", local, *self.extra_args,
        ]  # fmt: skip

    def unavailable(self) -> str | None:
        """Run ``--help``: until the CLI exists this reports the import error."""
        try:
            result = subprocess.run(
                [sys.executable, "-m", "chardev_bridge", "--help"],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "`python -m chardev_bridge --help` did not finish in 30 s"
        if result.returncode == 0:
            return None
        lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        return f"`python -m chardev_bridge --help` failed: {last}"

    def start_tcp(self, procs: Procs, lport: int, many: bool) -> Proc:
        """``--local tcp-listen:...``; ``many``: one process for concurrent sessions, each
        local client with its own TLS connection (``--max-sessions``), as socat's fork and
        stunnel do."""
        argv = self.argv(f"tcp-listen:127.0.0.1:{lport}")
        if many:
            argv += ["--max-sessions", "10000"]
        return procs.spawn(self.name, argv, self.env())

    def start_pty(self, procs: Procs) -> Proc:
        """``--local pty``: the bridge prints ``pty: /dev/pts/N`` on stdout."""
        return procs.spawn(self.name, self.argv("pty"), self.env())

    def pty_path(self, proc: Proc) -> str | None:
        """Parse the ``pty:`` line from stdout."""
        match = PTY_LINE.search(proc.out_path.read_text(errors="replace"))
        return match.group(1) if match else None


class Socat(Contestant):
    """``socat -b 65536``: one process per connection, 64 KiB transfer buffer."""

    name = "socat"
    has_pty = True

    def unavailable(self) -> str | None:
        """socat must be on PATH."""
        return None if shutil.which("socat") else "socat is not installed"

    def tls_address(self) -> str:
        """The OPENSSL client address (verify=1 is socat's default)."""
        s = self.setup
        return (
            f"OPENSSL:127.0.0.1:{s.far_port},cafile={s.creds.ca},cert={s.creds.client_cert},"
            f"key={s.creds.client_key},commonname=localhost,nodelay"
        )

    def start_tcp(self, procs: Procs, lport: int, many: bool) -> Proc:
        """TCP-LISTEN; with `many` it forks a child per connection, as socat users do."""
        listen = f"TCP-LISTEN:{lport},bind=127.0.0.1,reuseaddr,nodelay"
        if many:
            listen += ",fork,backlog=1024"
        return procs.spawn(self.name, ["socat", "-b", "65536", listen, self.tls_address()])

    def start_pty(self, procs: Procs) -> Proc:
        """PTY,rawer with a symlink; wait-slave so it does not read EIO before we open it."""
        link = self.setup.work / f"socat-pty-{procs.count + 1}"
        pty = f"PTY,rawer,link={link},wait-slave"
        proc = procs.spawn(self.name, ["socat", "-b", "65536", pty, self.tls_address()])
        proc.pty_link = link
        return proc

    def pty_path(self, proc: Proc) -> str | None:
        """The link named on socat's command line, once socat has made it."""
        link = proc.pty_link
        return str(link) if link is not None and link.is_symlink() else None


class Stunnel(Contestant):
    """stunnel (Debian stunnel4) in client mode: one thread per connection."""

    name = "stunnel"

    def unavailable(self) -> str | None:
        """stunnel must be on PATH."""
        return None if shutil.which("stunnel") else "stunnel is not installed"

    def config(self, lport: int) -> str:
        """A client-mode service; logging at warning so per-connection logs cost nothing."""
        c = self.setup.creds
        return "\n".join(
            [
                "foreground = yes",
                "pid =",
                "debug = warning",
                "[bench]",
                "client = yes",
                f"accept = 127.0.0.1:{lport}",
                f"connect = 127.0.0.1:{self.setup.far_port}",
                f"CAfile = {c.ca}",
                f"cert = {c.client_cert}",
                f"key = {c.client_key}",
                "verifyChain = yes",
                "checkHost = localhost",
                "socket = l:TCP_NODELAY=1",
                "socket = r:TCP_NODELAY=1",
                # Do not keep a closed session around for 60 s waiting for close_notify.
                "TIMEOUTclose = 0",
                "",
            ]
        )

    def start_tcp(self, procs: Procs, lport: int, many: bool) -> Proc:
        """Write a config for this port and run stunnel in the foreground."""
        conf = self.setup.work / f"stunnel-{lport}.conf"
        conf.write_text(self.config(lport))
        return procs.spawn(self.name, ["stunnel", str(conf)])


class TrioFloor(Contestant):
    """bench_floor.py: the least a relay on chardev-bridge's stack (trio, ``ssl.SSLObject``
    over memory BIOs) can do. A reference for bulk and latency, not a peer: it shows how much
    of the gap to socat and stunnel is the stack's and how much the bridge's own."""

    name = "trio floor"
    joins = ("bulk", "bulk-silent", "latency", "first-byte")

    def start_tcp(self, procs: Procs, lport: int, many: bool) -> Proc:
        """One process; a relay task per connection."""
        s = self.setup
        floor = str(Path(__file__).resolve().parent / "bench_floor.py")
        argv = [sys.executable, floor, str(lport), str(s.far_port), str(s.creds.client_dir)]
        return procs.spawn(self.name, argv)


def all_contestants(setup: Setup) -> list[Contestant]:
    """The contestants in the order they run; chardev-bridge first, its peers after."""
    return [ChardevBridge(setup), Socat(setup), Stunnel(setup), TrioFloor(setup)]
