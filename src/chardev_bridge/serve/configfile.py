"""The console server's config file: TOML, one ``[bridge.NAME]`` table per bridge.

A bridge's keys are the command line's long options without ``--``, with the same meanings
and defaults: each table becomes the command line of one bridge and goes through the CLI's
parser and checks (:func:`chardev_bridge.bridge.options.config_from_argv`), so the file and
the CLI share one vocabulary and one validation path. ``[defaults]`` gives any key to every bridge;
a bridge's own value wins, and a default that does not apply to a bridge (``reconnect`` on a
listening one) is left out for it. ``{name}`` in a string becomes the bridge's name.

Every problem is found before anything starts, each on one line naming the file, the bridge
and the key.
"""

from __future__ import annotations

import argparse
import functools
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chardev_bridge.bridge.config import BridgeConfig, InvalidConfig
from chardev_bridge.bridge.options import OptionError, build_parser, config_from_argv
from chardev_bridge.common.hostport import format_hostport

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")

# Options of the process, not of a bridge.
_NOT_BRIDGE_KEYS = {"help", "version", "verbose", "quiet", "status"}

_TOP_LEVEL = ("defaults", "bridge", "status")


@dataclass(frozen=True)
class ServeConfig:
    """What a config file describes: the bridges by name, and the status endpoint."""

    path: Path
    bridges: dict[str, BridgeConfig] = field(default_factory=dict)
    # Where the status endpoint listens (None: no endpoint).
    status_listen: str | None = None


class ConfigFileError(ValueError):
    """Every problem of a config file, one line each; ``partial`` holds the bridges that
    were good, so that later checks can report theirs too."""

    def __init__(self, lines: list[str], partial: ServeConfig | None = None) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.partial = partial


def load_config(path: Path) -> ServeConfig:
    """Read and check ``path``; raises :class:`ConfigFileError` with every problem found."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> ServeConfig:
    """Check a parsed config file; raises :class:`ConfigFileError` with every problem."""
    errors: list[str] = []
    for key in raw:
        if key not in _TOP_LEVEL:
            errors.append(f"{path}: unknown table [{key}]: expected {', '.join(_TOP_LEVEL)}")
    defaults = _table(raw, "defaults", path, errors)
    tables = _table(raw, "bridge", path, errors)
    status = _table(raw, "status", path, errors)
    status_listen = _status_listen(status, path, errors)
    vocabulary = _vocabulary()
    for key in defaults:
        if key not in vocabulary:
            errors.append(f"{path}: [defaults] {key}: {_unknown(key)}")
    bridges: dict[str, BridgeConfig] = {}
    if not tables and not errors:
        errors.append(f"{path}: no bridges: add a [bridge.NAME] table for each console")
    for name, table in tables.items():
        where = f"{path}: [bridge.{name}]"
        if not NAME_PATTERN.fullmatch(name):
            errors.append(f"{where}: a bridge's name may use letters, digits, '.', '_', '-'")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table of settings, not {_toml_type(table)}")
            continue
        cfg = _bridge(name, table, defaults, vocabulary, where, errors)
        if cfg is not None:
            bridges[name] = cfg
    errors += [f"{path}: {line}" for line in clashes(bridges, status_listen)]
    if errors:
        raise ConfigFileError(errors, ServeConfig(path, bridges, status_listen))
    return ServeConfig(path, bridges, status_listen)


def _table(raw: dict[str, Any], key: str, path: Path, errors: list[str]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        errors.append(f"{path}: {key} must be a table ([{key}]), not {_toml_type(value)}")
        return {}
    return value


def _status_listen(status: dict[str, Any], path: Path, errors: list[str]) -> str | None:
    for key in status:
        if key != "listen":
            errors.append(f"{path}: [status] {key}: unknown key; [status] takes listen")
    listen = status.get("listen")
    if listen is None:
        return None
    if not isinstance(listen, str):
        errors.append(f"{path}: [status] listen: expected a string, not {_toml_type(listen)}")
        return None
    from chardev_bridge.serve.status import StatusSpecError, parse_status_spec

    try:
        parse_status_spec(listen)
    except StatusSpecError as exc:
        errors.append(f"{path}: [status] listen: {exc}")
        return None
    return listen


@functools.cache
def _vocabulary() -> dict[str, argparse.Action]:
    """A bridge's keys: the long options, without ``--``, and what each takes."""
    keys: dict[str, argparse.Action] = {}
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option[2:] not in _NOT_BRIDGE_KEYS:
                keys[option[2:]] = action
    return keys


def _unknown(key: str) -> str:
    return "unknown key (keys are the long options of `chardev-bridge --help`, without --)"


def _bridge(
    name: str,
    table: dict[str, Any],
    defaults: dict[str, Any],
    vocabulary: dict[str, argparse.Action],
    where: str,
    errors: list[str],
) -> BridgeConfig | None:
    """One bridge's configuration, or None after appending its problems to ``errors``."""
    own: list[str] = []
    for key, value in table.items():
        if key not in vocabulary:
            errors.append(f"{where} {key}: {_unknown(key)}")
            continue
        problem = _argv_for(key, _expand(value, name), vocabulary[key], own)
        if problem is not None:
            errors.append(f"{where} {key}: {problem}")
    inherited = {k: v for k, v in defaults.items() if k in vocabulary and k not in table}
    for _ in range(len(inherited) + 1):
        argv = list(own)
        for key, value in inherited.items():
            problem = _argv_for(key, _expand(value, name), vocabulary[key], argv)
            if problem is not None:
                errors.append(f"{where} {key} (from [defaults]): {problem}")
                return None
        try:
            return config_from_argv(argv, name=name)
        except OptionError as exc:
            errors.append(f"{where} {_option_words(str(exc))}")
            return None
        except InvalidConfig as exc:
            # A default that does not fit this bridge is left out for it, not an error.
            unfit = [e.setting for e in exc.errors if e.setting in inherited]
            if not unfit:
                errors += [f"{where} {e.setting}: {e}" for e in exc.errors]
                return None
            for setting in unfit:
                inherited.pop(setting)
    return None


def _argv_for(key: str, value: Any, action: argparse.Action, argv: list[str]) -> str | None:
    """Append ``--key value`` for a TOML ``value`` to ``argv``; or say what is wrong."""
    option = f"--{key}"
    if action.nargs == 0:
        if not isinstance(value, bool):
            return f"expected true or false, not {_toml_type(value)}"
        if value:
            argv.append(option)
        return None
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str):
                return f"expected a string or a list of strings, not {_toml_type(item)}"
            argv += [option, item]
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"expected a string or a number, not {_toml_type(value)}"
    argv += [option, str(value)]
    return None


def _expand(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace("{name}", name)
    if isinstance(value, list):
        return [_expand(item, name) for item in value]
    return value


def _option_words(message: str) -> str:
    """argparse's ``argument --port: 'x' is not…`` as ``port: 'x' is not…``."""
    match = re.match(r"argument --([\w-]+)(?:/-\w)?: (.*)", message)
    return f"{match[1]}: {match[2]}" if match else message


def _toml_type(value: Any) -> str:
    """``a string``, ``an integer``: a TOML value's type in words."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list"}
    name = names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def clashes(bridges: dict[str, BridgeConfig], status_listen: str | None = None) -> list[str]:
    """Two listeners on the same thing (address, socket name, path): one line each, naming
    both bridges. A connecting bridge's port never clashes."""
    lines: list[str] = []
    owners: dict[tuple[str, str], str] = {}
    if status_listen is not None:
        owners[("address", _status_key(status_listen))] = "[status]"
    for name, cfg in bridges.items():
        for setting, thing in _listeners_of(cfg):
            other = owners.setdefault(thing, f"[bridge.{name}]")
            if other != f"[bridge.{name}]":
                lines.append(f"[bridge.{name}] {setting}: {thing[1]} is also used by {other}")
    return lines


def _listeners_of(cfg: BridgeConfig) -> Iterator[tuple[str, tuple[str, str]]]:
    if cfg.listen and cfg.listen_fd is not None:
        yield "listen-fd", ("listen-fd", cfg.listen_fd)
    elif cfg.listen and cfg.port != 0:
        yield "port", ("address", format_hostport(cfg.host, cfg.port))
    local = cfg.local
    if local.kind == "unix-listen" and local.path:
        yield "local", ("path", str(Path(local.path).absolute()))
    elif local.kind == "tcp-listen" and local.port:
        yield "local", ("address", format_hostport(local.host, local.port))
    if cfg.link is not None:
        yield "link", ("path", str(cfg.link.absolute()))
    viewers = cfg.viewers
    if viewers is not None:
        if viewers.path is not None:
            yield "viewers", ("path", str(Path(viewers.path).absolute()))
        elif viewers.port:
            yield "viewers", ("address", format_hostport(viewers.host, viewers.port))


def _status_key(spec: str) -> str:
    from chardev_bridge.serve.status import parse_status_spec

    address = parse_status_spec(spec)
    if address.kind == "unix":
        return str(Path(address.path).absolute())
    return format_hostport(address.host, address.port)
