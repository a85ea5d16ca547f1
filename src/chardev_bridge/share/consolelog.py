"""``--logfile``: the console's bytes in a file, written by a worker thread.

The data path only appends a chunk to a bounded queue (:meth:`ConsoleLog.to_remote`,
:meth:`ConsoleLog.to_local`); formatting (hex dump, timestamped lines), writing, rotation and
reopening happen in the worker. A full or slow disk therefore costs log lines, never console
bytes nor time on the data path: what cannot be queued or written is counted, reported once
when the loss starts and once when the log is written again.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from chardev_bridge.share.config import TrafficLogConfig
from chardev_bridge.share.logformat import LogFormatter
from chardev_bridge.share.stats import ShareCounters

log = logging.getLogger("chardev_bridge")

#: Bytes waiting for the worker; past this, chunks are dropped from the log (and counted).
QUEUE_MAX = 4 << 20

#: The worker formats at most this much at a time, then rests for _REST_RATIO times as long as
#: formatting took. Formatting holds the GIL, and the event loop, needing it back after each
#: system call, would otherwise wait up to the switch interval (5 ms) every time, and a flood
#: into a hex or lines log would slow the data path to the formatter's pace. Resting caps the
#: formatter at a quarter of the time; what it cannot take is lost to the log (and counted).
FORMAT_SLICE = 64 * 1024
_REST_RATIO = 3.0
_REST_ABOVE = 0.0005

# Every open log, for SIGUSR1 (one signal reopens them all, as nginx and stunnel do).
_open_logs: weakref.WeakSet[ConsoleLog] = weakref.WeakSet()


def reopen_all() -> int:
    """Ask every open console log to reopen its file (after an external logrotate moved it);
    returns how many were asked."""
    logs = list(_open_logs)
    for console_log in logs:
        console_log.reopen()
    return len(logs)


class ConsoleLog:
    """Writes what crosses the bridge to ``cfg.path`` from a worker thread; see
    :class:`TrafficLogConfig` for the choices."""

    def __init__(self, cfg: TrafficLogConfig, counters: ShareCounters | None = None) -> None:
        self.cfg = cfg
        self.counters = counters if counters is not None else ShareCounters()
        try:
            self._file: BinaryIO = cfg.path.open("ab" if cfg.append else "wb", buffering=0)
        except OSError as exc:
            # At start, as in QEMU: better no bridge than one that silently logs nothing.
            raise OSError(f"--logfile {cfg.path}: {exc.strerror or exc}") from exc
        self._size = _file_size(self._file)
        self._wants_remote = cfg.direction in ("to-remote", "both")
        self._wants_local = cfg.direction in ("from-remote", "both")
        # Shared with the worker, under _cond.
        self._cond = threading.Condition()
        self._items: deque[tuple[str, bytes, float]] = deque()
        self._queued = 0
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._reopen_wanted = False
        self._closing = False
        self._writing = False
        # The worker's own.
        self._formatter = LogFormatter(cfg)
        self._failing = False
        self._rotation_failing = False
        self._last_write_ok = False
        self._lost_lines = 0
        self._lost_bytes = 0
        # The writer's log lines name the bridge, as the bridge's own do.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._work,), name=f"console log {cfg.path}", daemon=True
        )
        self._thread.start()
        _open_logs.add(self)

    # -- the data path's side: append and return -------------------------------------------

    def to_remote(self, data: bytes | bytearray) -> None:
        """Record bytes going to the remote (directions ``to-remote`` and ``both``)."""
        if self._wants_remote:
            self._put(">", data)

    def to_local(self, data: bytes | bytearray) -> None:
        """Record bytes coming from the remote (directions ``from-remote`` and ``both``)."""
        if self._wants_local:
            self._put("<", data)

    def _put(self, direction: str, data: bytes | bytearray) -> None:
        size = len(data)
        with self._cond:
            if self._closing:
                return
            if self._queued + size > QUEUE_MAX:
                # The worker is behind (a slow disk): this chunk is lost to the log only.
                self._dropped_lines += self._formatter.line_count(data)
                self._dropped_bytes += size
                return
            self._items.append((direction, bytes(data), time.time()))
            self._queued += size
            self._cond.notify_all()

    def reopen(self) -> None:
        """Close and reopen the file by its name (SIGUSR1, after an external logrotate)."""
        with self._cond:
            self._reopen_wanted = True
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued so far is written (or lost); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not (self._items or self._writing) or not self._thread.is_alive(),
                timeout,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (partial lines too) and close the file; what a slow disk or
        formatter has not written within ``timeout`` seconds is left to the daemon thread
        (the bridge does not wait longer to exit)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        _open_logs.discard(self)

    # -- the worker -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._items or self._closing or self._reopen_wanted):
                    wait = self._formatter.next_partial_deadline(time.time())
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                # Taken, but still counted in _queued until written: the queue's bound is
                # the memory bound of the whole log.
                items = list(self._items)
                self._items.clear()
                dropped = (self._dropped_lines, self._dropped_bytes)
                self._dropped_lines = self._dropped_bytes = 0
                reopen, closing = self._reopen_wanted, self._closing
                self._reopen_wanted = False
                self._writing = True
            if dropped[1]:
                self._lose(*dropped, "writing falls behind (a slow disk?)")
            if reopen:
                self._guarded(self._reopen_file)
            for direction, data, when in items:
                self._guarded(self._format_and_write, direction, data, when)
                with self._cond:
                    self._queued -= len(data)
            self._guarded(self._write_stale_partials, closing)
            with self._cond:
                self._writing = False
                # Caught up only if nothing was dropped meanwhile: else the loss goes on.
                recovered = self._failing and self._last_write_ok and not self._dropped_bytes
                self._cond.notify_all()
            if recovered:
                self._failing = False
                log.info(
                    "traffic log %s is being written again; %d lines (%d bytes) were lost",
                    self.cfg.path,
                    self._lost_lines,
                    self._lost_bytes,
                )
                self._lost_lines = self._lost_bytes = 0
            if closing:
                break
        try:
            self._file.close()
        except OSError:
            pass

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except Exception:
            # A bug here must cost the log, not the worker: the bridge goes on either way.
            log.exception("traffic log %s: the writer failed", self.cfg.path)

    def _write_stale_partials(self, everything: bool) -> None:
        self._write(self._formatter.stale_records(time.time(), everything=everything))

    def _format_and_write(self, direction: str, data: bytes, when: float) -> None:
        if self.cfg.format == "raw":
            self._write(self._formatter.records(direction, data, when))
            return
        for start in range(0, len(data), FORMAT_SLICE):
            began = time.perf_counter()
            records = self._formatter.records(direction, data[start : start + FORMAT_SLICE], when)
            spent = time.perf_counter() - began
            self._write(records)
            if spent > _REST_ABOVE:
                time.sleep(spent * _REST_RATIO)

    def _write(self, records: list[bytes]) -> None:
        """Write records, rotating first whenever the next would pass ``max_bytes``."""
        if not records:
            return
        limit = self.cfg.max_bytes
        if limit is None:
            self._emit(b"".join(records))
            return
        batch: list[bytes] = []
        batch_size = 0
        for record in records:
            # A record longer than the limit alone is cut, so that no file passes it.
            for start in range(0, len(record), limit):
                piece = record[start : start + limit]
                if self._size + batch_size + len(piece) > limit:
                    self._emit(b"".join(batch))
                    batch, batch_size = [], 0
                    if self._size > 0:
                        self._rotate()
                batch.append(piece)
                batch_size += len(piece)
        self._emit(b"".join(batch))

    def _emit(self, block: bytes) -> None:
        view = memoryview(block)
        try:
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError("the file took no bytes")
                self._size += written
                view = view[written:]
        except OSError as exc:
            rest = bytes(view)
            self._lose(rest.count(b"\n") or 1, len(rest), str(exc.strerror or exc))
            self._last_write_ok = False
            return
        if block:
            self._last_write_ok = True

    def _lose(self, lines: int, size: int, why: str) -> None:
        self.counters.log_lost(lines, size)
        self._lost_lines += lines
        self._lost_bytes += size
        if not self._failing:
            self._failing = True
            log.error(
                "traffic log %s: %s; the bridge keeps forwarding, the log misses bytes",
                self.cfg.path,
                why,
            )

    def _rotate(self) -> None:
        """FILE -> FILE.1 -> ... -> FILE.N (the oldest dropped), then a new, empty FILE.

        Renames, not copies: ``tail -F FILE`` sees the name change and follows the new file.
        """
        path = self.cfg.path
        try:
            if self.cfg.backups > 0:
                for i in range(self.cfg.backups - 1, 0, -1):
                    older = _numbered(path, i)
                    if older.exists():
                        os.replace(older, _numbered(path, i + 1))
                os.replace(path, _numbered(path, 1))
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            # FILE still holds the log: truncating it now would throw it away. Keep
            # appending past the limit until a rotation works, and say so once.
            if not self._rotation_failing:
                self._rotation_failing = True
                log.error(
                    "traffic log %s: cannot rotate (%s); it keeps growing past --logfile-max",
                    path,
                    exc.strerror or exc,
                )
            return
        self._rotation_failing = False
        self._reopen_file(truncate=True)

    def _reopen_file(self, truncate: bool = False) -> None:
        try:
            fresh: BinaryIO = self.cfg.path.open("wb" if truncate else "ab", buffering=0)
        except OSError as exc:
            # Keep writing where we were: losing the log to a failed reopen helps nobody.
            log.error("traffic log %s: cannot reopen: %s", self.cfg.path, exc.strerror or exc)
            return
        try:
            self._file.close()
        except OSError:
            pass
        self._file = fresh
        self._size = _file_size(fresh)
        if not truncate:
            log.info("traffic log %s reopened", self.cfg.path)


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _file_size(file: BinaryIO) -> int:
    try:
        return os.fstat(file.fileno()).st_size
    except (OSError, ValueError):
        return 0
