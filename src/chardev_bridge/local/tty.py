"""An existing terminal device as the local end (``tty:PATH``), e.g. QEMU's ``-chardev pty``
or a USB serial adapter.

The device may vanish (a VM stopped, an adapter unplugged). What comes back at the same path
is used again only when it is provably the configured device, because bytes written to the
wrong terminal go to whoever holds it:

* A configured ``/dev/pts/N`` is never reopened: the kernel hands the freed number to the
  next pty anyone opens (a new terminal window), and a restarted QEMU gets another number
  anyway. The end is then over for good, as stdin's EOF ends stdio.
* A symlink (``/dev/serial/by-id/…``, a link the user points at QEMU's new pty) is followed:
  pointing it at a device is the user's intent. A link left pointing at a pty that went
  away is not followed until the link itself is made again.
* Any other path (a device node) is reopened only if it is the same device (``st_rdev``).

While the path is gone or refused, reads and writes wait and the path is retried with
backoff; the remote session does not notice, and no byte is dropped on our side.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

import trio

from chardev_bridge.common.backoff import Backoff, RepeatFilter
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.local.termios_raw import make_raw

log = logging.getLogger("chardev_bridge")

_REOPEN_MIN, _REOPEN_MAX = 0.1, 5.0

# Linux's Unix98 pty slaves (/dev/pts/N): majors 136 to 143 (UNIX98_PTY_SLAVE_MAJOR and the
# next UNIX98_PTY_MAJOR_COUNT - 1). Their numbers are handed out again as soon as freed.
_PTY_SLAVE_MAJORS = range(136, 144)

_NOT_AN_IDENTITY = (
    "a pty number is not an identity, so it is not reopened: use a stable name (a symlink"
    " you control, /dev/serial/by-id/…) or a unix socket chardev (-chardev"
    " socket,path=…,server=on,wait=off + --local unix:PATH)"
)


@dataclass(frozen=True)
class DeviceIdentity:
    """What the configured path was when its device was opened."""

    #: ``st_rdev`` of the opened device.
    rdev: int
    #: ``(st_dev, st_ino, st_ctime_ns)`` of the path itself when it is a symlink, else None:
    #: a link that is made again (udev, ``ln -sf``) gets a new inode or ctime.
    link: tuple[int, int, int] | None = None
    #: Where the path led when it was opened (for log lines).
    target: str = ""

    @property
    def is_pty(self) -> bool:
        """Whether the device is a pty slave, whose number is reused by unrelated ptys."""
        return os.major(self.rdev) in _PTY_SLAVE_MAJORS


def names_a_pty_number(path: str) -> bool:
    """Whether the configured string itself names ``/dev/pts/N`` (no symlink resolution)."""
    return os.path.abspath(path).startswith("/dev/pts/")


def never_reopened(path: str, first: DeviceIdentity) -> bool:
    """Whether a device that went away at ``path`` may never be reopened: ``path`` names a
    pty by its number, directly or as another device node of a pty slave."""
    return names_a_pty_number(path) or (first.link is None and first.is_pty)


def refuse_reopen(was: DeviceIdentity, now: DeviceIdentity) -> str | None:
    """Why the device now at the path must not be used (None: it may).

    ``was`` is the device that went away, ``now`` the one opened at the same path since.
    (A path :func:`never_reopened` names is not opened again at all.)
    """
    if now.link is not None:
        if now.is_pty and now.link == was.link:
            return (
                f"the link still points to {now.target}, a pty that went away and whose number"
                " another terminal may have now: it is followed once the link is made again"
            )
        return None
    if now.is_pty:
        return f"it is now a pty ({now.target}), and {_NOT_AN_IDENTITY}"
    if now.rdev != was.rdev:
        return (
            f"it is now device {_majmin(now.rdev)}, not {_majmin(was.rdev)} as before:"
            " not provably the same device, so nothing is written to it"
        )
    return None


def _majmin(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _identity(path: str) -> DeviceIdentity:
    """The identity of the device ``path`` leads to now, before anything opens it: opening
    a device (a serial line's DTR) or making it raw (someone's terminal) is already an act
    on it. Raises ``OSError`` when the path leads nowhere."""
    rdev = os.stat(path).st_rdev
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode):
        return DeviceIdentity(rdev, None, path)
    return DeviceIdentity(rdev, (st.st_dev, st.st_ino, st.st_ctime_ns), os.path.realpath(path))


def _open(path: str, identity: DeviceIdentity) -> int:
    """Open the device ``identity`` names at ``path``, read-write, and make it raw; an
    ``OSError`` naming the path if it fails, or if another device took its place meanwhile."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if os.fstat(fd).st_rdev != identity.rdev:
            raise OSError(errno.EAGAIN, "it changed while being opened", path)
        make_raw(fd)
    except OSError as exc:
        os.close(fd)
        # make_raw only knows the fd; say which path, and "not a tty" rather than ENOTTY's
        # "Inappropriate ioctl for device" (e.g. --local tty:/dev/null or a regular file).
        why = "not a tty" if exc.errno == errno.ENOTTY else exc.strerror
        raise OSError(exc.errno, why, path) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


class TtyEnd(LocalEnd, trio.abc.Stream):
    """A tty or pty slave opened read-write, in raw mode, reopened when it comes back as
    the same device (see the module's docstring)."""

    persistent = True
    ends_by_itself = False

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: trio.lowlevel.FdStream | None = None
        self._identity: DeviceIdentity | None = None
        self._generation = 0
        self._reopen_lock = trio.Lock()
        self._closed = False
        # Kept across reopens and reset only by a successful read or write, so a device
        # that opens but fails at once is retried with growing delays, not in a tight loop.
        self._backoff = Backoff(_REOPEN_MIN, _REOPEN_MAX)

    async def start(self) -> None:
        """Open the device now: a wrong path is a start-up error, not a retry loop."""
        identity = _identity(self.path)
        self._stream = trio.lowlevel.FdStream(_open(self.path, identity))
        self._identity = identity
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """The device itself, for every session."""
        await trio.lowlevel.checkpoint()
        return self

    def describe(self) -> str:
        """``tty PATH``."""
        return f"tty {self.path}"

    async def _current(self) -> tuple[trio.lowlevel.FdStream, int] | None:
        """The open device and its generation; None once the end is over for good."""
        if self._closed:
            raise trio.ClosedResourceError
        if self._stream is None and not self.exhausted:
            await self._reopen(self._generation)
        if self.exhausted:
            return None
        assert self._stream is not None
        return self._stream, self._generation

    async def _lost(self, generation: int, why: str) -> None:
        """The device went away under ``generation``: close it and reopen (once), unless
        what may come back at the path cannot be told from an unrelated device."""
        async with self._reopen_lock:
            if generation != self._generation or self.exhausted:
                return  # the other direction already dealt with it
            if self._stream is not None:
                await self._stream.aclose()
                self._stream = None
            assert self._identity is not None
            if never_reopened(self.path, self._identity):
                log.error("%s is gone (%s); %s", self.describe(), why, _NOT_AN_IDENTITY)
                self.exhausted = True
                return
            log.warning("%s is gone (%s); reopening when it comes back", self.describe(), why)
        await self._reopen(generation)

    async def _reopen(self, generation: int) -> None:
        async with self._reopen_lock:
            if self.exhausted or (self._stream is not None and generation != self._generation):
                return
            assert self._identity is not None
            repeats = RepeatFilter()
            await trio.sleep(self._backoff.next_delay())
            while True:
                try:
                    now = _identity(self.path)
                    refused = refuse_reopen(self._identity, now)
                    if refused is None:
                        fd = _open(self.path, now)
                        break
                    why = f"not reopened: {refused}"
                except OSError as exc:
                    why = str(exc.strerror)
                show, count = repeats.should_log(why)
                # "is gone" was just said; a refusal is news, a missing path only if it lasts.
                if show and (count > 1 or why.startswith("not reopened")):
                    tries = f", {count} tries" if count > 1 else ""
                    log.info("%s still gone (%s%s)", self.describe(), why, tries)
                await trio.sleep(self._backoff.next_delay())
            self._stream = trio.lowlevel.FdStream(fd)
            self._identity = now
            self._generation += 1
            if now.link is not None:
                log.info("%s is back: it now points to %s", self.describe(), now.target)
            else:
                log.info("%s is back (the same device, %s)", self.describe(), _majmin(now.rdev))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from the device, waiting across disappearances; ``b""`` once the end is
        over for good."""
        while True:
            current = await self._current()
            if current is None:
                return b""
            stream, generation = current
            try:
                data = await stream.receive_some(max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._closed:
                    raise
                await self._lost(generation, _why(exc))
                continue
            if data:
                self._backoff.reset()
                return data
            await self._lost(generation, "hangup")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write bytes to the device, waiting across disappearances.

        A write cut short by the device vanishing is repeated whole on the reopened device:
        the device that vanished took its unread input with it, so nothing is duplicated
        that a reader could have seen.
        """
        while True:
            current = await self._current()
            if current is None:
                raise trio.BrokenResourceError(f"{self.describe()} is gone for good")
            stream, generation = current
            try:
                await self._send_counted(stream, data)
                self._backoff.reset()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._closed:
                    raise
                await self._lost(generation, _why(exc))

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the device can take more bytes."""
        current = await self._current()
        if current is None:
            raise trio.BrokenResourceError(f"{self.describe()} is gone for good")
        await current[0].wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the device."""
        self._closed = True
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        await trio.lowlevel.checkpoint()


def _why(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno is not None:
        return errno.errorcode.get(cause.errno, str(cause.errno))
    return str(exc) or type(exc).__name__
