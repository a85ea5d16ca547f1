"""`chardev-bridge serve --config FILE`: many bridges in one process, reload, status, notify.

Every test runs the real command in a child process with real TLS, ptys and sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.certs import PKI, write_creds_dir
from tests.support.net import HOST, free_port, unix_client
from tests.support.procs import ENV, Peer, running_peer, wait_for_stderr
from tests.support.streams import open_pty, read_exactly, sha256


def pair_config(tmp: Path, pki: PKI, names: list[str], *, defaults: bool = True) -> str:
    """A listening TLS bridge ``NAME-srv`` (local: a unix socket) and a connecting one
    ``NAME`` (local: a pty linked at tmp/NAME) for each name."""
    text = f'[defaults]\nreconnect = 0.2\nlink = "{tmp}/{{name}}"\n' if defaults else ""
    for name in names:
        port = free_port()
        text += (
            f'[bridge.{name}-srv]\nserver = true\nhost = "{HOST}"\nport = {port}\n'
            f'tls-creds = "{pki.server_dir}"\nlocal = "unix-listen:{tmp}/{{name}}.sock"\n'
            f'[bridge.{name}]\nhost = "{HOST}"\nport = {port}\ntls-creds = "{pki.client_dir}"\n'
        )
    return text


@asynccontextmanager
async def serving(
    config: Path, env: dict[str, str] | None = None, wait: str = "bridges:"
) -> AsyncIterator[Peer]:
    """``chardev-bridge serve --config config``, up once it has logged ``wait``; ``env``
    are variables to set for it."""
    command = [sys.executable, "-m", "chardev_bridge", "serve", "--config", str(config)]
    async with running_peer(command, env={**ENV, **(env or {})}) as peer:
        await wait_for_stderr(peer, wait, timeout=20)
        yield peer


@asynccontextmanager
async def pair_ends(
    tmp: Path, name: str
) -> AsyncIterator[tuple[trio.lowlevel.FdStream, trio.SocketStream]]:
    """``name``'s pty and a client of ``name-srv``'s unix socket: the two ends of a pair."""
    async with open_pty(str(tmp / name)) as pty:
        sock = await unix_client(tmp / f"{name}-srv.sock")
        async with sock:
            yield pty, sock


async def exchange(pty: trio.abc.Stream, sock: trio.abc.Stream, size: int) -> None:
    """``size`` random bytes each way, checked by hash."""
    payload = os.urandom(size)
    await pty.send_all(payload)
    assert sha256(await read_exactly(sock, size)) == sha256(payload)
    await sock.send_all(payload[::-1])
    assert sha256(await read_exactly(pty, size)) == sha256(payload[::-1])


async def check_pair(tmp: Path, name: str, size: int = 65536) -> None:
    """Bytes cross both ways between ``name``'s pty and ``name-srv``'s unix socket."""
    async with pair_ends(tmp, name) as (pty, sock):
        await exchange(pty, sock, size)


async def get(port: int, path: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    return await trio.to_thread.run_sync(fetch)


async def test_many_bridges_in_one_config_each_carry_bytes(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    names = [f"vm{i}" for i in range(4)]
    config.write_text(pair_config(tmp_path, pki, names))
    async with serving(config) as peer:
        for name in names:
            await check_pair(tmp_path, name)
        # Every line about a bridge names it; a listening bridge ignores [defaults] link.
        log = peer.stderr_text()
        for name in names:
            assert f"chardev-bridge[{name}]: connected to {HOST}:" in log
            assert f"chardev-bridge[{name}-srv]: session from {HOST}:" in log
        assert not list(tmp_path.glob("*-srv")), "a link was made for a socket local end"
        assert "8 bridges: " in log


async def test_status_and_metrics_count_real_traffic(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    status_port = free_port()
    config.write_text(
        pair_config(tmp_path, pki, ["vm1"]) + f'[status]\nlisten = "tcp:{HOST}:{status_port}"\n'
    )
    async with serving(config), pair_ends(tmp_path, "vm1") as (pty, sock):
        await exchange(pty, sock, 10000)
        code, body = await get(status_port, "/_status")
        assert code == 200
        status = json.loads(body)
        vm1 = status["bridges"]["vm1"]
        assert vm1["state"] == "connected"
        assert vm1["bytes_to_remote"] == 10000 and vm1["bytes_from_remote"] == 10000
        assert vm1["tls"].startswith("TLSv1.3")
        assert vm1["peer_dn"].endswith(",CN=server.example.com")
        assert vm1["link"] == str(tmp_path / "vm1")
        assert vm1["cert_not_after"]  # the client certificate's expiry, ISO-8601
        assert status["bridges"]["vm1-srv"]["state"] == "connected"
        assert status["last_reload"] and status["config"] == str(config)
        assert "PRIVATE KEY" not in body.decode()
        code, body = await get(status_port, "/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        to_remote = (("bridge", "vm1"), ("direction", "to_remote"))
        assert samples[("chardev_bridge_bytes_total", to_remote)] == 10000
        assert samples[("chardev_bridge_connected", (("bridge", "vm1"),))] == 1
        assert samples[("chardev_bridge_sessions_total", (("bridge", "vm1-srv"),))] == 1


async def test_check_reports_every_config_error_with_file_bridge_and_key(
    tmp_path: Path, pki: PKI
) -> None:
    config = tmp_path / "bad.toml"
    port = free_port()
    config.write_text(
        f'[bridge.a]\nserver = true\nhost = "{HOST}"\nport = {port}\ncolour = "blue"\n'
        f'[bridge.b]\nserver = true\nhost = "{HOST}"\nport = {port}\n'
        f'[bridge.c]\nport = "nine"\n'
        f'[bridge.d]\ntls-creds = "{tmp_path}/missing"\n'
        f'[bridge.e]\nlocal = "serial:/dev/ttyS0"\n'
        f'[bridge.f]\nlink = "{tmp_path}/same"\n[bridge.g]\nlink = "{tmp_path}/same"\n'
        f"[bridge.h]\ntls-authz = 3\n"
    )
    done = await trio.run_process(
        [sys.executable, "-m", "chardev_bridge", "serve", "--config", str(config), "--check"],
        env=ENV,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    expected = [
        f"{config}: [bridge.a] colour: unknown key",
        f"{config}: [bridge.c] port: 'nine' is not a port number",
        f"{config}: [bridge.d] tls-creds: --tls-creds {tmp_path}/missing: no such directory",
        f"{config}: [bridge.e] local: ",
        f"{config}: [bridge.h] tls-authz: expected a string or a list of strings, not an integer",
        f"{config}: [bridge.b] port: {HOST}:{port} is also used by [bridge.a]",
        f"{config}: [bridge.g] link: {tmp_path}/same is also used by [bridge.f]",
        "problem(s); nothing started",
    ]
    for words in expected:
        assert words in err, err


async def test_check_passes_a_good_config_without_starting_anything(
    tmp_path: Path, pki: PKI
) -> None:
    config = tmp_path / "consoles.toml"
    config.write_text(pair_config(tmp_path, pki, ["vm1", "vm2"]))
    done = await trio.run_process(
        [sys.executable, "-m", "chardev_bridge", "serve", "--config", str(config), "--check"],
        env=ENV,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "4 bridges, no problems" in done.stderr.decode()
    assert not list(tmp_path.glob("*.sock")) and not (tmp_path / "vm1").exists()


async def test_reload_keeps_unchanged_bridges_and_applies_the_rest(
    tmp_path: Path, pki: PKI
) -> None:
    config = tmp_path / "consoles.toml"
    config.write_text(pair_config(tmp_path, pki, ["vm1", "vm2"]))
    async with serving(config) as peer:
        pty_before = os.readlink(tmp_path / "vm1")
        vm2_pty = os.readlink(tmp_path / "vm2")
        payload = os.urandom(4096)
        async with open_pty(str(tmp_path / "vm1")) as pty:
            sock = await unix_client(tmp_path / "vm1-srv.sock")
            async with sock:
                # vm2-srv removed, its peer vm2 changed (keeps its pty), vm3 pair added.
                tables = config.read_text().split("[bridge.")
                kept = [table for table in tables if not table.startswith("vm2-srv]")]
                text = "[bridge.".join(kept) + pair_config(tmp_path, pki, ["vm3"], defaults=False)
                text = text.replace("[bridge.vm2]\n", "[bridge.vm2]\nreconnect-max = 2\n")
                config.write_text(text)
                peer.process.send_signal(signal.SIGHUP)
                await wait_for_stderr(peer, "reloaded:", timeout=20)
                # The untouched session carries bytes on the same connection and pty.
                await pty.send_all(payload)
                assert sha256(await read_exactly(sock, len(payload))) == sha256(payload)
                # Read while the session is still open: closing it ends it, and vm1 reconnects.
                log = peer.stderr_text()
        assert log.count("chardev-bridge[vm1]: connected to") == 1  # the same TCP connection
        assert os.readlink(tmp_path / "vm1") == pty_before
        after_reload = log.split("SIGHUP")[1]
        assert "[vm1]" not in after_reload and "[vm1-srv]" not in after_reload, after_reload
        assert "[vm2-srv] removed from the config: stopping it" in log
        assert "[vm2] settings changed: restarting it" in log
        assert os.readlink(tmp_path / "vm2") == vm2_pty  # same local end: the pty survives
        assert not (tmp_path / "vm2-srv.sock").exists()
        await check_pair(tmp_path, "vm3")

        # A broken file changes nothing, and says why.
        config.write_text(text + "[bridge.vm9]\nport = 99999\n")
        peer.process.send_signal(signal.SIGHUP)
        await wait_for_stderr(peer, "reload refused: nothing changed", timeout=20)
        assert f"{config}: [bridge.vm9] port: '99999' is not a port number" in peer.stderr_text()
        await check_pair(tmp_path, "vm1")


async def test_renewed_certificate_is_used_by_new_clients_after_sighup(
    tmp_path: Path, pki: PKI
) -> None:
    config = tmp_path / "consoles.toml"
    port = free_port()
    # A listening bridge with no client to probe which certificate new handshakes get.
    config.write_text(
        pair_config(tmp_path, pki, ["vm1"])
        + f'[bridge.probe]\nserver = true\nhost = "{HOST}"\nport = {port}\n'
        f'tls-creds = "{pki.server_dir}"\nlocal = "unix-listen:{tmp_path}/probe.sock"\n'
    )

    async def server_serial() -> int:
        def handshake() -> int:
            context = ssl.create_default_context(cafile=None)
            context.load_verify_locations(cadata=pki.ca.cert_pem.bytes().decode())
            context.load_cert_chain(
                pki.client_dir / "client-cert.pem", pki.client_dir / "client-key.pem"
            )
            with (
                socket.create_connection((HOST, port)) as raw,
                context.wrap_socket(raw, server_hostname=HOST) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            from cryptography import x509

            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number

        return await trio.to_thread.run_sync(handshake)

    async with serving(config) as peer:
        await wait_for_stderr(peer, "[vm1-srv]: session from")
        old_serial = await server_serial()
        renewed = pki.ca.issue_cert("localhost", HOST, common_name="server.example.com")
        write_creds_dir(pki.server_dir, pki.ca, "server", renewed)
        peer.process.send_signal(signal.SIGHUP)
        await wait_for_stderr(peer, "[vm1-srv] credentials changed", timeout=20)
        await wait_for_stderr(peer, "[probe] credentials changed", timeout=20)
        assert await server_serial() != old_serial
        # The session made before the reload goes on (ending it then makes vm1 reconnect).
        async with pair_ends(tmp_path, "vm1") as (pty, sock):
            await exchange(pty, sock, 65536)
            assert peer.stderr_text().count("[vm1]: connected to") == 1


async def test_sd_notify_messages_come_in_order(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    config.write_text(pair_config(tmp_path, pki, ["vm1"]))
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(tmp_path / "notify"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    messages: list[str] = []

    async def next_message() -> str:
        with trio.fail_after(20):
            data = await notify.recv(4096)
        messages.append(data.decode())
        return messages[-1]

    async with serving(config, env=env) as peer:
        assert await next_message() == "READY=1"
        assert (await next_message()).startswith("STATUS=2 bridges: ")
        peer.process.send_signal(signal.SIGHUP)
        reloading = await next_message()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert await next_message() == "READY=1"
        assert (await next_message()).startswith("STATUS=")
        peer.process.send_signal(signal.SIGTERM)
        assert await next_message() == "STOPPING=1"
        with trio.fail_after(15):
            assert await peer.process.wait() == 0
    notify.close()


async def test_one_failing_bridge_does_not_stop_the_others(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    taken = socket.socket()
    taken.bind((HOST, 0))
    taken.listen()
    busy_port = taken.getsockname()[1]
    config.write_text(
        pair_config(tmp_path, pki, ["vm1"])
        + f'[bridge.busy]\nserver = true\nhost = "{HOST}"\nport = {busy_port}\n'
    )
    try:
        async with serving(config) as peer:
            await wait_for_stderr(peer, "chardev-bridge[busy]: the bridge failed:")
            assert "starting it again in" in peer.stderr_text()
            await check_pair(tmp_path, "vm1")
    finally:
        taken.close()


async def test_sigterm_stops_every_bridge_and_removes_links(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    config.write_text(pair_config(tmp_path, pki, ["vm1", "vm2"]))
    async with serving(config) as peer:
        await check_pair(tmp_path, "vm1")
        peer.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await peer.process.wait() == 0
        assert not (tmp_path / "vm1").exists() and not (tmp_path / "vm2").exists()
        assert not (tmp_path / "vm1-srv.sock").exists()
        assert "SIGTERM: stopping every bridge" in peer.stderr_text()


async def test_viewers_and_console_logs_per_bridge_show_in_status(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    status_port = free_port()
    text = pair_config(tmp_path, pki, ["vm1", "vm2"]).replace(
        "[defaults]\n",
        f'[defaults]\nviewers = "unix-listen:{tmp_path}/{{name}}.view"\n'
        f'logfile = "{tmp_path}/{{name}}.log"\nlogfile-direction = "from-remote"\n',
    )
    config.write_text(text + f'[status]\nlisten = "tcp:{HOST}:{status_port}"\n')
    async with serving(config), pair_ends(tmp_path, "vm1") as (pty, sock):
        viewer = await unix_client(tmp_path / "vm1.view")
        async with viewer:
            await wait_until_viewers(status_port, "vm1", 1)
            await sock.send_all(b"the console says hello\n")
            assert await read_exactly(pty, 23) == b"the console says hello\n"
            assert await read_exactly(viewer, 23) == b"the console says hello\n"
            _, body = await get(status_port, "/metrics")
            assert 'chardev_bridge_viewers{bridge="vm1"} 1.0' in body.decode()
            # The log's writer thread writes a moment later; the process ends with the block.
            log = tmp_path / "vm1.log"
            with trio.fail_after(10):
                while log.read_bytes() != b"the console says hello\n":
                    await trio.sleep(0.02)
    assert (tmp_path / "vm2.log").exists() and (tmp_path / "vm2-srv.log").exists()


async def wait_until_viewers(status_port: int, name: str, count: int) -> None:
    with trio.fail_after(10):
        while True:
            _, body = await get(status_port, "/_status")
            if json.loads(body)["bridges"][name]["viewers"] == count:
                return
            await trio.sleep(0.05)


async def test_single_bridge_serves_its_status_with_the_status_option(tmp_path: Path) -> None:
    status = tmp_path / "status.sock"
    command = [sys.executable, "-m", "chardev_bridge", "--server", "--host", HOST, "--port", "0"]
    async with running_peer([*command, "--status", f"unix-listen:{status}"]) as bridge:
        await wait_for_stderr(bridge, f"status endpoint on unix-listen:{status}")
        await wait_for_stderr(bridge, "listening on")

        def fetch() -> bytes:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(status))
                client.sendall(b"GET /_status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := client.recv(65536):
                    reply += chunk
                return reply

        reply = await trio.to_thread.run_sync(fetch)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        one = json.loads(body)["bridges"]["bridge"]
        assert one["state"] == "listening" and one["local"].startswith("pty /dev/pts/")
        assert os.stat(status).st_mode & 0o777 == 0o600


async def test_a_status_address_in_use_is_one_line_and_exit_1(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "consoles.toml"
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            pair_config(tmp_path, pki, ["vm1"]) + f'[status]\nlisten = "tcp:{HOST}:{port}"\n'
        )
        done = await trio.run_process(
            [sys.executable, "-m", "chardev_bridge", "serve", "--config", str(config)],
            env=ENV,
            capture_stderr=True,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"status listener 'tcp:{HOST}:{port}': cannot listen on {HOST}:{port}" in err
    assert "Traceback" not in err
