"""Access control between bridges and at start-up: an allow-list of the server's DN on a
connecting bridge, and the settings that cannot work refused before the bridge starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from chardev_bridge.bridge.run import run_bridge
from chardev_bridge.qemu.priority import LOCAL_POLICY_FILE
from tests.support.bridges import connecting_config, listening_config, running_bridge
from tests.support.certs import SERVER_DN, make_creds
from tests.support.procs import (
    ENV,
    run_cli,
    stderr_messages,
)
from tests.support.streams import assert_silent, open_pty, read_until


async def test_bridge_client_refuses_a_bridge_server_outside_its_allow_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chardev_bridge")
    creds = make_creds(tmp_path)
    with trio.fail_after(20):
        async with running_bridge(listening_config(creds.server)) as server:
            assert server.pty_path
            port = server.ports[0]
            async with open_pty(server.pty_path) as far:
                cfg = connecting_config(port, creds.client, tls_authz=("O=chardev-bridge,CN=*",))
                assert await run_bridge(cfg) == 1
                await assert_silent(far, 0.2)
                # The same bridge client, allowed by the server's DN, carries bytes.
                cfg = connecting_config(port, creds.client, tls_authz=(SERVER_DN,))
                async with running_bridge(cfg) as client:
                    assert client.pty_path
                    async with open_pty(client.pty_path) as near:
                        await near.send_all(b"through\n")
                        assert await read_until(far, b"\n") == b"through\n"
    assert (
        f"cannot connect to 127.0.0.1:{port}: server denied by our policy: not allowed:"
        f" '{SERVER_DN}' denied by the default policy"
    ) in caplog.text


@pytest.mark.parametrize(
    "authz_args",
    [["--tls-authz", "CN=*"], ["--tls-authz-file", "AUTHZ"]],
    ids=["tls-authz", "tls-authz-file"],
)
def test_allow_list_without_peer_verification_is_refused_at_start(
    tmp_path: Path, authz_args: list[str]
) -> None:
    creds = make_creds(tmp_path)
    authz = tmp_path / "authz.json"
    authz.write_text('{"rules": [{"match": "CN=*", "policy": "allow", "format": "glob"}]}')
    args = [a.replace("AUTHZ", str(authz)) for a in authz_args]
    proc = run_cli(
        *["--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds", str(creds.server)],
        *["--no-verify-peer", *args],
    )
    assert proc.returncode == 1, proc.stderr
    assert stderr_messages(proc.stderr)[-1] == (
        "an allow-list (--tls-authz) needs peer verification on"
    ), proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stderr


def test_unmappable_application_policy_entry_fails_at_start_naming_file_and_token(
    tmp_path: Path,
) -> None:
    if LOCAL_POLICY_FILE.exists():
        pytest.skip(f"{LOCAL_POLICY_FILE} exists here and takes precedence")
    creds = make_creds(tmp_path)
    policy = tmp_path / "gnutls.config"
    policy.write_text("[priorities]\nCHARDEV_BRIDGE = SECURE128:-VERS-TLS1.2:%PROFILE_HIGH\n")
    proc = run_cli(
        *["--server", "--host", "127.0.0.1", "--port", "0", "--tls-creds", str(creds.server)],
        env={**ENV, "GNUTLS_SYSTEM_PRIORITY_FILE": str(policy)},
    )
    assert proc.returncode == 1, proc.stderr
    assert stderr_messages(proc.stderr)[-1] == (
        f"{policy} (CHARDEV_BRIDGE): priority flag '%PROFILE_HIGH' cannot be mapped onto OpenSSL"
    ), proc.stderr
