"""Start-up failures worded for the user: the option, the path or address, the cause, the fix.

Python's own words (``[Errno 98] Address already in use``) name neither the option nor the
address; the places that know them raise :class:`StartError` instead.
"""

from __future__ import annotations

import errno

from chardev_bridge.common.hostport import format_hostport


class StartError(OSError):
    """An ``OSError`` whose message is a whole sentence for the log (no ``[Errno N]``).

    Still an ``OSError``, so that code handling start-up ``OSError`` handles it too.
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe_listen_error(exc: OSError, option: str, host: str, port: int) -> str:
    """Why listening on ``host``:``port`` (set by ``option``) failed, and what to do."""
    where = format_hostport(host, port)
    match exc.errno:
        case errno.EADDRINUSE:
            return (
                f"{option}: cannot listen on {where}: address already in use: another process"
                f" (another bridge? QEMU?) listens there; `ss -ltnp 'sport = :{port}'` shows"
                " which, or choose another port"
            )
        case errno.EADDRNOTAVAIL:
            return (
                f"{option}: cannot listen on {where}: no network interface of this machine"
                " has that address"
            )
        case errno.EACCES if 0 < port < 1024:
            return (
                f"{option}: cannot listen on {where}: permission denied: ports below 1024"
                " need root or CAP_NET_BIND_SERVICE; choose a port from 1024 up"
            )
    if exc.errno is not None and exc.errno < 0:  # getaddrinfo: the name does not resolve
        return f"{option}: cannot listen on {where}: {host!r} is not a known host name or address"
    return f"{option}: cannot listen on {where}: {exc.strerror or exc}"


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, groups (trio's nurseries) flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in exception_leaves(sub)]
    return [exc]
