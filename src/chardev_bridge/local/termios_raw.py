"""Raw terminal mode, as cfmakeraw(3) sets it (Python 3.11's tty.setraw does less)."""

from __future__ import annotations

import termios
from collections.abc import Iterator
from contextlib import contextmanager

_IFLAG_OFF = (
    termios.IGNBRK
    | termios.BRKINT
    | termios.PARMRK
    | termios.ISTRIP
    | termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IXON
)
_LFLAG_OFF = termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN


def _raw(attrs: list[int | list[bytes | int]]) -> list[int | list[bytes | int]]:
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    assert isinstance(iflag, int) and isinstance(oflag, int)
    assert isinstance(cflag, int) and isinstance(lflag, int) and isinstance(cc, list)
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [
        iflag & ~_IFLAG_OFF,
        oflag & ~termios.OPOST,
        (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8,
        lflag & ~_LFLAG_OFF,
        ispeed,
        ospeed,
        cc,
    ]


@contextmanager
def _as_oserror() -> Iterator[None]:
    # termios.error is not an OSError, so it would slip past every caller's OSError handling
    # (start-up errors, the tty reopen loop, the data path); its args are (errno, message).
    try:
        yield
    except termios.error as exc:
        raise OSError(*exc.args) from None


def make_raw(fd: int) -> None:
    """Put the terminal on ``fd`` in raw mode: no echo, no CR/LF mangling, no signals.

    Raises :class:`OSError` (ENOTTY for something that is not a terminal).
    """
    with _as_oserror():
        termios.tcsetattr(fd, termios.TCSANOW, _raw(termios.tcgetattr(fd)))


def is_raw(fd: int) -> bool:
    """Whether the terminal on ``fd`` is still in the mode :func:`make_raw` sets.

    Raises :class:`OSError` like :func:`make_raw`.
    """
    with _as_oserror():
        attrs = termios.tcgetattr(fd)
    return attrs[:4] == _raw(attrs)[:4]
