"""The status JSON and the Prometheus text, built from snapshots without any socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import chardev_bridge
from chardev_bridge.serve.metrics import CONTENT_TYPE, metrics_text
from chardev_bridge.serve.statusmodel import BridgeStatus, ProcessStatus, iso_utc, status_json

# 2030-01-01T00:00:00Z and 2024-05-01T12:30:45Z
NOT_AFTER = 1893456000.0
RELOADED = 1714566645.0

BRIDGE_KEYS = {
    "state",
    "remote",
    "peer",
    "peer_dn",
    "tls",
    "local",
    "link",
    "sessions",
    "bytes_to_remote",
    "bytes_from_remote",
    "last_error",
    "cert_not_after",
    "viewers",
    "reconnects",
    "handshake_failures",
    "dropped_bytes",
}


def vm1() -> BridgeStatus:
    return BridgeStatus(
        name="vm1",
        state="connected",
        remote="console.example.com:5000",
        peer="192.0.2.7:41000",
        peer_dn="CN=console.example.com,O=Example",
        tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
        local="pty /dev/pts/4",
        link="/run/chardev-bridge/vm1.pty",
        sessions=3,
        bytes_to_remote=1234,
        bytes_from_remote=56789,
        last_error="remote closed the connection",
        cert_not_after=NOT_AFTER,
        viewers=2,
        reconnects=5,
        handshake_failures={"unknown_ca": 4, "expired": 1},
        dropped_bytes={"no_remote": 17},
    )


def vm0() -> BridgeStatus:
    """A stopped plain-TCP bridge: every optional field empty."""
    return BridgeStatus(name="vm0", state="stopped", local="unix /run/qemu/vm0.sock")


def process(*bridges: BridgeStatus, last_reload: float | None = RELOADED) -> ProcessStatus:
    return ProcessStatus(
        bridges=list(bridges),
        last_reload=last_reload,
        last_reload_error=None,
        config="/etc/chardev-bridge/serve.toml",
    )


def parsed(status: ProcessStatus) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(status_json(status).decode("utf-8"))
    return document


def test_status_json_keys_bridges_by_name_in_sorted_order_with_the_process_fields() -> None:
    document = parsed(process(vm1(), vm0()))
    assert list(document) == ["bridges", "last_reload", "last_reload_error", "config"]
    assert list(document["bridges"]) == ["vm0", "vm1"]
    assert document["config"] == "/etc/chardev-bridge/serve.toml"
    assert document["last_reload_error"] is None


def test_status_json_carries_every_bridge_figure_as_given() -> None:
    assert parsed(process(vm1()))["bridges"]["vm1"] == {
        "state": "connected",
        "remote": "console.example.com:5000",
        "peer": "192.0.2.7:41000",
        "peer_dn": "CN=console.example.com,O=Example",
        "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384",
        "local": "pty /dev/pts/4",
        "link": "/run/chardev-bridge/vm1.pty",
        "sessions": 3,
        "bytes_to_remote": 1234,
        "bytes_from_remote": 56789,
        "last_error": "remote closed the connection",
        "cert_not_after": "2030-01-01T00:00:00Z",
        "viewers": 2,
        "reconnects": 5,
        "handshake_failures": {"expired": 1, "unknown_ca": 4},
        "dropped_bytes": {"no_remote": 17},
    }


def test_status_json_gives_absent_values_as_null_and_counters_as_zero() -> None:
    bridge = parsed(process(vm0()))["bridges"]["vm0"]
    assert set(bridge) == BRIDGE_KEYS
    for key in ("remote", "peer", "peer_dn", "tls", "link", "last_error", "cert_not_after"):
        assert bridge[key] is None, key
    for key in ("sessions", "bytes_to_remote", "bytes_from_remote", "viewers", "reconnects"):
        assert bridge[key] == 0, key
    assert bridge["handshake_failures"] == {}
    assert bridge["dropped_bytes"] == {}


def test_status_json_has_no_field_that_could_hold_key_material() -> None:
    body = status_json(process(vm1(), vm0()))
    document = json.loads(body)
    keys = set(document) | {k for b in document["bridges"].values() for k in b}
    assert keys == BRIDGE_KEYS | {"bridges", "last_reload", "last_reload_error", "config"}
    for word in (b"key", b"psk", b"secret", b"password", b"PRIVATE", b"BEGIN"):
        assert word not in body, word


def test_status_json_writes_times_as_iso_8601_utc_with_a_z() -> None:
    assert parsed(process(vm1()))["last_reload"] == "2024-05-01T12:30:45Z"
    assert iso_utc(RELOADED + 0.9) == "2024-05-01T12:30:45Z"
    assert iso_utc(None) is None


def test_status_json_before_any_successful_load_has_a_null_last_reload() -> None:
    document = parsed(
        ProcessStatus(bridges=[], last_reload=None, last_reload_error="line 3: bad key")
    )
    assert document == {
        "bridges": {},
        "last_reload": None,
        "last_reload_error": "line 3: bad key",
        "config": None,
    }


def test_status_json_is_utf_8_text_ending_in_a_newline() -> None:
    bridge = BridgeStatus(name="vm-é", state="retrying", local="stdio", last_error="naïve")
    body = status_json(process(bridge))
    assert body.endswith(b"}\n")
    assert "naïve".encode() in body
    assert json.loads(body)["bridges"]["vm-é"]["state"] == "retrying"


def test_status_json_refuses_two_bridges_of_one_name() -> None:
    with pytest.raises(ValueError, match="two bridges are named 'vm1'"):
        status_json(process(vm1(), vm1()))


def samples(status: ProcessStatus) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics text, keyed by name and sorted labels."""
    text = metrics_text(lambda: status).decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_bytes_per_bridge_and_direction() -> None:
    got = samples(process(vm1(), vm0()))
    bytes_total = "chardev_bridge_bytes_total"
    assert got[(bytes_total, (("bridge", "vm1"), ("direction", "to_remote")))] == 1234
    assert got[(bytes_total, (("bridge", "vm1"), ("direction", "from_remote")))] == 56789
    assert got[(bytes_total, (("bridge", "vm0"), ("direction", "to_remote")))] == 0
    assert got[(bytes_total, (("bridge", "vm0"), ("direction", "from_remote")))] == 0


def test_metrics_give_sessions_connected_reconnects_and_viewers_per_bridge() -> None:
    got = samples(process(vm1(), vm0()))
    for name, vm1_value, vm0_value in [
        ("chardev_bridge_sessions_total", 3, 0),
        ("chardev_bridge_connected", 1, 0),
        ("chardev_bridge_reconnects_total", 5, 0),
        ("chardev_bridge_viewers", 2, 0),
    ]:
        assert got[(name, (("bridge", "vm1"),))] == vm1_value, name
        assert got[(name, (("bridge", "vm0"),))] == vm0_value, name


@pytest.mark.parametrize("state", ["listening", "connecting", "retrying", "stopped"])
def test_only_the_connected_state_counts_as_connected(state: Any) -> None:
    bridge = BridgeStatus(name="vm2", state=state, local="stdio")
    assert samples(process(bridge))[("chardev_bridge_connected", (("bridge", "vm2"),))] == 0


def test_metrics_label_handshake_failures_and_dropped_bytes_by_reason() -> None:
    got = samples(process(vm1(), vm0()))
    failures = "chardev_bridge_handshake_failures_total"
    assert got[(failures, (("bridge", "vm1"), ("reason", "unknown_ca")))] == 4
    assert got[(failures, (("bridge", "vm1"), ("reason", "expired")))] == 1
    dropped = "chardev_bridge_dropped_bytes_total"
    assert got[(dropped, (("bridge", "vm1"), ("reason", "no_remote")))] == 17
    assert not [key for key in got if key[0] in (failures, dropped) and ("bridge", "vm0") in key[1]]


def test_certificate_expiry_is_given_only_for_bridges_with_a_certificate() -> None:
    got = samples(process(vm1(), vm0()))
    expiry = "chardev_bridge_cert_expiry_timestamp_seconds"
    assert got[(expiry, (("bridge", "vm1"),))] == NOT_AFTER
    assert (expiry, (("bridge", "vm0"),)) not in got


def test_last_reload_success_is_a_timestamp_without_labels_and_absent_before_one() -> None:
    name = "chardev_bridge_last_reload_success_timestamp_seconds"
    assert samples(process(vm0()))[(name, ())] == RELOADED
    assert (name, ()) not in samples(process(vm0(), last_reload=None))


def test_metrics_text_declares_types_and_holds_only_chardev_bridge_metrics() -> None:
    text = metrics_text(lambda: process(vm1())).decode("utf-8")
    assert "# TYPE chardev_bridge_bytes_total counter\n" in text
    assert "# TYPE chardev_bridge_connected gauge\n" in text
    assert "# TYPE chardev_bridge_cert_expiry_timestamp_seconds gauge\n" in text
    # The global registry's process_* and python_gc_* collectors are not in the body.
    names = [line.split()[0] for line in text.splitlines() if not line.startswith("#")]
    assert names
    assert all(name.startswith("chardev_bridge_") for name in names)
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_metrics_are_built_from_a_fresh_snapshot_at_each_scrape() -> None:
    seen = iter([process(vm0()), process(vm1())])
    first = metrics_text(lambda: next(seen))
    second = metrics_text(lambda: next(seen))
    assert b'bridge="vm1"' not in first
    assert b'chardev_bridge_sessions_total{bridge="vm1"} 3.0' in second


def test_the_status_model_does_not_load_prometheus_client_or_trio() -> None:
    src = str(Path(chardev_bridge.__file__).parent.parent)
    code = (
        "import sys, chardev_bridge.serve.statusmodel;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client','trio')))"
    )
    env = {**os.environ, "PYTHONPATH": src}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout == "[]\n", run.stderr
