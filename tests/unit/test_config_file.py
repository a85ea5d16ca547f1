"""The serve config file's rules, on parsed TOML (no file, no process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chardev_bridge.serve.configfile import ConfigFileError, ServeConfig, parse_config

FILE = Path("/etc/chardev-bridge/consoles.toml")


def parse(raw: dict[str, Any]) -> ServeConfig:
    return parse_config(raw, FILE)


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigFileError) as caught:
        parse(raw)
    return caught.value.lines


def test_a_bridge_key_is_the_long_option_with_the_same_meaning() -> None:
    config = parse(
        {
            "bridge": {
                "vm1": {
                    "server": True,
                    "host": "127.0.0.1",
                    "port": 9102,
                    "tls-authz": ["O=Example,CN=ops*", "CN=admin"],
                    "no-verify-peer": True,
                    "local": "unix-listen:/run/vm1.sock",
                }
            }
        }
    )
    vm1 = config.bridges["vm1"]
    assert vm1.name == "vm1" and vm1.listen and vm1.port == 9102
    assert vm1.tls_authz == ("O=Example,CN=ops*", "CN=admin")
    assert not vm1.verify_peer
    assert str(vm1.local) == "unix-listen:/run/vm1.sock"


def test_defaults_apply_where_they_fit_and_name_expands_in_every_string() -> None:
    config = parse(
        {
            "defaults": {"reconnect": 1, "link": "/run/consoles/{name}", "port": 9001},
            "bridge": {
                "vm1": {"host": "vmhost1"},
                "mon": {"server": True, "local": "unix-listen:/run/{name}.sock", "port": 0},
            },
        }
    )
    vm1, mon = config.bridges["vm1"], config.bridges["mon"]
    assert vm1.reconnect == 1 and vm1.link == Path("/run/consoles/vm1") and vm1.port == 9001
    # reconnect and link do not apply to a listening bridge with a socket local end.
    assert mon.reconnect is None and mon.link is None and mon.port == 0
    assert mon.local.path == "/run/mon.sock"


def test_a_setting_that_does_not_apply_is_an_error_in_the_bridges_own_table() -> None:
    assert errors({"bridge": {"mon": {"server": True, "reconnect": 1}}}) == [
        f"{FILE}: [bridge.mon] reconnect: --reconnect applies to a connecting bridge, not --server"
    ]


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({"bridge": {"a": {"colour": 1}}}, "[bridge.a] colour: unknown key"),
        ({"bridge": {"a": {"server": "yes"}}}, "[bridge.a] server: expected true or false"),
        ({"bridge": {"a": {"port": [1]}}}, "[bridge.a] port: expected a string or a number"),
        ({"bridge": {"a b": {}}}, "[bridge.a b]: a bridge's name may use letters"),
        ({"bridge": {"a": 3}}, "[bridge.a]: expected a table of settings, not an integer"),
        ({"bridges": {}}, "unknown table [bridges]"),
        ({"defaults": {"colour": 1}, "bridge": {"a": {}}}, "[defaults] colour: unknown key"),
        ({"bridge": {"a": {}}, "status": {"port": 1}}, "[status] port: unknown key"),
        ({"bridge": {"a": {}}, "status": {"listen": "udp:1"}}, "[status] listen: "),
        ({}, "no bridges: add a [bridge.NAME] table"),
    ],
)
def test_each_problem_names_the_file_the_bridge_and_the_key(raw: dict[str, Any], line: str) -> None:
    found = errors(raw)
    assert any(e.startswith(f"{FILE}: {line}") for e in found), found


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        (
            {"server": True, "host": "127.0.0.1", "port": 9000},
            {"server": True, "host": "127.0.0.1", "port": 9000},
            "port: 127.0.0.1:9000",
        ),
        (
            {"server": True, "listen-fd": "mon"},
            {"server": True, "listen-fd": "mon"},
            "listen-fd: mon",
        ),
        (
            {"server": True, "port": 0, "local": "unix-listen:/run/x.sock"},
            {"server": True, "port": 0, "local": "unix-listen:/run/x.sock"},
            "local: /run/x.sock",
        ),
        (
            {"viewers": "unix-listen:/run/v.sock"},
            {"viewers": "unix-listen:/run/v.sock"},
            "viewers: /run/v.sock",
        ),
        ({"link": "/run/c"}, {"link": "/run/c"}, "link: /run/c"),
    ],
)
def test_two_listeners_on_the_same_thing_name_both_bridges(
    a: dict[str, Any], b: dict[str, Any], words: str
) -> None:
    found = errors({"bridge": {"a": a, "b": b}})
    assert f"{FILE}: [bridge.b] {words} is also used by [bridge.a]" in found, found


def test_a_connecting_bridges_port_never_clashes() -> None:
    config = parse(
        {
            "bridge": {
                "srv": {"server": True, "host": "127.0.0.1", "port": 9000, "local": "stdio"},
                "cli": {"host": "127.0.0.1", "port": 9000},
            }
        }
    )
    assert set(config.bridges) == {"srv", "cli"}


def test_the_status_endpoint_clashes_with_a_bridge_on_its_address() -> None:
    found = errors(
        {
            "bridge": {"a": {"server": True, "host": "127.0.0.1", "port": 9100}},
            "status": {"listen": "tcp-listen:127.0.0.1:9100"},
        }
    )
    assert found == [f"{FILE}: [bridge.a] port: 127.0.0.1:9100 is also used by [status]"]
