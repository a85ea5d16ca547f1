"""Errors a newcomer meets, each one line naming the cause, the path or address and the fix,
with the exit status it comes with: real ``python -m chardev_bridge`` processes against
listeners and TLS servers on 127.0.0.1. (What QEMU's rejections make a bridge say:
interop/test_qemu_error_messages.py.)"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509

from chardev_bridge.qemu import pki as pkimod
from tests.support.certs import PKI, make_pki
from tests.support.net import HOST, TlsServer, expect_failed_handshake, free_port, server_context
from tests.support.peers import require_tool
from tests.support.procs import (
    ENV,
    LINE,
    bridge_cmd,
    cli_bridge,
    exit_status,
    run_cli,
    stderr_messages,
)
from tests.support.streams import open_pty

# -- credentials given for the wrong role, or not at all -----------------------------------


@pytest.mark.parametrize(("listen", "role"), [(True, "server"), (False, "client")])
def test_a_creds_init_root_is_named_once_with_the_subdirectory_the_role_needs(
    creds_root: Path, listen: bool, role: str
) -> None:
    args = ["--server", "--port", "0"] if listen else ["--host", HOST, "--port", str(free_port())]
    proc = run_cli(*args, "--tls-creds", str(creds_root))
    assert proc.returncode == 1, proc.stderr
    why = "it listens: --server" if listen else "it connects: no --server"
    assert stderr_messages(proc.stderr) == [
        f"--tls-creds {creds_root} is the root that `creds init` made, not a credentials"
        f" directory: as the TLS {role} ({why}) this bridge needs --tls-creds {creds_root / role}"
    ]
    assert "Unable to access credentials" not in proc.stderr


def test_a_missing_credentials_directory_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pki"
    proc = run_cli("--server", "--port", "0", "--tls-creds", str(missing))
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr) == [f"--tls-creds {missing}: no such directory"]


def test_the_ca_directory_is_refused_keeping_its_key_off_the_bridge(creds_root: Path) -> None:
    proc = run_cli("--server", "--port", "0", "--tls-creds", str(creds_root / "ca"))
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr) == [
        f"--tls-creds {creds_root}/ca is the CA directory `creds init` made (it holds the CA's"
        " private key; keep it off the bridge): as the TLS server (it listens: --server) this"
        f" bridge needs --tls-creds {creds_root}/server"
    ]


def test_server_credentials_on_a_connecting_bridge_are_refused_before_it_connects(
    creds_root: Path,
) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        proc = run_cli(
            "--host", HOST, "--port", str(port), "--tls-creds", str(creds_root / "server")
        )
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert proc.returncode == 1
    assert proc.stdout == ""  # no pty was made either
    assert stderr_messages(proc.stderr) == [
        f"--tls-creds {creds_root}/server holds server credentials (server-cert.pem,"
        " server-key.pem), not client ones: it has no client-cert.pem or client-key.pem; this"
        " bridge is the TLS client (it connects: no --server): give it client credentials"
        f" (--tls-creds {creds_root}/client), or make it the TLS server with --tls-endpoint server"
    ]


def test_client_credentials_on_a_listening_bridge_name_only_the_files_the_server_needs(
    creds_root: Path,
) -> None:
    proc = run_cli("--server", "--port", "0", "--tls-creds", str(creds_root / "client"))
    assert proc.returncode == 1
    [line] = stderr_messages(proc.stderr)
    assert line == (
        f"--tls-creds {creds_root}/client holds client credentials (client-cert.pem,"
        " client-key.pem), not server ones: it has no server-cert.pem or server-key.pem; this"
        " bridge is the TLS server (it listens: --server): give it server credentials"
        f" (--tls-creds {creds_root}/server), or make it the TLS client with --tls-endpoint client"
    )
    # Optional files (dh-params.pem, ca-crl.pem) are nobody's problem here.
    assert "dh-params" not in line and "ca-crl" not in line


def test_creds_check_of_a_server_dir_as_a_client_endpoint_fails_saying_so(creds_root: Path) -> None:
    proc = run_cli("creds", "check", str(creds_root / "server"), "--endpoint", "client")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"error: {creds_root}/server holds server credentials (server-cert.pem, server-key.pem),"
        " not client ones: it has no client-cert.pem or client-key.pem; check it with"
        " --endpoint server, or check the client dir"
    ]
    # The right endpoint still passes.
    assert (
        run_cli("creds", "check", str(creds_root / "server"), "--endpoint", "server").returncode
        == 0
    )


@pytest.fixture
def world_readable_pki() -> Iterator[Path]:
    """A `creds init` root outside pytest's private tmp dir, for a process with fewer rights."""
    base = Path(tempfile.mkdtemp(prefix="chardev-bridge-perm-"))
    base.chmod(0o755)
    try:
        pkimod.init_pki(base / "pki")
        yield base / "pki"
    finally:
        shutil.rmtree(base)


def test_an_unreadable_key_is_named_with_the_read_permission_that_is_missing(
    world_readable_pki: Path,
) -> None:
    setpriv = require_tool("setpriv")
    key = world_readable_pki / "server" / "server-key.pem"
    if os.geteuid() == 0:
        # root reads every file: take that right away, so that owner and mode decide.
        os.chown(key, 65534, 65534)
        wrap = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    else:
        key.chmod(0)
        wrap = []
    proc = subprocess.run(
        [*wrap, *bridge_cmd("--server", "--port", "0", "--tls-creds", str(key.parent))],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    [line] = stderr_messages(proc.stderr)
    mode = "0600" if os.geteuid() == 0 else "0000"
    assert line.startswith(f"Cannot load certificate '{key.parent}/server-cert.pem' & key '{key}':")
    assert re.search(
        rf"Permission denied: {re.escape(str(key))} is mode {mode}, owner \S+, and this process"
        r" runs as \S+, which lacks read permission on it: make it readable by \S+",
        line,
    ), line


# -- creds init ----------------------------------------------------------------------------


def test_creds_init_with_a_hostname_keeps_the_default_loopback_ips(tmp_path: Path) -> None:
    proc = run_cli("creds", "init", str(tmp_path / "pki"), "--hostname", "localhost")
    assert proc.returncode == 0, proc.stderr
    pem = (tmp_path / "pki" / "server" / "server-cert.pem").read_bytes()
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
    ]


def test_creds_init_prints_absolute_qemu_paths_and_the_bridge_command_for_each_role(
    tmp_path: Path,
) -> None:
    proc = run_cli("creds", "init", "pki", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path.resolve() / "pki"
    assert proc.stdout.splitlines() == [
        f"created {root}/ca (keep ca-key.pem private)",
        f"created {root}/server: the TLS server's credentials",
        f"  QEMU:   -object tls-creds-x509,id=tls0,dir={root}/server,endpoint=server",
        f"  bridge: chardev-bridge --server --tls-creds {root}/server",
        f"created {root}/client: the TLS client's credentials",
        f"  QEMU:   -object tls-creds-x509,id=tls0,dir={root}/client,endpoint=client",
        f"  bridge: chardev-bridge --host localhost --tls-creds {root}/client",
    ]


async def test_the_bridge_commands_creds_init_prints_work_together(tmp_path: Path) -> None:
    proc = run_cli("creds", "init", "pki", cwd=tmp_path)
    commands = [
        line.split("bridge: chardev-bridge ", 1)[1].split()
        for line in proc.stdout.splitlines()
        if "bridge: " in line
    ]
    server_args, client_args = commands
    with trio.fail_after(30):
        async with cli_bridge([*server_args, "--host", HOST, "--port", "0"]) as server:
            port = await server.port()
            client = [*client_args, "--port", str(port)]
            async with cli_bridge(client, name="client") as bridge:
                await bridge.wait_for(rf"{LINE}connected to \S+:{port}: TLSv1\.3 .*'CN=localhost'$")


# -- what the session's end says -----------------------------------------------------------


async def test_a_tls_bridge_closing_on_our_plain_bytes_gets_the_tls_hint(pki: PKI) -> None:
    listening = ["--server", "--host", HOST, "--port", "0", "--tls-creds", str(pki.server_dir)]
    with trio.fail_after(30):
        async with cli_bridge(listening, name="TLS server") as server:
            port = await server.port()
            async with cli_bridge(["--host", HOST, "--port", str(port)]) as bridge:
                app = open_pty(await bridge.pty_path())
                await app.send_all(b"hello\n")
                await server.wait_for(r"TLS handshake with .* failed: not TLS")
                # A close is the server's to make: the hint, but no failure.
                assert await exit_status(bridge) == 0
                await app.aclose()
    disconnected, hint = stderr_messages(bridge.log())[-2:]
    assert re.fullmatch(
        rf"disconnected from 127\.0\.0\.1:{port} after [\d.]+s: 6 bytes sent, 0 bytes"
        r" received; remote closed",
        disconnected,
    ), disconnected
    assert hint == (
        "the peer closed the connection right after our first bytes, having sent nothing: it"
        " may expect TLS (a QEMU chardev with tls-creds, a bridge with --tls-creds): give"
        " --tls-creds DIR"
    )


async def test_a_hostname_mismatch_suggests_tls_hostname(tmp_path: Path) -> None:
    dns_only = make_pki(tmp_path / "dns-only", server_names=("localhost",))
    server = TlsServer(server_context(dns_only.server_dir))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.start(nursery)
            args = ["--host", HOST, "--port", str(server.port)]
            async with cli_bridge([*args, "--tls-creds", str(dns_only.client_dir)]) as bridge:
                await expect_failed_handshake(server)
                assert await exit_status(bridge) == 1
            nursery.cancel_scope.cancel()
    last = stderr_messages(bridge.log())[-1]
    assert last.startswith(f"cannot connect to 127.0.0.1:{server.port}: the peer's certificate")
    assert last.endswith(
        "; if it names this server otherwise (e.g. localhost for 127.0.0.1), give that name"
        " with --tls-hostname NAME (`creds check` on its directory lists its names)"
    ), last


async def test_a_refused_connection_is_the_last_line_after_the_pty_and_suggests_reconnect() -> None:
    port = free_port()
    with trio.fail_after(30):
        async with cli_bridge(["--host", HOST, "--port", str(port)]) as bridge:
            assert (await bridge.pty_path()).startswith("/dev/pts/")
            assert await exit_status(bridge) == 1
    assert stderr_messages(bridge.log())[-1] == (
        f"cannot connect to 127.0.0.1:{port}: connection refused: nothing listens there yet"
        " (with --reconnect SECONDS the bridge retries until something does)"
    )


# -- start-up failures Python would word as [Errno N] ----------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as other:
        other.bind((HOST, 0))
        other.listen(1)
        yield other.getsockname()[1]


def test_a_listening_bridge_on_a_busy_port_names_the_address_and_what_to_do(busy_port: int) -> None:
    proc = run_cli("--server", "--host", HOST, "--port", str(busy_port))
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr)[-1] == (
        f"--host {HOST} --port {busy_port}: cannot listen on {HOST}:{busy_port}: address already"
        " in use: another process (another bridge? QEMU?) listens there;"
        f" `ss -ltnp 'sport = :{busy_port}'` shows which, or choose another port"
    )
    assert "[Errno" not in proc.stderr


def test_a_busy_local_tcp_listen_address_names_the_local_option(busy_port: int) -> None:
    proc = run_cli("--port", str(free_port()), "--local", f"tcp-listen:{HOST}:{busy_port}")
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr) == [
        f"--local tcp-listen:{HOST}:{busy_port}: cannot listen on {HOST}:{busy_port}: address"
        " already in use: another process (another bridge? QEMU?) listens there;"
        f" `ss -ltnp 'sport = :{busy_port}'` shows which, or choose another port"
    ]


def test_a_missing_pty_for_a_tty_local_end_says_ptys_live_with_their_program() -> None:
    missing = "/dev/pts/99999"
    assert not os.path.exists(missing)
    proc = run_cli("--port", str(free_port()), "--local", f"tty:{missing}")
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr) == [
        f"--local tty:{missing}: {missing} does not exist: a pty lives only as long as the"
        " program that made it (QEMU prints 'char device redirected to /dev/pts/N');"
        " `ls /dev/pts` lists those there are"
    ]


def test_a_tty_local_end_that_is_a_unix_socket_suggests_unix(tmp_path: Path) -> None:
    path = tmp_path / "qemu.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        proc = run_cli("--port", str(free_port()), "--local", f"tty:{path}")
    assert proc.returncode == 1
    assert stderr_messages(proc.stderr) == [
        f"--local tty:{path}: {path} is not a terminal device (a tty); it is a unix socket:"
        f" use --local unix:{path}"
    ]


def test_a_link_into_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    link = tmp_path / "no-such-dir" / "console"
    proc = run_cli("--port", str(free_port()), "--link", str(link))
    assert proc.returncode == 1
    assert re.fullmatch(
        rf"--link {re.escape(str(link))}: cannot link it to /dev/pts/\d+: the folder"
        rf" {re.escape(str(link.parent))} does not exist \(create it, or link elsewhere\)",
        stderr_messages(proc.stderr)[-1],
    ), proc.stderr
    assert ".console." not in proc.stderr  # not the temporary name nobody asked for


def test_a_bare_device_path_for_local_suggests_tty_in_one_line() -> None:
    proc = run_cli("--local", "/dev/pts/3")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "chardev-bridge: error: argument --local: '/dev/pts/3' is a path: for this terminal"
        " device write --local tty:/dev/pts/3 (see chardev-bridge --help)"
    ]


# -- the command line: what -v adds, what a bad option value gives -----------------------


def test_the_default_tls_priority_is_logged_only_with_verbose(pki: PKI) -> None:
    port = str(free_port())
    args = ["--host", HOST, "--port", port, "--tls-creds", str(pki.client_dir)]
    quiet, verbose = run_cli(*args), run_cli(*args, "-v")
    assert "TLS priority" not in quiet.stderr
    assert "TLS priority (default), from built-in default" in verbose.stderr


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--when-disconnected", "keep"], "argument --when-disconnected: invalid choice: 'keep'"),
        (["--when-unread", "never"], "argument --when-unread: invalid choice: 'never'"),
        (["--second-client", "kick"], "argument --second-client: invalid choice: 'kick'"),
        (["--scrollback", "0"], "argument --scrollback: '0' is not a size in bytes"),
        (["--scrollback", "64X"], "argument --scrollback: '64X' is not a size in bytes"),
        (["--idle-timeout", "0"], "argument --idle-timeout: must be greater than 0, not 0"),
        (["--handshake-timeout", "-1"], "argument --handshake-timeout: must be greater than 0"),
        (["--reconnect-max", "0"], "argument --reconnect-max: must be greater than 0, not 0"),
        (["--reconnect", "soon"], "argument --reconnect: "),
        (["--server", "--reconnect", "1"], "--reconnect applies to a connecting bridge"),
    ],
)
def test_bad_session_option_value_gives_one_error_line_and_exit_status_2(
    argv: list[str], error: str
) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if "error" in line]
    assert errors == [lines[-1]], proc.stderr  # one error line, after the usage
    assert lines[-1].startswith(f"chardev-bridge: error: {error}"), lines[-1]


def test_a_non_number_for_a_seconds_option_is_reported_without_internal_names() -> None:
    proc = run_cli("--reconnect", "soon")
    assert proc.returncode == 2
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("chardev-bridge: error: argument --reconnect: ")
    assert "_positive_float" not in last, last


def test_missing_credential_file_fails_at_start_naming_it(pki: PKI) -> None:
    (pki.server_dir / "server-key.pem").unlink()
    proc = run_cli("--server", "--port", "0", "--tls-creds", str(pki.server_dir))
    assert proc.returncode == 1
    assert (
        f"Unable to access credentials {pki.server_dir}/server-key.pem: No such file or directory"
        in proc.stderr
    )


def test_connecting_bridge_without_reconnect_exits_nonzero_with_cause(pki: PKI) -> None:
    port = free_port()
    proc = run_cli("--host", "127.0.0.1", "--port", str(port), "--tls-creds", str(pki.client_dir))
    assert proc.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}:" in proc.stderr
    assert "refused" in proc.stderr.lower()
