"""The package as installed and shown: the console script and its version, `make demo`, and the
install target's words."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from chardev_bridge import __version__
from tests.support.peers import require_tool
from tests.support.procs import ENV, ROOT


def test_console_script_prints_the_package_version_and_exits_0() -> None:
    script = Path(sys.executable).parent / "chardev-bridge"
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"chardev-bridge {__version__}\n"
    assert __version__ == importlib.metadata.version("chardev-bridge")


def test_make_demo_crosses_a_line_both_ways_over_tls_1_3_naming_both_peers() -> None:
    # The Makefile's demo target: $(BIN)/python -m chardev_bridge.demo
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(BIN)/python -m chardev_bridge.demo\n" in makefile
    proc = subprocess.run(
        [sys.executable, "-m", "chardev_bridge.demo"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    hello, back = (
        re.escape(repr(b"hello from the client's pty, over TLS\n")),
        re.escape(repr(b"and back again\n")),
    )
    client = re.search(r"^  client bridge's local end: (/dev/pts/\d+)$", out, re.M)
    server = re.search(r"^  server bridge's local end: (/dev/pts/\d+)$", out, re.M)
    assert client and server, out
    c_pty, s_pty = re.escape(client.group(1)), re.escape(server.group(1))
    for expected in (
        rf"^wrote to {c_pty}:  {hello}$",
        rf"^read from {s_pty}: {hello}$",
        rf"^wrote to {s_pty}:  {back}$",
        rf"^read from {c_pty}: {back}$",
        r"^  server: session from 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate"
        r" 'O=chardev-bridge,CN=client'$",
        r"^  client: connected to 127\.0\.0\.1:\d+: TLSv1\.3 \S+, peer certificate"
        r" 'CN=localhost'$",
        r"^demo OK: the line crossed TLS both ways, byte for byte\.$",
    ):
        assert re.search(expected, out, re.M), f"{expected!r} not in:\n{out}"


def test_pyproject_license_is_an_spdx_string_and_install_says_how_to_reach_the_command() -> None:
    import tomllib

    root = ROOT
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    make = require_tool("make")
    # -o: take the venv as it is; only the install target's own words run.
    out = subprocess.run(
        [make, "-s", "-o", ".venv/.installed", "install"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "run .venv/bin/chardev-bridge, or put it on PATH" in out
    assert f'export PATH="{root}/.venv/bin:$PATH"' in out and "pipx install ." in out
