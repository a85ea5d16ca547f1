"""Read buffers stay off mmap: glibc's threshold raised, so that each small read of a whole chunk
does not keep a page mapped of its own (checked in a fresh interpreter)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import chardev_bridge

# Run in a fresh interpreter: whether glibc's mmap threshold was already raised depends on
# what the process did before (pytest's own imports may have done it).
_MMAPPED_BY_SMALL_READS = """
import ctypes, socket, sys
from chardev_bridge.bridge.datapath import CHUNK, keep_read_buffers_off_mmap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    keep_read_buffers_off_mmap()
a, b = socket.socketpair()
before = libc.mallinfo2().hblkhd
held = []
for _ in range(100):
    a.send(b"x")
    held.append(b.recv(CHUNK))
print(libc.mallinfo2().hblkhd - before)
"""


def _mmapped_by_small_reads(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MMAPPED_BY_SMALL_READS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(chardev_bridge.__file__).parent.parent)},
    )
    return int(done.stdout)


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the mmap threshold is glibc's behaviour"
)
def test_small_reads_stay_off_mmap_once_threshold_raised() -> None:
    # The premise: without the call, each 1-byte read of CHUNK keeps a page mapped of its own.
    assert _mmapped_by_small_reads("plain") >= 100 * 4096
    assert _mmapped_by_small_reads("fixed") == 0
