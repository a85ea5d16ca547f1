"""What a QEMU credentials directory holds and whose it is: its layout, the role it is for,
who may read a file; and the findings of a check. Nothing here parses a certificate, so the
bridge can use it without loading what the checks themselves need (``credcheck``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chardev_bridge.tls.setup import Endpoint

Level = Literal["error", "warning", "info"]


class CredentialError(Exception):
    """A credential directory or file cannot be used; the message names the file."""


@dataclass(frozen=True)
class Finding:
    """One line of a credentials check: ``level`` is error, warning or info."""

    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def has_errors(findings: list[Finding]) -> bool:
    """True when any finding is an error (QEMU would refuse to load the directory)."""
    return any(f.level == "error" for f in findings)


def guess_endpoint(directory: str | os.PathLike[str]) -> Endpoint | None:
    """The endpoint a directory is laid out for: server if it has ``server-cert.pem``, etc."""
    base = os.fspath(directory)
    if os.path.exists(os.path.join(base, "server-cert.pem")):
        return "server"
    if os.path.exists(os.path.join(base, "client-cert.pem")):
        return "client"
    return None


def is_init_root(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` is a root that ``creds init`` made: no ``ca-cert.pem`` of its
    own, but a ``server/`` or ``client/`` directory holding one."""
    base = os.fspath(directory)
    if os.path.exists(os.path.join(base, "ca-cert.pem")):
        return False
    return any(
        os.path.exists(os.path.join(base, sub, "ca-cert.pem")) for sub in ("server", "client")
    )


# The files each TLS role cannot do without (QEMU 7.2); a client certificate is optional.
REQUIRED_FILES: dict[Endpoint, tuple[str, ...]] = {
    "server": ("ca-cert.pem", "server-cert.pem", "server-key.pem"),
    "client": ("ca-cert.pem",),
}


def role_mismatch(directory: str | os.PathLike[str], endpoint: Endpoint) -> str | None:
    """Why ``directory`` holds the other TLS role's credentials rather than ``endpoint``'s
    (one sentence naming the directory and the files), or None when it does not.

    QEMU would load a server directory as a client one (only ``ca-cert.pem`` is required
    there) and then send no client certificate, which the server rejects after the
    handshake: so the contents, not only the missing files, decide.
    """
    base = os.fspath(directory)
    other: Endpoint = "client" if endpoint == "server" else "server"

    def has(name: str) -> bool:
        return os.path.exists(os.path.join(base, name))

    if has(f"{endpoint}-cert.pem") or not has(f"{other}-cert.pem"):
        return None
    theirs = [n for n in (f"{other}-cert.pem", f"{other}-key.pem") if has(n)]
    mine = [n for n in REQUIRED_FILES[endpoint] if not has(n)] or [
        f"{endpoint}-cert.pem",
        f"{endpoint}-key.pem",
    ]
    return (
        f"{base} holds {other} credentials ({', '.join(theirs)}), not {endpoint} ones:"
        f" it has no {' or '.join(mine)}"
    )


def read_key_password(path: Path) -> bytes:
    """The private key's password from ``path`` (``--tls-key-password-file``), without the
    line end an editor leaves."""
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise CredentialError(f"cannot read key password file {path}: {exc.strerror}") from None


def describe_unreadable(path: str | os.PathLike[str]) -> str:
    """Say which permission this process lacks to read ``path``: its mode, its owner and
    who we run as (a key readable only by root, read by a bridge run as a user)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError as exc:
        return f"{name}: {exc.strerror}"
    who = _user_name(os.geteuid())
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    return (
        f"{name} is mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}, and this process runs"
        f" as {who}, which lacks read permission on it: make it readable by {who} (chown it,"
        " or chmod g+r with a group this user is in), or run as its owner"
    )


def _user_name(uid: int) -> str:
    import pwd  # for an error message only

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp  # for an error message only

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"
