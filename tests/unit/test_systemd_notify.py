"""systemd integration: sd_notify datagrams, the watchdog pace, and taking socket-activated fds.

The notifier talks to a real AF_UNIX datagram socket each test binds; passed fds are real
sockets placed on free fds far above the ones pytest uses.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from chardev_bridge.serve.systemd import (
    Notifier,
    SocketActivationError,
    check_listening_stream,
    listeners_from,
    run_watchdog,
    take_listen_fds,
    watchdog_interval,
)

HOST = "127.0.0.1"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``, without blocking."""
    datagrams = []
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        while True:
            datagrams.append(sock.recv(8192))
    except BlockingIOError:
        return datagrams
    finally:
        sock.settimeout(timeout)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- sd_notify --------------------------------------------------------------------------------


def test_ready_sends_ready_1(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).ready()
    assert sock.recv(8192) == b"READY=1"


def test_reloading_carries_monotonic_usec(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).reloading()
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(8192))
    assert match is not None
    assert 0 <= now_usec - int(match[1]) < 1_000_000


def test_stopping_sends_stopping_1(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).stopping()
    assert sock.recv(8192) == b"STOPPING=1"


def test_watchdog_sends_watchdog_1(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).watchdog()
    assert sock.recv(8192) == b"WATCHDOG=1"


def test_status_is_one_line_in_utf8(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.status("3 bridges up\n1 down\r\n(vm2 — refused)\n")
    assert sock.recv(8192) == "STATUS=3 bridges up 1 down (vm2 — refused)".encode()


def test_status_too_long_for_systemd_is_cut_to_fit_one_datagram(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).status("é" * 5000)
    datagram = sock.recv(65536)
    assert datagram.startswith("STATUS=éé".encode())
    assert len(datagram) <= 4095
    datagram.decode("utf-8")  # cut on a character boundary


def test_each_message_is_its_own_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.status("starting 2 bridges")
    notifier.ready()
    notifier.stopping()
    assert received(sock) == [b"STATUS=starting 2 bridges", b"READY=1", b"STOPPING=1"]


def test_at_sign_names_an_abstract_socket() -> None:
    name = f"chardev-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(8192) == b"READY=1"


def test_without_notify_socket_nothing_is_opened_or_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chardev_bridge")
    before = open_fds()
    notifier = Notifier.from_environ({})
    notifier.ready()
    notifier.reloading()
    notifier.status("up")
    notifier.watchdog()
    notifier.stopping()
    assert not notifier.enabled
    assert open_fds() == before
    assert caplog.records == []


def test_vanished_socket_is_warned_about_once_and_never_raises(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.ready()
    assert sock.recv(8192) == b"READY=1"
    sock.close()
    os.unlink(path)

    notifier.status("still here")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"cannot notify systemd at NOTIFY_SOCKET={path}" in message
    assert "STATUS=still here not sent" in message
    assert "No such file or directory" in message
    assert "later failed notifications are not logged" in message


def test_full_notify_queue_drops_messages_instead_of_blocking(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    # Nobody reads: the receiver's queue (net.unix.max_dgram_qlen) fills within a few hundred.
    for _ in range(5000):
        notifier.watchdog()
    [record] = caplog.records
    assert "WATCHDOG=1 not sent" in record.getMessage()
    assert "Resource temporarily unavailable" in record.getMessage()
    assert 0 < len(received(sock)) < 5000


def test_close_releases_the_socket_and_a_later_message_reopens_it(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    before = open_fds()
    notifier.ready()
    assert len(open_fds() - before) == 1
    notifier.close()
    assert open_fds() == before
    notifier.stopping()
    assert received(sock) == [b"READY=1", b"STOPPING=1"]
    notifier.close()


# --- the watchdog -----------------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000"}) == 0.0015


def test_watchdog_interval_applies_when_watchdog_pid_is_ours() -> None:
    environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(environ) == 10.0


def test_no_watchdog_when_watchdog_pid_is_another_process() -> None:
    environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(environ) is None


def test_no_watchdog_without_watchdog_usec() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_PID": str(os.getpid())}) is None


def test_unusable_watchdog_usec_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chardev_bridge")
    assert watchdog_interval({"WATCHDOG_USEC": "30s"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}) is None
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "ignoring the systemd watchdog: WATCHDOG_USEC='30s' is not a positive number of "
        "microseconds",
        "ignoring the systemd watchdog: WATCHDOG_USEC='0' is not a positive number of microseconds",
        "ignoring the systemd watchdog: WATCHDOG_PID='me' is not a process id",
    ]


async def test_run_watchdog_pings_at_once_then_every_interval(
    notify_socket: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    counts: dict[float, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, notifier, 5.0)
        start = trio.current_time()
        seen = 0
        for at in (0.1, 4.9, 5.1, 9.9, 10.1, 50.1):
            await trio.sleep_until(start + at)
            seen += len(received(sock))
            counts[at] = seen
        nursery.cancel_scope.cancel()
    assert counts == {0.1: 1, 4.9: 1, 5.1: 2, 9.9: 2, 10.1: 3, 50.1: 11}
    notifier.close()


async def test_run_watchdog_after_a_stall_pings_once_not_a_burst(
    notify_socket: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, notifier, 1.0)
        await trio.sleep(0.5)
        assert len(received(sock)) == 1
        # The event loop is stuck for 10 intervals (the clock moves, no task runs).
        autojump_clock.jump(10.0)
        await trio.sleep(0.1)
        assert len(received(sock)) == 1
        await trio.sleep(1.0)
        assert len(received(sock)) == 1
        nursery.cancel_scope.cancel()
    notifier.close()


# --- socket activation ------------------------------------------------------------------------

PlaceFds = Callable[..., int]


@pytest.fixture
def place_fds() -> Iterator[PlaceFds]:
    """Put sockets (or other fds) on contiguous free fds from 200 on, as systemd does from 3.

    The originals are closed; the placed fds are closed at teardown, so tests detach the
    socket objects take_listen_fds wraps around them (see :func:`detached`).
    """
    placed: list[int] = []

    def place(*ends: socket.socket | int) -> int:
        first = 200
        while not all(_is_free(fd) for fd in range(first, first + len(ends))):
            first += 1
        for offset, end in enumerate(ends):
            os.dup2(end if isinstance(end, int) else end.fileno(), first + offset)
            placed.append(first + offset)
            if isinstance(end, int):
                os.close(end)
            else:
                end.close()
        return first

    yield place
    for fd in placed:
        try:
            os.close(fd)
        except OSError:
            pass  # a test closed it already


def _is_free(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def detached(taken: dict[str, list[socket.socket]]) -> dict[str, list[int]]:
    """The fds taken, by name; detaching leaves closing them to the place_fds fixture."""
    return {name: [sock.detach() for sock in socks] for name, socks in taken.items()}


def tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen()
    return sock


def activation_environ(count: int, names: str | None = None) -> dict[str, str]:
    """The variables systemd sets for this process, and one unrelated that must stay."""
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(count), "HOME": "/x"}
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    return environ


def test_passed_fds_are_mapped_by_name_in_order(place_fds: PlaceFds) -> None:
    first = place_fds(tcp_listener(), tcp_listener(), tcp_listener())
    environ = activation_environ(3, "vm2-monitor:status:vm2-monitor")
    taken = take_listen_fds(environ, first_fd=first)
    assert [sock.family for sock in taken["status"]] == [socket.AF_INET]
    assert detached(taken) == {"vm2-monitor": [first, first + 2], "status": [first + 1]}


def test_fds_without_listen_fdnames_are_named_unknown(place_fds: PlaceFds) -> None:
    first = place_fds(tcp_listener(), tcp_listener())
    taken = take_listen_fds(activation_environ(2), first_fd=first)
    assert detached(taken) == {"unknown": [first, first + 1]}


def test_an_empty_name_is_unknown(place_fds: PlaceFds) -> None:
    first = place_fds(tcp_listener(), tcp_listener())
    taken = take_listen_fds(activation_environ(2, ":console1"), first_fd=first)
    assert detached(taken) == {"unknown": [first], "console1": [first + 1]}


def test_taking_removes_the_listen_variables_and_marks_fds_close_on_exec(
    place_fds: PlaceFds,
) -> None:
    first = place_fds(tcp_listener())
    assert os.get_inheritable(first)
    environ = activation_environ(1, "console1")
    taken = take_listen_fds(environ, first_fd=first)
    assert environ == {"HOME": "/x"}
    assert not os.get_inheritable(first)
    assert detached(taken) == {"console1": [first]}


def test_taken_socket_keeps_the_family_and_type_of_the_passed_fd(
    place_fds: PlaceFds, tmp_path: Path
) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "console.sock"))
    unix.listen()
    first = place_fds(unix)
    taken = take_listen_fds(activation_environ(1, "local"), first_fd=first)
    [sock] = taken["local"]
    assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
    assert sock.getsockname() == str(tmp_path / "console.sock")
    check_listening_stream(sock, "local")
    detached(taken)


def test_listen_pid_of_another_process_takes_nothing_and_leaves_the_environment(
    place_fds: PlaceFds,
) -> None:
    first = place_fds(tcp_listener())
    environ = activation_environ(1, "console1")
    environ["LISTEN_PID"] = str(os.getpid() + 1)
    before = dict(environ)
    assert take_listen_fds(environ, first_fd=first) == {}
    assert environ == before
    assert os.get_inheritable(first)


def test_no_listen_pid_means_not_socket_activated() -> None:
    environ = {"LISTEN_FDS": "1", "HOME": "/x"}
    assert take_listen_fds(environ, first_fd=200) == {}
    assert environ == {"LISTEN_FDS": "1", "HOME": "/x"}


def test_zero_fds_takes_nothing_but_clears_the_variables() -> None:
    environ = activation_environ(0, "")
    assert take_listen_fds(environ, first_fd=200) == {}
    assert environ == {"HOME": "/x"}


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("LISTEN_FDS", "two", "LISTEN_FDS='two' is not a number of fds"),
        ("LISTEN_FDS", "-1", "LISTEN_FDS='-1' is not a number of fds"),
        ("LISTEN_PID", "self", "LISTEN_PID='self' is not a process id"),
        ("LISTEN_FDNAMES", "a:b:c", "LISTEN_FDNAMES='a:b:c' names 3 fds but LISTEN_FDS=2"),
        ("LISTEN_FDNAMES", "a", "LISTEN_FDNAMES='a' names 1 fds but LISTEN_FDS=2"),
    ],
)
def test_bad_listen_variables_are_refused_naming_the_variable_and_value(
    place_fds: PlaceFds, variable: str, value: str, words: str
) -> None:
    first = place_fds(tcp_listener(), tcp_listener())
    environ = activation_environ(2, "a:b")
    environ[variable] = value
    before = dict(environ)
    with pytest.raises(SocketActivationError, match=re.escape(words)):
        take_listen_fds(environ, first_fd=first)
    assert environ == before
    assert os.get_inheritable(first)


def test_a_passed_fd_that_is_not_open_is_refused(place_fds: PlaceFds) -> None:
    first = place_fds(tcp_listener(), tcp_listener())
    os.close(first + 1)
    environ = activation_environ(2, "a:b")
    with pytest.raises(
        SocketActivationError,
        match=rf"fd {first + 1} \('b'\) from LISTEN_FDS is not open: Bad file descriptor",
    ):
        take_listen_fds(environ, first_fd=first)
    assert os.get_inheritable(first)


def test_a_passed_fd_that_is_not_a_socket_is_refused(place_fds: PlaceFds) -> None:
    read_end, write_end = os.pipe()
    first = place_fds(tcp_listener(), read_end)
    os.close(write_end)
    with pytest.raises(
        SocketActivationError, match=rf"fd {first + 1} \('fifo'\) from LISTEN_FDS is not a socket"
    ):
        take_listen_fds(activation_environ(2, "tcp:fifo"), first_fd=first)


def test_a_connected_socket_is_not_a_listener() -> None:
    with tcp_listener() as server, socket.create_connection(server.getsockname()) as client:
        with pytest.raises(SocketActivationError) as caught:
            check_listening_stream(client, "vm2-monitor")
        assert str(caught.value) == (
            f"listen-fd 'vm2-monitor' (fd {client.fileno()}) is not listening: "
            "use ListenStream= with Accept=no in the socket unit"
        )


def test_a_bound_but_not_listening_stream_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        with pytest.raises(
            SocketActivationError, match=r"listen-fd 'console1' \(fd \d+\) is not listening"
        ):
            check_listening_stream(sock, "console1")


def test_a_datagram_socket_is_not_a_stream() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        with pytest.raises(
            SocketActivationError,
            match=r"listen-fd 'logs' \(fd \d+\) is not a stream socket: use ListenStream=",
        ):
            check_listening_stream(sock, "logs")


async def test_listeners_from_accept_connections_with_trio() -> None:
    server = tcp_listener()
    address = server.getsockname()
    [listener] = listeners_from([server])
    async with listener:
        client = await trio.open_tcp_stream(*address)
        async with client, await listener.accept() as accepted:
            await client.send_all(b"ping\n")
            assert await accepted.receive_some(64) == b"ping\n"
