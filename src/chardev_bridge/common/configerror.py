"""A setting that cannot be used as given, named so that the CLI and a config file can
each say where it came from."""

from __future__ import annotations


class ConfigError(ValueError):
    """One setting that cannot be used as given. ``setting`` is its name: the long option
    without ``--``, which is also its key in a config file."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class InvalidConfig(ValueError):
    """Every problem found in one bridge's configuration, one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
