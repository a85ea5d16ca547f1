"""What --help and the README tell: the creds subcommands, output, exit statuses, SIGTERM and the
backoff in --help; every option of the bridge and of `creds` documented in the README."""

from __future__ import annotations

import argparse
import re

from chardev_bridge.bridge.options import build_parser
from chardev_bridge.qemu.creds_cli import _parser as creds_parser
from tests.support.procs import ROOT

README = (ROOT / "README.md").read_text()


def test_help_tells_creds_subcommands_output_exit_codes_sigterm_and_backoff() -> None:
    text = build_parser().format_help()
    usage = text.split("\n\n", 1)[0]
    assert "chardev-bridge creds {init,issue,check,revoke}" in usage
    for words in (
        "creds init DIR",
        "creds issue DIR",
        "creds check DIR",
        "creds revoke DIR",
        '"pty: /dev/pts/N" is printed on stdout',
        "retried after 0.1 s, doubling up to SECONDS",
        "waits\n  SECONDS, doubling up to --reconnect-max",
        "SIGTERM or SIGINT: stop taking new sessions, deliver the bytes in flight",
        "exit status:\n  0 ",
        "\n  1  a start-up error",
        "\n  2  a command line error",
    ):
        assert words in text, words


def _options(parser: object) -> set[str]:
    return {
        opt
        for action in parser._actions  # type: ignore[attr-defined]
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--version")
    }


def test_every_creds_option_has_help_text_and_is_in_the_readme() -> None:
    [subcommands] = [
        a for a in creds_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    for name, sub in subcommands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.option_strings[0] != "-h":
                assert action.help, f"creds {name} {action.option_strings[0]} has no help"
        for option in _options(sub):
            assert re.search(rf"creds {name} .*{re.escape(option)}\b", README), (name, option)


def test_every_bridge_option_is_in_the_readme() -> None:
    missing = [opt for opt in sorted(_options(build_parser())) if f"`{opt}" not in README]
    assert missing == []
