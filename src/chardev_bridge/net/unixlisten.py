"""Listening on a unix socket path: a stale file is replaced, a live one never is, and the
file is removed at the end only if it is still the one made here.

Local ends, viewer sockets and the status endpoint all listen this way.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import trio

from chardev_bridge.common.starterror import StartError

# /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; __SO_ACCEPTCON in Flags
# marks a listening socket.
_SO_ACCEPTCON = 0x10000

_LIVE = "{path}: another process is listening on this socket; stop it or choose another path"


async def listen_unix(
    path: str, what: str, *, mode: int | None = None, backlog: int = 16
) -> tuple[trio.SocketListener, int]:
    """Listen on ``path``; returns the listener and the inode of the socket file (for
    :func:`remove_socket_file`). ``mode`` sets the file's permissions before anybody can
    connect. Raises :class:`StartError` whose message starts with ``what`` (the setting)."""
    try:
        _remove_if_stale(path)
    except OSError as exc:
        raise StartError(exc.errno, f"{what}: {exc.strerror or exc}") from exc
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        # Before listen(): until then every connect is refused, so nobody can use the file
        # with the mode it was born with.
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
        inode = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        folder = os.path.dirname(os.path.abspath(path))
        why = (
            f"the folder {folder} does not exist; create it or choose another path"
            if exc.errno == errno.ENOENT and not os.path.isdir(folder)
            else exc.strerror or str(exc)
        )
        raise StartError(exc.errno, f"{what}: cannot listen there: {why}") from exc
    return trio.SocketListener(sock), inode


def remove_socket_file(path: str, inode: int | None) -> None:
    """Remove the socket file ``path`` if it is still the one with ``inode``: another
    process may have taken the name over since."""
    if inode is None:
        return
    try:
        st = os.stat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_if_stale(path: str) -> None:
    """Remove the socket file ``path`` if nobody listens on it; raise :class:`OSError` if
    somebody does, if its state cannot be told, or if ``path`` is not a socket.

    Taking the name of a live socket would silently cut its owner off (another bridge,
    QEMU), so that is an error. A listener in /proc/net/unix settles it without disturbing
    anybody; otherwise only a refused connection proves the file stale (a listener would see
    one connection that closes at once).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(
            errno.EEXIST, f"{path} exists and is not a socket; remove it or choose another path"
        )
    if _listening_in_proc(path):
        raise OSError(errno.EADDRINUSE, _LIVE.format(path=path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Non-blocking: a unix connect completes or fails at once (EAGAIN: a full backlog).
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # removed meanwhile: the name is free either way
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass  # the listener's backlog is full: it is alive
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"{path}: cannot tell whether another process listens on it: {exc.strerror};"
            " remove it or choose another path",
        ) from exc
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, _LIVE.format(path=path))


def _listening_in_proc(path: str) -> bool:
    """Whether /proc/net/unix shows a listening socket bound to ``path`` (False if unknown)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _SO_ACCEPTCON:
            return True
    return False
