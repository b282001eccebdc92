"""Logging setup: plain UTC-stamped lines on stderr, or syslog-prioritised lines under journald.

Under systemd, stderr goes to the journal, which adds its own timestamps and reads a leading
``<N>`` on each line as the syslog priority; elsewhere (a terminal, Docker) each line carries a UTC
ISO timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_PACKAGE_PREFIX = "akeeba_backupd."

_LEVELS_BY_NAME = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Loggers that are too chatty for normal operation; shown only at debug level.
_QUIET_UNLESS_DEBUG = ("aiohttp.access",)


class _DaemonHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """The handler configure_logging installs, so a second call can find and replace it."""


def _short_name(name: str) -> str:
    """Return a logger name without the package prefix ("akeeba_backupd.run" -> "run")."""
    return name.removeprefix(_PACKAGE_PREFIX)


class _TerminalFormatter(logging.Formatter):
    """Format "2026-12-03T20:15:02Z INFO  run: message", timestamps in UTC."""

    def __init__(self) -> None:
        super().__init__(fmt="%(asctime)s %(levelname)-5s %(short_name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Return the record's time as "2026-12-03T20:15:02Z"."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))

    def format(self, record: logging.LogRecord) -> str:
        """Return the formatted record; tracebacks follow on their own lines."""
        record.short_name = _short_name(record.name)
        return super().format(record)


def syslog_priority(levelno: int) -> int:
    """Return the syslog priority journald understands for a Python log level number."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _JournaldFormatter(logging.Formatter):
    """Format "<6>run: message"; every line of a multi-line record gets the same "<N>" prefix.

    journald splits the stream at newlines and reads the priority of each line separately, so
    without the prefix a traceback's lines would land at the default priority.
    """

    def __init__(self) -> None:
        super().__init__(fmt="%(short_name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the formatted record with the syslog priority before each line."""
        record.short_name = _short_name(record.name)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def parse_level(level: str) -> int:
    """Return the logging level number for a name like "info" or "DEBUG" (any case).

    Raise ValueError naming the accepted levels when ``level`` is not one of them.
    """
    try:
        return _LEVELS_BY_NAME[level.strip().lower()]
    except KeyError:
        accepted = ", ".join(_LEVELS_BY_NAME)
        raise ValueError(f"unknown log level {level!r}; expected one of: {accepted}") from None


def under_journald(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Return True when ``stream`` is connected to journald.

    That is when ``JOURNAL_STREAM`` is "<st_dev>:<st_ino>" of the stream's file descriptor, the
    check systemd.exec(5) documents (a child whose stderr was redirected inherits the variable but
    not the stream). Return False for streams without a file descriptor.
    """
    journal_stream = environ.get("JOURNAL_STREAM", "")
    device_text, separator, inode_text = journal_stream.partition(":")
    if not separator or not device_text.isdigit() or not inode_text.isdigit():
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both; a closed file is ValueError
        return False
    return (stat.st_dev, stat.st_ino) == (int(device_text), int(inode_text))


def configure_logging(
    level: str, *, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Send log records at ``level`` and above to ``stream`` (default stderr), formatted for it.

    Use the journald format when :func:`under_journald` says so (``environ`` defaults to
    ``os.environ``), else the timestamped one. ``aiohttp.access`` is quietened to WARNING unless
    ``level`` is debug. Calling this again replaces the handler installed before, so handlers are
    never duplicated. Raise ValueError for an unknown level name, before changing anything.
    """
    level_number = parse_level(level)
    target = sys.stderr if stream is None else stream
    environment = os.environ if environ is None else environ

    handler = _DaemonHandler(target)
    if under_journald(environment, target):
        handler.setFormatter(_JournaldFormatter())
    else:
        handler.setFormatter(_TerminalFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DaemonHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_number)

    quiet_level = logging.NOTSET if level_number <= logging.DEBUG else logging.WARNING
    for name in _QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(quiet_level)
