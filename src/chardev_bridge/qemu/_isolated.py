"""QEMU's credential checks in a forked child: the parts of cryptography they load (its
OpenSSL backend for signature checks, key parsing) stay in the child.

A bridge checks its credentials once at start and at each reload; the checks need parts of
cryptography that the bridge never uses again, and that would stay resident for its life
(a few MiB for every idle bridge process). The findings come back as plain text lines, so
the parent loads nothing to read them either.

The command line starts the child as soon as its options are parsed, before it imports trio
and the rest of the bridge: the checks then run on another core while the bridge loads, and
it still listens only once they have passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, cast

from chardev_bridge.qemu.credfiles import CredentialError, Finding, Level, read_key_password
from chardev_bridge.qemu.settings import TLSSettings
from chardev_bridge.tls.setup import Endpoint

# Between a record's kind and its text, and between records: bytes no message holds.
_FIELD, _RECORD = "\x1f", "\x1e"
_CRASHED = "crashed"
_NOT_AFTER = "not-after"


class CheckResult(NamedTuple):
    """What the child found, and when the certificate it checked expires (unix time)."""

    findings: list[Finding]
    cert_not_after: float | None


class ChildCheck:
    """:func:`~chardev_bridge.qemu.credcheck.check_creds_and_expiry` of one directory,
    running in a forked child from the moment this is made; :meth:`result` waits for it."""

    def __init__(self, directory: Path, endpoint: Endpoint, *, password: bytes | None) -> None:
        self.checks = (directory, endpoint, password)
        self._result: CheckResult | None = None
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover (the child: its coverage is not collected)
            os.close(read_end)
            _report(write_end, directory, endpoint, password)
            os._exit(0)
        os.close(write_end)
        self._read_end = read_end

    def result(self) -> CheckResult:
        """The child's findings (waits for it the first time)."""
        if self._result is None:
            with os.fdopen(self._read_end, "rb") as pipe:
                text = pipe.read().decode()
            os.waitpid(self.pid, 0)
            self._result = _parse(text, self.checks[0])
        return self._result


def start_checks(settings: TLSSettings) -> ChildCheck | None:
    """Start checking ``settings``' x509 credentials now, for ``build_tls_setup`` to
    collect; None when there are none to check, or when reading the key's password fails
    (``build_tls_setup`` reports that in its turn)."""
    directory = settings.creds
    if directory is None or settings.creds_psk is not None:
        return None
    try:
        path = settings.key_password_file
        password = read_key_password(path) if path is not None else None
    except CredentialError:
        return None
    return ChildCheck(directory, settings.endpoint, password=password)


def _report(
    pipe_fd: int, directory: Path, endpoint: Endpoint, password: bytes | None
) -> None:  # pragma: no cover (runs in the child)
    try:
        # Imported here, in the child: the parent never loads the checks at all.
        from chardev_bridge.qemu.credcheck import check_creds_and_expiry

        findings, not_after = check_creds_and_expiry(directory, endpoint, password=password)
        records = [f"{f.level}{_FIELD}{f.message}" for f in findings]
        if not_after is not None:
            records.append(f"{_NOT_AFTER}{_FIELD}{not_after!r}")
        text = _RECORD.join(records)
    except BaseException as exc:
        text = f"{_CRASHED}{_FIELD}{type(exc).__name__}: {exc}"
    with os.fdopen(pipe_fd, "wb") as pipe:
        pipe.write(text.encode())


def _parse(text: str, directory: Path) -> CheckResult:
    findings = []
    not_after = None
    for record in text.split(_RECORD) if text else []:
        kind, _, value = record.partition(_FIELD)
        if kind == _CRASHED:
            raise RuntimeError(f"checking the credentials in {directory} failed: {value}")
        if kind == _NOT_AFTER:
            not_after = float(value)
        else:
            findings.append(Finding(cast(Level, kind), value))
    return CheckResult(findings, not_after)
