"""The command-line options of viewers and console-log rotation (``chardev-bridge --help``)."""

from __future__ import annotations

import argparse
import dataclasses

from chardev_bridge.common.configerror import ConfigError
from chardev_bridge.share.config import (
    DEFAULT_MAX_VIEWERS,
    DEFAULT_REPLAY,
    DEFAULT_VIEWERS_MODE,
    ViewersConfig,
    parse_viewers_spec,
)

DEFAULT_LOGFILE_BACKUPS = 5


def byte_size(text: str, *, zero_ok: bool = False) -> int:
    """``65536``, ``64K``, ``1M``, ``2G`` as bytes; an argparse type (0 only with ``zero_ok``)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    if number.isascii() and number.isdigit() and (int(number) > 0 or zero_ok):
        return int(number) * unit
    raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 65536, 64K, 1M)")


def _replay_size(text: str) -> int:
    return byte_size(text, zero_ok=True)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode (e.g. 0660)")
    return mode


def _viewers_spec(text: str) -> ViewersConfig:
    try:
        return parse_viewers_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_viewer_arguments(parser: argparse.ArgumentParser) -> None:
    """``--viewers``, ``--max-viewers``, ``--viewers-mode``, ``--replay``."""
    group = parser.add_argument_group("read-only viewers")
    group.add_argument(
        "--viewers",
        type=_viewers_spec,
        metavar="SPEC",
        help="let people watch what the remote sends, read-only: unix-listen:PATH or"
        " tcp-listen:[HOST:]PORT (loopback unless HOST is given); what a viewer types is"
        " discarded",
    )
    group.add_argument(
        "--max-viewers",
        type=_count,
        metavar="N",
        help=f"viewers at once; the next is refused (default {DEFAULT_MAX_VIEWERS})",
    )
    group.add_argument(
        "--viewers-mode",
        type=_mode,
        metavar="MODE",
        help="octal mode of a unix-listen viewer socket: who may connect may watch"
        f" (default {DEFAULT_VIEWERS_MODE:04o}, the owner only)",
    )
    group.add_argument(
        "--replay",
        type=_replay_size,
        metavar="BYTES",
        help="a viewer first gets the last BYTES the remote sent"
        f" (default {DEFAULT_REPLAY // 1024}K; K/M/G ok; 0: none)",
    )


def add_rotation_arguments(group: argparse._ArgumentGroup) -> None:
    """``--logfile-max``, ``--logfile-backups``."""
    group.add_argument(
        "--logfile-max",
        type=byte_size,
        metavar="SIZE",
        help="rotate --logfile at a line boundary before it passes SIZE (K/M/G):"
        " FILE -> FILE.1 -> ... (default: never; SIGUSR1 reopens it for an external logrotate)",
    )
    group.add_argument(
        "--logfile-backups",
        type=_count,
        metavar="N",
        help=f"rotated files to keep, FILE.1 to FILE.N (default {DEFAULT_LOGFILE_BACKUPS})",
    )


def sharing_problems(args: argparse.Namespace) -> list[ConfigError]:
    """Combinations argparse cannot refuse by itself: an option that would be silently
    ignored is an error, as on the rest of the command line."""
    errors: list[ConfigError] = []
    if args.max_viewers is not None and args.max_viewers < 1:
        errors.append(ConfigError("max-viewers", "--max-viewers must be at least 1"))
    if args.viewers is None:
        for option in ("max_viewers", "viewers_mode", "replay"):
            if getattr(args, option) is not None:
                setting = option.replace("_", "-")
                errors.append(ConfigError(setting, f"--{setting} needs --viewers"))
    if args.logfile_max is not None and args.logfile is None:
        errors.append(ConfigError("logfile-max", "--logfile-max needs --logfile"))
    if args.logfile_backups is not None and args.logfile_max is None:
        errors.append(ConfigError("logfile-backups", "--logfile-backups needs --logfile-max"))
    return errors


def logfile_backups(args: argparse.Namespace) -> int:
    """``--logfile-backups``, or its default."""
    return DEFAULT_LOGFILE_BACKUPS if args.logfile_backups is None else int(args.logfile_backups)


def viewers_from_args(args: argparse.Namespace) -> ViewersConfig | None:
    """The viewers' configuration, or None without ``--viewers``."""
    spec: ViewersConfig | None = args.viewers
    if spec is None:
        return None
    return dataclasses.replace(
        spec,
        max_viewers=DEFAULT_MAX_VIEWERS if args.max_viewers is None else args.max_viewers,
        mode=DEFAULT_VIEWERS_MODE if args.viewers_mode is None else args.viewers_mode,
        replay=DEFAULT_REPLAY if args.replay is None else args.replay,
    )
