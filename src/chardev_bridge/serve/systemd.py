"""systemd integration: sd_notify messages, the watchdog, and socket-activated listeners.

Written against the protocols themselves rather than libsystemd, so the console server runs the
same with or without systemd: with ``NOTIFY_SOCKET`` unset the notifier does nothing, and with
no ``LISTEN_*`` variables no fd is taken.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping
from typing import NoReturn

import trio

log = logging.getLogger("chardev_bridge")

#: The first fd systemd passes to a socket-activated service (``SD_LISTEN_FDS_START``).
SD_LISTEN_FDS_START = 3

#: The name ``sd_listen_fds_with_names`` gives an fd when ``LISTEN_FDNAMES`` names none.
UNKNOWN_FDNAME = "unknown"

LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# systemd reads a notification into a PIPE_BUF-sized buffer and ignores any message that fills it.
_MAX_DATAGRAM = 4095

# Line breaks would start a new KEY=VALUE assignment; systemd ignores a message with a NUL byte.
_NOT_IN_A_LINE = re.compile(r"[\r\n\0]+")


class Notifier:
    """Sends sd_notify messages to the socket named by ``NOTIFY_SOCKET``.

    Each method sends one datagram and returns at once. A failed send is logged once at warning
    level (later failures only at debug level) and never raised: a service manager that stopped
    listening must not take the bridges down with it. Without an address every method does
    nothing and no socket is opened.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``environ["NOTIFY_SOCKET"]``, or one that does nothing when unset."""
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``NOTIFY_SOCKET`` was set)."""
        return self.address is not None

    def ready(self) -> None:
        """Start-up, or a reload announced with :meth:`reloading`, is complete."""
        self.send("READY=1")

    def reloading(self) -> None:
        """A reload starts; call :meth:`ready` when it is done.

        ``Type=notify-reload`` (systemd 253 and later) matches the timestamp against the time it
        sent the reload signal; older versions ignore this message.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown has started."""
        self.send("STOPPING=1")

    def status(self, line: str) -> None:
        """Set the status text ``systemctl status`` shows; line breaks become spaces."""
        text = _NOT_IN_A_LINE.sub(" ", line).strip()
        room = _MAX_DATAGRAM - len(b"STATUS=")
        text = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Tell the watchdog the service is alive."""
        self.send("WATCHDOG=1")

    def send(self, message: str) -> None:
        """Send ``message`` (``KEY=VALUE`` lines joined by ``\\n``) as one datagram."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A blocked send would stall every bridge in the event loop; a notification
                # that does not fit now is better lost.
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), target)
        except OSError as exc:
            first_line = message.partition("\n")[0]
            if self._warned:
                log.debug("systemd notification %s not sent: %s", first_line, exc)
                return
            self._warned = True
            log.warning(
                "cannot notify systemd at NOTIFY_SOCKET=%s (%s not sent): %s; "
                "later failed notifications are not logged",
                self.address,
                first_line,
                exc,
            )

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, or None for no watchdog.

    None also when ``WATCHDOG_PID`` names another process: the variables were inherited from a
    parent that systemd watches, not meant for us. Values that are not positive integers are
    logged and ignored, as ``sd_watchdog_enabled`` refuses them.
    """
    usec_text = environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text is not None:
        pid = _positive_int(pid_text)
        if pid is None:
            log.warning(
                "ignoring the systemd watchdog: WATCHDOG_PID=%r is not a process id", pid_text
            )
            return None
        if pid != os.getpid():
            return None
    usec = _positive_int(usec_text)
    if usec is None:
        log.warning(
            "ignoring the systemd watchdog: WATCHDOG_USEC=%r is not a positive number of "
            "microseconds",
            usec_text,
        )
        return None
    return usec / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float) -> NoReturn:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds, until cancelled.

    Run in the event loop of the bridges on purpose: if that loop stalls, the pings stop and
    systemd restarts the service.
    """
    next_ping = trio.current_time()
    while True:
        notifier.watchdog()
        next_ping += interval
        # After a stall, the late ping just sent restarts the pace: no burst catching up.
        now = trio.current_time()
        if next_ping <= now:
            next_ping = now + interval
        await trio.sleep_until(next_ping)


class SocketActivationError(ValueError):
    """The ``LISTEN_*`` variables or the fds they describe cannot be used; one line says why."""


def take_listen_fds(
    environ: MutableMapping[str, str] = os.environ, *, first_fd: int = SD_LISTEN_FDS_START
) -> dict[str, list[socket.socket]]:
    """The sockets systemd passed, by ``FileDescriptorName=``, as ``sd_listen_fds_with_names``.

    Returns {} without touching anything when ``LISTEN_PID`` is unset or names another process
    (the variables were inherited). Otherwise every fd from ``first_fd`` on is marked
    close-on-exec and wrapped in a :class:`socket.socket`, an fd without a name is called
    ``"unknown"``, and ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from
    ``environ`` so child processes do not take them for theirs. Several fds may share a name.

    Raises:
        SocketActivationError: a variable is not a number, the names do not match the count, or
            a passed fd is not an open socket. Nothing is taken then.
    """
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None:
        return {}
    pid = _positive_int(pid_text)
    if pid is None:
        raise SocketActivationError(f"LISTEN_PID={pid_text!r} is not a process id")
    if pid != os.getpid():
        return {}
    count_text = environ.get("LISTEN_FDS", "0")
    count = _nonnegative_int(count_text)
    if count is None:
        raise SocketActivationError(f"LISTEN_FDS={count_text!r} is not a number of fds")
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = [UNKNOWN_FDNAME] * count
    else:
        names = [name or UNKNOWN_FDNAME for name in names_text.split(":")] if names_text else []
        if len(names) != count:
            raise SocketActivationError(
                f"LISTEN_FDNAMES={names_text!r} names {len(names)} fds but LISTEN_FDS={count}"
            )
    fds = range(first_fd, first_fd + count)
    for fd, name in zip(fds, names, strict=True):
        _check_is_socket(fd, name)

    taken: dict[str, list[socket.socket]] = {}
    for fd, name in zip(fds, names, strict=True):
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        # A child process must not inherit the listeners: it would hold them open after we
        # close them, and connections would queue where nobody accepts.
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        taken.setdefault(name, []).append(socket.socket(fileno=fd))
    for variable in LISTEN_VARIABLES:
        environ.pop(variable, None)
    return taken


def check_listening_stream(sock: socket.socket, name: str) -> None:
    """Raise :class:`SocketActivationError` unless ``sock`` is a listening stream socket.

    A bridge accepts connections on it: a datagram socket (``ListenDatagram=``) or a connection
    passed by ``Accept=yes`` cannot serve.
    """
    fd = sock.fileno()
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
        raise SocketActivationError(
            f"listen-fd {name!r} (fd {fd}) is not a stream socket: "
            "use ListenStream= in the socket unit"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise SocketActivationError(
            f"listen-fd {name!r} (fd {fd}) is not listening: "
            "use ListenStream= with Accept=no in the socket unit"
        )


def listeners_from(socks: list[socket.socket]) -> list[trio.SocketListener]:
    """trio listeners accepting on ``socks``, which they take over (and make non-blocking)."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in socks]


def _check_is_socket(fd: int, name: str) -> None:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SocketActivationError(
            f"fd {fd} ({name!r}) from LISTEN_FDS is not open: {exc.strerror}"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise SocketActivationError(
            f"fd {fd} ({name!r}) from LISTEN_FDS is not a socket "
            "(ListenFIFO= and ListenSpecial= fds cannot carry a bridge)"
        )


def _nonnegative_int(text: str) -> int | None:
    # int() also takes " 3", "+3" and "3_0", which systemd never writes: a sign of a mangled
    # environment, better refused.
    return int(text) if text.isascii() and text.isdigit() else None


def _positive_int(text: str) -> int | None:
    value = _nonnegative_int(text)
    return value if value else None


def named_sockets(fds: dict[str, list[socket.socket]], name: str) -> list[socket.socket]:
    """The listening sockets systemd passed under ``name``; raises
    :class:`SocketActivationError` naming what was passed and the fix."""
    socks = fds.get(name)
    if not socks:
        passed = ", ".join(sorted(fds)) or "none"
        raise SocketActivationError(
            f"systemd passed no socket named {name!r} (passed: {passed}); give the socket"
            f" unit FileDescriptorName={name}"
        )
    for sock in socks:
        check_listening_stream(sock, name)
    return socks
