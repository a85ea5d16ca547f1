"""A new pseudo-terminal as the local end, like QEMU's ``-chardev pty``."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import trio

from chardev_bridge.common.backoff import RepeatFilter
from chardev_bridge.common.starterror import StartError
from chardev_bridge.local.base import LocalEnd
from chardev_bridge.local.termios_raw import is_raw, make_raw
from chardev_bridge.net._fdqueue import unread_bytes

log = logging.getLogger("chardev_bridge")

# At exit, how long bytes still queued in the pty may take to be read before it is closed.
DRAIN_SECONDS = 5.0
# How long a byte written to the master may take to show in the slave's input queue.
_FLIP_SECONDS = 0.05
# ... giving up sooner when nothing was read for this long (nobody has the pty open).
_DRAIN_STALL_SECONDS = 0.5
# A read that returns this much found the line discipline (4 KiB) about full: a writer is
# streaming, and its next bytes are already on their way (see PtyEnd._await_stream).
_STREAMING_READ = 2048
# How long to watch for them before reading anyway.
_STREAM_SPIN_SECONDS = 100e-6


class PtyEnd(LocalEnd, trio.abc.Stream):
    """The master side of a fresh pty; applications open the slave (``path``).

    The bridge keeps a slave fd open itself. Without one, the master reads EIO and polls
    POLLHUP whenever no application has the slave open, so a read loop would spin; with it,
    the pty behaves like a serial line that is always there: bytes written while nobody reads
    wait in the line discipline (and writes block once it is full: back-pressure), and the
    path stays valid across any number of remote sessions.
    """

    persistent = True
    ends_by_itself = False

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self.path = ""
        self._master = -1
        self._slave = -1
        self._stream: trio.lowlevel.FdStream | None = None
        # A client that keeps cooking the pty must not flood the log with one line per write.
        self._raw_restores = RepeatFilter()

    async def start(self) -> None:
        """Create the pty in raw mode and the optional symlink to it."""
        self._master, self._slave = os.openpty()
        # The stream owns the master from here, so aclose() closes it if a step below fails.
        self._stream = trio.lowlevel.FdStream(self._master)
        self.path = os.ttyname(self._slave)
        make_raw(self._slave)
        if self.link is not None:
            _replace_symlink(self.link, self.path)
        await trio.lowlevel.checkpoint()

    async def next_stream(self) -> trio.abc.Stream:
        """The pty itself: the same stream for every session."""
        await trio.lowlevel.checkpoint()
        return self

    @property
    def pty_path(self) -> str | None:
        """The pty's ``/dev/pts/N``."""
        return self.path

    def describe(self) -> str:
        """``pty /dev/pts/N`` (and its link)."""
        return f"pty {self.path}" + (f" (link {self.link})" if self.link else "")

    def _keep_raw(self) -> None:
        # Termios settings persist across slave opens, so a client (or `stty sane`) can
        # leave the pty cooked, which would echo remote bytes back to the remote and mangle
        # CR/LF. Checked before every write and after every read: a single write in cooked
        # mode is already an echo, and the check is one tcgetattr ioctl.
        if self._slave < 0:
            return  # closed: the stream operation itself reports that
        if not is_raw(self._slave):
            make_raw(self._slave)
            show, count = self._raw_restores.should_log("cooked")
            if show:
                log.warning(
                    "pty %s had been taken out of raw mode; raw mode restored%s",
                    self.path,
                    f" ({count} times so far)" if count > 1 else "",
                )

    def _before_write(self) -> None:
        self._keep_raw()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes an application wrote to the slave."""
        data = await self._open_stream().receive_some(max_bytes)
        if not data or max_bytes is None:
            self._keep_raw()
            return data
        # The line discipline hands over at most ~4 KiB per read; a writer on the other core
        # has often refilled it already. Take what is there now to send fewer, larger TLS
        # records; wait (briefly) for more only while a writer is streaming, so that a
        # keystroke goes out at once.
        parts = [data]
        size = len(data)
        while size < max_bytes:
            if len(parts[-1]) >= _STREAMING_READ:
                self._await_stream()
            try:
                more = os.read(self._master, max_bytes - size)
            except (BlockingIOError, OSError):
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        self._keep_raw()
        return b"".join(parts) if len(parts) > 1 else data

    def _await_stream(self) -> None:
        """Wait, awake, up to :data:`_STREAM_SPIN_SECONDS` for the line discipline to hold bytes.

        A read that finds it empty sleeps in the kernel until the tty worker has moved the
        next ~4 KiB over from the flip buffer, so a streaming writer costs a sleep and a
        wake-up per 4 KiB; on an otherwise idle machine (a VM above all) the CPU halts in
        each of them and waking it takes longer than the worker's work. FIONREAD does not
        wait, so watching it keeps this CPU awake for the few microseconds that takes;
        sched_yield lets the worker run first should it be queued on this very CPU. Only
        after a read that found the line discipline about full: a keystroke never waits here.
        """
        deadline = time.perf_counter() + _STREAM_SPIN_SECONDS
        while unread_bytes(self._master) == 0 and time.perf_counter() < deadline:
            os.sched_yield()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Deliver bytes to the application; blocks while nobody reads and the pty is full."""
        await self._send_counted(self._open_stream(), data)  # re-asserts raw mode before each write

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the pty can take more bytes."""
        await self._open_stream().wait_send_all_might_not_block()

    def _open_stream(self) -> trio.lowlevel.FdStream:
        if self._stream is None:
            raise trio.ClosedResourceError("the pty is closed")
        return self._stream

    async def aclose(self) -> None:
        """Remove the link; let an application read what is still queued; close the pty.

        Closing a pty discards its unread input, so bytes the remote sent just before the
        end (the reply to QEMU's ``quit``, say) would be lost: wait up to
        :data:`DRAIN_SECONDS` while somebody is still reading them.
        """
        try:
            self._remove_own_link()
            await self._wait_until_read()
        finally:
            # Even when the wait is cancelled: a closing end must not leak its fds.
            if self._slave >= 0:
                os.close(self._slave)
                self._slave = -1
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        await trio.lowlevel.checkpoint()

    def _remove_own_link(self) -> None:
        # Only our own link: another bridge may have taken the name over since.
        if self.link is None:
            return
        try:
            if self.link.is_symlink() and os.readlink(self.link) == self.path:
                self.link.unlink()
        except FileNotFoundError:
            pass  # removed meanwhile by someone else
        except OSError as exc:
            # The pty's readers still get their last bytes; the link is only left behind.
            log.warning("cannot remove link %s: %s", self.link, exc.strerror or exc)

    async def _wait_until_read(self) -> None:
        if self._slave < 0:
            return
        deadline = trio.current_time() + DRAIN_SECONDS
        queued = _queued(self._slave)
        if queued == 0 and self.bytes_written:
            # A write reaches the slave's queue a moment later (the tty flip buffer is
            # pushed by a kernel worker): right after one, FIONREAD still says 0.
            await trio.sleep(_FLIP_SECONDS)
            queued = _queued(self._slave)
        stalled_since = trio.current_time()
        while queued > 0 and trio.current_time() < deadline:
            await trio.sleep(0.02)
            now_queued = _queued(self._slave)
            if now_queued < queued:
                stalled_since = trio.current_time()
            elif trio.current_time() - stalled_since > _DRAIN_STALL_SECONDS:
                return  # nobody is reading: do not hold up the exit
            queued = now_queued


def _queued(fd: int) -> int:
    """Bytes waiting in the pty for an application to read (FIONREAD on the slave)."""
    return unread_bytes(fd) or 0


def _replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target``; a stale symlink is replaced, anything else refused."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"--link {link}: exists and is not a symlink; not replacing it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        # os.symlink names the hidden temporary file, which the user never asked for.
        folder = link.absolute().parent
        if exc.errno == errno.ENOENT and not folder.is_dir():
            why = f"the folder {folder} does not exist (create it, or link elsewhere)"
        elif exc.errno == errno.EACCES:
            why = f"permission denied: this user may not create files in {folder}"
        else:
            why = exc.strerror or str(exc)
        raise StartError(exc.errno, f"--link {link}: cannot link it to {target}: {why}") from exc
