"""The sd_notify protocol over a real datagram socket, and the progress-driven watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from tests.fakes import FakeClock
from watcher.systemd import (
    Notifier,
    WatchdogFeeder,
    format_message,
    should_ping,
    socket_address,
    watchdog_interval,
)


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract-namespace datagram socket standing in for systemd: (NOTIFY_SOCKET value, receiver)."""
    name = f"flora-watcher-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting on the socket, each parsed into its KEY=VALUE fields."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096)
            messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(1.0)
    return messages


def test_lifecycle_messages_reach_the_socket(notify_socket):
    value, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert n.enabled
    assert n.ready(status="watching 3 runs")
    assert n.status("sweep ok: 3 active\nnext in 5s")
    assert n.watchdog()
    assert n.reloading(monotonic_usec=1234)
    assert n.stopping()
    assert received(sock) == [
        {"READY": "1", "STATUS": "watching 3 runs"},
        {"STATUS": "sweep ok: 3 active next in 5s"},
        {"WATCHDOG": "1"},
        {"RELOADING": "1", "MONOTONIC_USEC": "1234"},
        {"STOPPING": "1"},
    ]


def test_reloading_carries_the_monotonic_clock(notify_socket):
    value, sock = notify_socket
    Notifier.from_env({"NOTIFY_SOCKET": value}).reloading()
    [msg] = received(sock)
    assert msg["RELOADING"] == "1"
    assert int(msg["MONOTONIC_USEC"]) > 0


def test_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": path}).send(READY=1)
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_send_never_raises_and_logs_once_per_outage():
    n = Notifier.from_env({"NOTIFY_SOCKET": f"@no-such-socket-{uuid.uuid4().hex}"})
    with capture_logs() as logs:
        assert n.watchdog() is False
        assert n.watchdog() is False
        assert n.status("still failing") is False
    assert [entry["event"] for entry in logs] == ["systemd.notify_failed"]


def test_unsupported_socket_forms_disable_the_notifier():
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None
    assert socket_address("@") is None
    assert socket_address("@abc") == "\0abc"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    with capture_logs() as logs:
        assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert logs[0]["event"] == "systemd.notify_socket_unsupported"


def test_format_message_flattens_values():
    assert format_message({"READY": True, "STATUS": "a\r\nb"}) == b"READY=1\nSTATUS=a  b"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, expected):
    assert watchdog_interval(env) == expected


def test_should_ping_only_while_progress_is_recent():
    assert should_ping(100.0, 95.0, 10.0)
    assert should_ping(100.0, 90.0, 10.0)
    assert not should_ping(100.0, 89.9, 10.0)
    assert not should_ping(100.0, None, 10.0)


async def test_feeder_stops_pinging_when_the_sweep_loop_wedges(notify_socket):
    """Sweeps finish every 5 s until t=30 and then never again: pings go on while progress is at most
    12 s old (through t=40) and then stop, so systemd's watchdog fires."""
    value, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    clock = FakeClock(0.0)
    feeder = WatchdogFeeder(period=12.0, started=clock.monotonic())
    done = asyncio.Event()

    def sweep_loop(t: float) -> None:
        if t <= 30:
            feeder.progress(t)
        if t >= 80:
            done.set()

    clock.on_sleep = sweep_loop
    with capture_logs() as logs:
        task = asyncio.create_task(feeder.run(notifier, 5.0, clock))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    pings = received(sock)
    assert pings == [{"WATCHDOG": "1"}] * 9  # t = 0, 5, ..., 40
    assert feeder.missed >= 8  # t = 45, ..., 80 (and on until cancelled)
    assert [e["event"] for e in logs] == ["systemd.watchdog_withheld"]


def test_feeder_resumes_when_progress_returns(notify_socket):
    value, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    feeder = WatchdogFeeder(period=3.0, started=0.0)
    assert feeder.tick(notifier, 2.0)
    assert not feeder.tick(notifier, 10.0)
    feeder.progress(11.0)
    assert feeder.tick(notifier, 12.0)
    assert feeder.missed == 0
    assert len(received(sock)) == 2


def test_feeder_waits_for_the_first_progress(notify_socket):
    value, sock = notify_socket
    feeder = WatchdogFeeder(period=3.0)
    assert not feeder.tick(Notifier.from_env({"NOTIFY_SOCKET": value}), 1.0)
    assert received(sock) == []


def test_feeder_rejects_nonsense_periods():
    with pytest.raises(ValueError):
        WatchdogFeeder(period=0)
