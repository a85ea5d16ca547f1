"""QEMU's credential checks in a forked child: the parts of cryptography they load (its
OpenSSL backend for signature checks, key parsing) stay in the child.

A bridge checks its credentials once at start and at each reload; the checks need parts of
cryptography that the bridge never uses again, and that would stay resident for its life
(a few MiB for every idle bridge process). The findings come back as plain text lines, so
the parent loads nothing to read them either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from chardev_bridge.qemu.credfiles import Finding, Level
from chardev_bridge.tls.setup import Endpoint

# Between a finding's level and its message, and between findings: bytes no message holds.
_FIELD, _RECORD = "\x1f", "\x1e"
_CRASHED = "crashed"


def check_creds_in_child(
    directory: Path, endpoint: Endpoint, *, password: bytes | None
) -> list[Finding]:
    """:func:`~chardev_bridge.qemu.credcheck.check_creds`, run in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: its coverage is not collected)
        os.close(read_end)
        try:
            # Imported here, in the child: the parent never loads the checks at all.
            from chardev_bridge.qemu.credcheck import check_creds

            findings = check_creds(directory, endpoint, password=password)
            text = _RECORD.join(f"{f.level}{_FIELD}{f.message}" for f in findings)
        except BaseException as exc:
            text = f"{_CRASHED}{_FIELD}{type(exc).__name__}: {exc}"
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    findings = []
    for record in text.split(_RECORD) if text else []:
        level, _, message = record.partition(_FIELD)
        if level == _CRASHED:
            raise RuntimeError(f"checking the credentials in {directory} failed: {message}")
        findings.append(Finding(cast(Level, level), message))
    return findings
