"""Talking to systemd: sd_notify messages (READY, RELOADING, STOPPING, STATUS) and the watchdog.

Everything here is harmless without systemd: with no ``NOTIFY_SOCKET`` the daemon gets a
:class:`NullNotifier` and nothing is ever sent. Sending never raises into the caller, because a
lost notification must not take the daemon down.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import Protocol

import sdnotify

from akeeba_backupd.clock import Clock

logger = logging.getLogger(__name__)

STATUS_MAX_CHARS = 200

# A datagram to systemd is tiny; bound the wait so that a stuck receiver cannot stall the event
# loop for long (libsystemd's sd_notify blocks the same way, without a bound).
_SEND_TIMEOUT_SECONDS = 1.0

_UNPRINTABLE_ASCII = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+")


class Notifier(Protocol):
    """The sd_notify messages the daemon sends over its lifetime."""

    def ready(self, status: str) -> None:
        """Send ``READY=1`` with ``STATUS=<status>``."""
        ...

    def reloading(self) -> None:
        """Send ``RELOADING=1`` with ``MONOTONIC_USEC`` in the same datagram."""
        ...

    def stopping(self) -> None:
        """Send ``STOPPING=1``."""
        ...

    def status(self, text: str) -> None:
        """Send ``STATUS=<text>``."""
        ...

    def watchdog(self) -> None:
        """Send ``WATCHDOG=1``."""
        ...


class NullNotifier:
    """A notifier for life without systemd: every method does nothing."""

    def ready(self, status: str) -> None:
        """Do nothing."""

    def reloading(self) -> None:
        """Do nothing."""

    def stopping(self) -> None:
        """Do nothing."""

    def status(self, text: str) -> None:
        """Do nothing."""

    def watchdog(self) -> None:
        """Do nothing."""


class _AddressedSdNotifier(sdnotify.SystemdNotifier):  # type: ignore[misc]  # sdnotify is untyped
    """sdnotify's notifier connected to an address we choose, not to ``os.environ``'s.

    sdnotify reads ``NOTIFY_SOCKET`` from the process environment in its constructor and swallows
    every error; we pass the address explicitly (the environment is injected) and run it with
    ``debug=True`` so errors reach :class:`SystemdNotifier`, which logs them.
    """

    def __init__(self, address: str) -> None:
        # Deliberately not calling super().__init__: it would read os.environ and connect there.
        self.debug = True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.settimeout(_SEND_TIMEOUT_SECONDS)
            sock.connect(_socket_address(address))
        except OSError:
            sock.close()
            raise
        self.socket = sock

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()


class SystemdNotifier:
    """Send sd_notify messages to the socket at ``address`` through ``sdnotify``.

    ``address`` is a ``NOTIFY_SOCKET`` value: a filesystem path, or ``@name`` for the abstract
    namespace. The socket is connected on first use and reconnected after a failed send (systemd
    may have been re-executed and bound a new socket), so a send failure only loses that message.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._sd: _AddressedSdNotifier | None = None

    def ready(self, status: str) -> None:
        """Send ``READY=1`` and the sanitized ``STATUS=<status>`` in one datagram."""
        self._send(f"READY=1\nSTATUS={sanitize_status(status)}")

    def reloading(self) -> None:
        """Send ``RELOADING=1`` and ``MONOTONIC_USEC=<CLOCK_MONOTONIC µs>`` in one datagram.

        systemd ignores a ``RELOADING=1`` that lacks ``MONOTONIC_USEC`` for ``Type=notify-reload``.
        """
        self._send(f"RELOADING=1\nMONOTONIC_USEC={system_monotonic_microseconds()}")

    def stopping(self) -> None:
        """Send ``STOPPING=1``."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """Send the sanitized ``STATUS=<text>``."""
        self._send(f"STATUS={sanitize_status(text)}")

    def watchdog(self) -> None:
        """Send ``WATCHDOG=1``."""
        self._send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket, if open; a later send opens it again."""
        if self._sd is not None:
            self._sd.close()
            self._sd = None

    def _send(self, message: str) -> None:
        try:
            if self._sd is None:
                self._sd = _AddressedSdNotifier(self.address)
            self._sd.notify(message)
        except Exception:  # sdnotify re-raises anything with debug=True; never let it reach us
            logger.debug("could not notify systemd at %r: %r", self.address, message, exc_info=True)
            self.close()


def _socket_address(notify_socket: str) -> str:
    """Return the AF_UNIX address for a ``NOTIFY_SOCKET`` value ("@name" is abstract)."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def system_monotonic_microseconds() -> int:
    """Return the system's CLOCK_MONOTONIC in microseconds.

    This is deliberately not the injected Clock: systemd compares MONOTONIC_USEC with its own
    CLOCK_MONOTONIC reading, so only the real system clock gives a meaningful value.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notifier_from_environment(environ: Mapping[str, str]) -> Notifier:
    """Return a :class:`SystemdNotifier` if ``NOTIFY_SOCKET`` is set, else a :class:`NullNotifier`.

    ``NOTIFY_SOCKET`` may be a path or an abstract ``@name``; unset or empty means no systemd, and
    then nothing at all is sent.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return NullNotifier()
    return SystemdNotifier(address)


def watchdog_interval_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """Return half of ``WATCHDOG_USEC`` in seconds, the interval at which to send ``WATCHDOG=1``.

    Return None (no watchdog) when ``WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``WATCHDOG_PID`` is set and is not ``pid`` (the watchdog is meant for another process).
    Half the timeout is what ``sd_watchdog_enabled(3)`` recommends.
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not _DIGITS.fullmatch(usec_text):
        return None
    timeout_microseconds = int(usec_text)
    if timeout_microseconds == 0:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text is not None and (not _DIGITS.fullmatch(pid_text) or int(pid_text) != pid):
        return None
    return timeout_microseconds / 2 / 1_000_000


def sanitize_status(text: str) -> str:
    """Return ``text`` as one line of printable ASCII, at most 200 characters.

    Accented letters lose their accents ("réussie" becomes "reussie"), other non-ASCII characters
    become "?", and newlines and control characters become spaces. sdnotify encodes Latin-1, so
    anything else would crash or arrive garbled, and systemctl shows STATUS on one line.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    without_marks = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    ascii_only = "".join(ch if ch.isascii() else "?" for ch in without_marks)
    one_line = _UNPRINTABLE_ASCII.sub(" ", ascii_only).strip()
    if len(one_line) > STATUS_MAX_CHARS:
        return one_line[: STATUS_MAX_CHARS - 3] + "..."
    return one_line


async def run_watchdog(
    notifier: Notifier,
    interval_seconds: float,
    is_healthy: Callable[[], bool],
    clock: Clock,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval_seconds`` while ``is_healthy()`` is True; never return.

    While unhealthy nothing is sent, so systemd's watchdog expires and restarts the daemon. An
    exception from ``is_healthy`` counts as unhealthy. Cancel the task to stop it.
    """
    was_healthy = True
    while True:
        try:
            healthy = is_healthy()
        except Exception:
            logger.exception("watchdog health check failed; treating the daemon as unhealthy")
            healthy = False
        if healthy:
            notifier.watchdog()
            if not was_healthy:
                logger.info("watchdog: healthy again, sending WATCHDOG=1")
        elif was_healthy:
            logger.warning("watchdog: daemon unhealthy, withholding WATCHDOG=1 from systemd")
        was_healthy = healthy
        await clock.sleep(interval_seconds)
