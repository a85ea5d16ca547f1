"""A tty's identity is its configured path: which paths name a pty number (never reopened, as
another terminal may get the number), and when a device that comes back is provably the same."""

from __future__ import annotations

import os

from chardev_bridge.local.tty import (
    DeviceIdentity,
    names_a_pty_number,
    never_reopened,
    refuse_reopen,
)

PTS = os.makedev(136, 10)  # /dev/pts/10


TTY_USB0 = os.makedev(188, 0)


def test_only_the_configured_string_decides_whether_a_path_names_a_pty_number() -> None:
    assert names_a_pty_number("/dev/pts/10")
    assert names_a_pty_number("/dev/../dev/pts/3")
    assert not names_a_pty_number("/dev/serial/by-id/usb-FTDI-if00-port0")
    assert not names_a_pty_number("/home/me/vm-console")  # a link to /dev/pts/N: followed
    assert never_reopened("/dev/pts/10", DeviceIdentity(PTS))
    # Another device node of a pty slave (mknod) is a pty number by another name.
    assert never_reopened("/srv/console", DeviceIdentity(PTS))
    assert not never_reopened("/home/me/vm-console", DeviceIdentity(PTS, (1, 2, 3)))
    assert not never_reopened("/dev/ttyUSB0", DeviceIdentity(TTY_USB0))


def test_a_device_node_is_reopened_only_as_the_same_device() -> None:
    was = DeviceIdentity(TTY_USB0, None, "/dev/ttyUSB0")
    assert refuse_reopen(was, DeviceIdentity(TTY_USB0, None, "/dev/ttyUSB0")) is None
    refused = refuse_reopen(was, DeviceIdentity(os.makedev(188, 1), None, "/dev/ttyUSB0"))
    assert refused == (
        "it is now device 188:1, not 188:0 as before: not provably the same device,"
        " so nothing is written to it"
    )
    refused = refuse_reopen(was, DeviceIdentity(PTS, None, "/dev/ttyUSB0"))
    assert refused is not None and "a pty number is not an identity" in refused


def test_a_link_is_followed_unless_it_was_left_pointing_at_a_pty_that_went_away() -> None:
    link = (1, 77, 1000)
    was = DeviceIdentity(PTS, link, "/dev/pts/10")
    # Made again (new inode or ctime): the user's intent, whatever it points to.
    assert refuse_reopen(was, DeviceIdentity(os.makedev(136, 12), (1, 78, 2000))) is None
    assert refuse_reopen(was, DeviceIdentity(PTS, (1, 78, 2000))) is None
    # The same link, still at the old number: whoever holds /dev/pts/10 now is a stranger.
    refused = refuse_reopen(was, DeviceIdentity(PTS, link, "/dev/pts/10"))
    assert refused is not None and "still points to /dev/pts/10" in refused
    # A link to a device that is not a pty (a by-id name, ~/serial -> /dev/ttyUSB0): followed.
    usb = DeviceIdentity(TTY_USB0, link, "/dev/ttyUSB0")
    assert refuse_reopen(usb, DeviceIdentity(os.makedev(188, 1), link, "/dev/ttyUSB1")) is None
