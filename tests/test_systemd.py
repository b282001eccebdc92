"""sd_notify through a real AF_UNIX datagram socket standing in for systemd, and the watchdog."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from akeeba_backupd.systemd import (
    STATUS_MAX_CHARS,
    Notifier,
    NullNotifier,
    SystemdNotifier,
    notifier_from_environment,
    run_watchdog,
    sanitize_status,
    watchdog_interval_seconds,
)


class FakeSystemd:
    """A bound AF_UNIX SOCK_DGRAM socket that receives what the daemon sends, like systemd does."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket  # the NOTIFY_SOCKET value pointing here
        self.notifiers: list[SystemdNotifier] = []

    def notifier(self) -> SystemdNotifier:
        """Return a real notifier aimed at this socket, closed when the test ends."""
        notifier = SystemdNotifier(self.notify_socket)
        self.notifiers.append(notifier)
        return notifier

    def close(self) -> None:
        """Close every notifier handed out, then the listening socket."""
        for notifier in self.notifiers:
            notifier.close()
        self.sock.close()

    def receive_bytes(self) -> bytes:
        """Return the next datagram as sent, waiting at most 3 seconds."""
        self.sock.settimeout(3)
        return self.sock.recv(4096)

    def receive(self) -> str:
        """Return the next datagram, which must be ASCII, waiting at most 3 seconds."""
        return self.receive_bytes().decode("ascii")

    def pending(self) -> list[str]:
        """Return every datagram already queued, without waiting.

        Sending on an AF_UNIX datagram socket queues the datagram before send returns, so "nothing
        queued" right after a send means nothing was sent.
        """
        self.sock.setblocking(False)
        datagrams = []
        while True:
            try:
                datagrams.append(self.sock.recv(4096).decode("ascii"))
            except BlockingIOError:
                return datagrams


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    """A fake systemd listening on a socket file in tmp_path."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    fake = FakeSystemd(sock, str(path))
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    """A fake systemd listening on an abstract-namespace address."""
    name = f"akeeba-backupd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    fake = FakeSystemd(sock, "@" + name)
    try:
        yield fake
    finally:
        fake.close()


def _monotonic_microseconds() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --- messages ---------------------------------------------------------------------------------


def test_ready_sends_ready_and_status_in_one_datagram(systemd: FakeSystemd) -> None:
    """ready() sends READY=1 and STATUS= together."""
    systemd.notifier().ready("3 schedules, 0 running")
    assert systemd.receive() == "READY=1\nSTATUS=3 schedules, 0 running"


def test_stopping_status_and_watchdog_messages(systemd: FakeSystemd) -> None:
    """stopping(), status() and watchdog() each send their exact datagram, in order."""
    notifier = systemd.notifier()
    notifier.status("2 running")
    notifier.watchdog()
    notifier.stopping()
    assert [systemd.receive() for _ in range(3)] == ["STATUS=2 running", "WATCHDOG=1", "STOPPING=1"]


def test_reloading_carries_current_clock_monotonic_in_the_same_datagram(
    systemd: FakeSystemd,
) -> None:
    """reloading() sends RELOADING=1 and MONOTONIC_USEC (CLOCK_MONOTONIC µs) in one datagram."""
    notifier = systemd.notifier()
    before = _monotonic_microseconds()
    notifier.reloading()
    after = _monotonic_microseconds()

    first_line, second_line = systemd.receive().split("\n")
    assert first_line == "RELOADING=1"
    key, _, value = second_line.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert systemd.pending() == []


def test_non_ascii_status_arrives_as_ascii(systemd: FakeSystemd) -> None:
    """A French status with a check mark arrives transliterated, ASCII only."""
    notifier = systemd.notifier()
    notifier.status("Sauvegarde réussie ✓")
    notifier.ready("Sauvegarde réussie ✓\nsecond line")
    status = systemd.receive_bytes()
    ready = systemd.receive_bytes()
    assert status.isascii()
    assert status == b"STATUS=Sauvegarde reussie ?"
    assert ready == b"READY=1\nSTATUS=Sauvegarde reussie ? second line"


def test_abstract_namespace_address(abstract_systemd: FakeSystemd) -> None:
    """An '@name' NOTIFY_SOCKET reaches a socket bound in the abstract namespace."""
    notifier = notifier_from_environment({"NOTIFY_SOCKET": abstract_systemd.notify_socket})
    assert isinstance(notifier, SystemdNotifier)
    abstract_systemd.notifiers.append(notifier)
    notifier.ready("up")
    notifier.watchdog()
    assert abstract_systemd.receive() == "READY=1\nSTATUS=up"
    assert abstract_systemd.receive() == "WATCHDOG=1"


def test_environment_with_notify_socket_gives_a_working_systemd_notifier(
    systemd: FakeSystemd,
) -> None:
    """NOTIFY_SOCKET in the injected environment selects a notifier that sends there."""
    notifier = notifier_from_environment({"NOTIFY_SOCKET": systemd.notify_socket})
    assert isinstance(notifier, SystemdNotifier)
    systemd.notifiers.append(notifier)
    notifier.stopping()
    assert systemd.receive() == "STOPPING=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_no_notify_socket_sends_nothing(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    """Without NOTIFY_SOCKET in the injected mapping nothing is sent, even if os.environ has it."""
    # sdnotify reads os.environ by itself; prove the injected mapping is what counts.
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.notify_socket)
    notifier: Notifier = notifier_from_environment(environ)
    assert isinstance(notifier, NullNotifier)
    notifier.ready("up")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    assert systemd.pending() == []


def test_send_failure_is_logged_not_raised_and_later_sends_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A send to a missing socket logs at debug and returns; once it exists, sends arrive."""
    path = tmp_path / "late.sock"
    notifier = SystemdNotifier(str(path))
    with caplog.at_level(logging.DEBUG, logger="akeeba_backupd.systemd"):
        notifier.ready("up")
    assert any(
        record.levelno == logging.DEBUG and "could not notify systemd" in record.getMessage()
        for record in caplog.records
    )

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        sock.settimeout(3)
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()
        notifier.close()


def test_send_after_systemd_socket_is_replaced_reaches_the_new_socket(tmp_path: Path) -> None:
    """After the socket is re-created (systemd re-exec), one message is lost, the next arrives."""
    path = tmp_path / "notify.sock"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(path))
    first.settimeout(3)
    notifier = SystemdNotifier(str(path))
    notifier.status("one")
    assert first.recv(4096) == b"STATUS=one"
    first.close()
    os.unlink(path)

    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(str(path))
    try:
        second.settimeout(3)
        notifier.status("lost")  # the old connection is dead: fails quietly, then reconnects
        notifier.status("three")
        assert second.recv(4096) == b"STATUS=three"
    finally:
        second.close()
        notifier.close()


# --- sanitize_status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42 schedules, 2 running", "42 schedules, 2 running"),
        ("Sauvegarde réussie ✓", "Sauvegarde reussie ?"),
        ("Ünïcödé naïve façade", "Unicode naive facade"),
        ("line one\nline two\r\tend", "line one line two  end"),
        ("bell\x07 and del\x7f", "bell  and del"),
        ("日本", "??"),
        ("  padded\n", "padded"),
        ("", ""),
    ],
)
def test_sanitize_status_table(text: str, expected: str) -> None:
    """sanitize_status transliterates accents, replaces other non-ASCII and control characters."""
    assert sanitize_status(text) == expected


def test_sanitize_status_caps_length() -> None:
    """A long status is cut to 200 characters, marked with an ellipsis."""
    result = sanitize_status("x" * 500)
    assert len(result) == STATUS_MAX_CHARS
    assert result.endswith("...")
    assert sanitize_status("y" * STATUS_MAX_CHARS) == "y" * STATUS_MAX_CHARS


# --- watchdog_interval_seconds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": "-10000000"}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "garbage"}, None),
    ],
)
def test_watchdog_interval_seconds_table(environ: dict[str, str], expected: float | None) -> None:
    """The interval is half of WATCHDOG_USEC, and None when unset, invalid, 0 or for another pid."""
    assert watchdog_interval_seconds(environ, 4242) == expected


# --- run_watchdog -----------------------------------------------------------------------------


class _StopWatchdog(Exception):
    """Raised by the fake clock to end run_watchdog's endless loop."""


class FakeClock:
    """A minimal autojump clock that records sleeps and ends the loop after ``max_sleeps``."""

    def __init__(self, max_sleeps: int) -> None:
        self.max_sleeps = max_sleeps
        self.sleeps: list[float] = []
        self._elapsed_seconds = 0.0

    def now(self) -> datetime:
        return datetime(2026, 12, 3, 20, 0, tzinfo=UTC) + timedelta(seconds=self._elapsed_seconds)

    def monotonic(self) -> float:
        return self._elapsed_seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._elapsed_seconds += seconds
        if len(self.sleeps) >= self.max_sleeps:
            raise _StopWatchdog


def _scripted_health(
    systemd: FakeSystemd, script: list[bool]
) -> tuple[Callable[[], bool], list[list[str]]]:
    """Return a health check that follows ``script`` and records what arrived before each check."""
    arrived_before_check: list[list[str]] = []
    remaining = list(script)

    def is_healthy() -> bool:
        arrived_before_check.append(systemd.pending())
        return remaining.pop(0)

    return is_healthy, arrived_before_check


async def test_run_watchdog_sends_only_while_healthy(systemd: FakeSystemd) -> None:
    """Each tick sends WATCHDOG=1 when healthy and nothing while unhealthy, then sleeps."""
    script = [True, True, False, False, True]
    is_healthy, arrived = _scripted_health(systemd, script)
    clock = FakeClock(max_sleeps=len(script))

    with pytest.raises(_StopWatchdog):
        await run_watchdog(systemd.notifier(), 2.5, is_healthy, clock)

    # What each tick sent shows up before the next check (or in the final drain).
    sent_per_tick = [*arrived[1:], systemd.pending()]
    assert sent_per_tick == [["WATCHDOG=1"], ["WATCHDOG=1"], [], [], ["WATCHDOG=1"]]
    assert clock.sleeps == [2.5] * len(script)


async def test_run_watchdog_treats_a_failing_health_check_as_unhealthy(
    systemd: FakeSystemd,
) -> None:
    """A health check that raises sends nothing and the loop keeps going."""

    def is_healthy() -> bool:
        raise RuntimeError("scheduler gone")

    clock = FakeClock(max_sleeps=3)
    with pytest.raises(_StopWatchdog):
        await run_watchdog(systemd.notifier(), 1.0, is_healthy, clock)
    assert systemd.pending() == []
    assert clock.sleeps == [1.0, 1.0, 1.0]
