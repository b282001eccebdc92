"""Log formats with and without journald, syslog priorities, level parsing and reconfiguration."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import pytest

from akeeba_backupd.logsetup import configure_logging, parse_level, under_journald

RUN_LOGGER = "akeeba_backupd.run"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger and aiohttp.access back as they were after each test."""
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    handlers, root_level, access_level = list(root.handlers), root.level, access.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(root_level)
        access.setLevel(access_level)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    """A real file standing in for stderr."""
    with (tmp_path / "stderr.log").open("w", encoding="utf-8") as stream:
        yield stream


def journal_stream_of(stream: TextIO) -> str:
    """Return the JOURNAL_STREAM value systemd would set for ``stream``."""
    stat = os.fstat(stream.fileno())
    return f"{stat.st_dev}:{stat.st_ino}"


def written(stream: TextIO) -> str:
    """Return everything written to the file behind ``stream`` so far."""
    stream.flush()
    return Path(stream.name).read_text(encoding="utf-8")


def log_at(logger_name: str, level: int, message: str, created: float | None = None) -> None:
    """Log ``message`` through the real logger, optionally with a fixed creation time."""
    logger = logging.getLogger(logger_name)
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger_name, level, __file__, 1, message, (), None)
    if created is not None:
        record.created = created
    logger.handle(record)


@pytest.fixture
def new_york_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make local time differ from UTC, so a local-time formatter would be caught."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("new_york_local_time")
def test_terminal_format_has_utc_iso_timestamp_level_and_short_name(log_file: TextIO) -> None:
    """Outside journald a line reads "2026-12-03T20:15:02Z INFO  run: message", in UTC."""
    configure_logging("info", stream=log_file, environ={})
    created = datetime(2026, 12, 3, 20, 15, 2, 250_000, tzinfo=UTC).timestamp()
    log_at(RUN_LOGGER, logging.INFO, "message", created=created)
    log_at(RUN_LOGGER, logging.WARNING, "careful", created=created)
    assert written(log_file) == (
        "2026-12-03T20:15:02Z INFO  run: message\n2026-12-03T20:15:02Z WARNING run: careful\n"
    )


def test_journald_format_has_priority_and_no_timestamp(log_file: TextIO) -> None:
    """Under journald a line reads "<6>run: message", with no timestamp."""
    configure_logging(
        "info", stream=log_file, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}
    )
    log_at(RUN_LOGGER, logging.INFO, "message")
    assert written(log_file) == "<6>run: message\n"


def test_journal_stream_of_another_file_means_terminal_format(
    log_file: TextIO, tmp_path: Path
) -> None:
    """A JOURNAL_STREAM naming a different file (inherited, stderr redirected) is ignored."""
    with (tmp_path / "other.log").open("w") as other:
        environ = {"JOURNAL_STREAM": journal_stream_of(other)}
    configure_logging("info", stream=log_file, environ=environ)
    log_at(RUN_LOGGER, logging.INFO, "message")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO  run: message\n", written(log_file))


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
    ],
)
def test_journald_priorities(log_file: TextIO, level: int, priority: int) -> None:
    """Each Python level maps to the syslog priority journald reads from the "<N>" prefix."""
    configure_logging(
        "debug", stream=log_file, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}
    )
    log_at(RUN_LOGGER, level, "message")
    assert written(log_file) == f"<{priority}>run: message\n"


def test_journald_prefixes_every_line_of_a_traceback(log_file: TextIO) -> None:
    """An exception's traceback keeps its lines, each with the record's priority prefix."""
    configure_logging(
        "info", stream=log_file, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger(RUN_LOGGER).exception("run failed\nsecond line")
    lines = written(log_file).splitlines()
    assert lines[0] == "<3>run: run failed"
    assert lines[1] == "<3>second line"
    assert lines[2] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in lines)


def test_terminal_format_keeps_traceback_on_following_lines(log_file: TextIO) -> None:
    """Outside journald the traceback follows the stamped line unchanged."""
    configure_logging("info", stream=log_file, environ={})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger(RUN_LOGGER).exception("run failed")
    lines = written(log_file).splitlines()
    assert lines[0].endswith("Z ERROR run: run failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_other_libraries_keep_their_full_logger_name(log_file: TextIO) -> None:
    """Only the akeeba_backupd prefix is dropped; other loggers keep their names."""
    configure_logging(
        "info", stream=log_file, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}
    )
    log_at("aiohttp.server", logging.ERROR, "oops")
    log_at("akeeba_backupd", logging.INFO, "package itself")
    assert written(log_file) == "<3>aiohttp.server: oops\n<6>akeeba_backupd: package itself\n"


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream argument, log lines go to stderr and nothing to stdout."""
    configure_logging("info", environ={})
    log_at(RUN_LOGGER, logging.INFO, "to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("INFO  run: to stderr\n")


# --- levels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("debug", logging.DEBUG),
        ("DEBUG", logging.DEBUG),
        ("info", logging.INFO),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        ("CRITICAL", logging.CRITICAL),
    ],
)
def test_parse_level_accepts_names_in_any_case(name: str, expected: int) -> None:
    """Level names are accepted whatever their case."""
    assert parse_level(name) == expected


@pytest.mark.parametrize("name", ["verbose", "", "notset", "10", "warn"])
def test_unknown_level_raises_a_clear_value_error(name: str) -> None:
    """An unknown level name raises ValueError naming the value and the accepted ones."""
    with pytest.raises(ValueError, match="unknown log level") as excinfo:
        configure_logging(name, stream=io.StringIO(), environ={})
    assert repr(name) in str(excinfo.value)
    assert "debug, info, warning, error, critical" in str(excinfo.value)


def test_unknown_level_leaves_existing_configuration_alone(log_file: TextIO) -> None:
    """A rejected level does not remove the handler configured before."""
    configure_logging("info", stream=log_file, environ={})
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud", stream=io.StringIO(), environ={})
    log_at(RUN_LOGGER, logging.INFO, "still here")
    assert written(log_file).endswith("INFO  run: still here\n")


def test_records_below_the_level_are_dropped(log_file: TextIO) -> None:
    """At level "warning", info and debug records are not written."""
    configure_logging(
        "WARNING", stream=log_file, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}
    )
    logger = logging.getLogger(RUN_LOGGER)
    logger.debug("no")
    logger.info("no")
    logger.warning("yes")
    assert written(log_file) == "<4>run: yes\n"


def test_aiohttp_access_is_quiet_unless_debug(log_file: TextIO) -> None:
    """aiohttp.access info lines are hidden at info level and shown at debug level."""
    environ = {"JOURNAL_STREAM": journal_stream_of(log_file)}
    access = logging.getLogger("aiohttp.access")
    configure_logging("info", stream=log_file, environ=environ)
    access.info("GET /metrics 200")
    access.warning("slow client")
    configure_logging("debug", stream=log_file, environ=environ)
    access.info("GET /healthz 200")
    assert written(log_file) == (
        "<4>aiohttp.access: slow client\n<6>aiohttp.access: GET /healthz 200\n"
    )


def test_configuring_twice_does_not_duplicate_lines(log_file: TextIO, tmp_path: Path) -> None:
    """A second call replaces the first handler: each record is written once, to the new stream."""
    configure_logging("info", stream=log_file, environ={})
    with (tmp_path / "second.log").open("w", encoding="utf-8") as second:
        configure_logging("info", stream=second, environ={})
        configure_logging("info", stream=second, environ={})
        log_at(RUN_LOGGER, logging.INFO, "once")
        assert written(log_file) == ""
        assert len(written(second).splitlines()) == 1


# --- under_journald ---------------------------------------------------------------------------


def test_under_journald_matches_device_and_inode(log_file: TextIO, tmp_path: Path) -> None:
    """JOURNAL_STREAM must equal the stream's own "<st_dev>:<st_ino>"."""
    stat = os.fstat(log_file.fileno())
    assert under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}, log_file)
    assert not under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"}, log_file)
    assert not under_journald({"JOURNAL_STREAM": f"{stat.st_dev + 1}:{stat.st_ino}"}, log_file)


@pytest.mark.parametrize("value", [None, "", "garbage", "1:", ":2", "a:b", "1:2:3"])
def test_under_journald_rejects_missing_or_malformed_values(
    log_file: TextIO, value: str | None
) -> None:
    """An unset or malformed JOURNAL_STREAM means not under journald."""
    environ = {} if value is None else {"JOURNAL_STREAM": value}
    assert not under_journald(environ, log_file)


def test_under_journald_is_false_for_streams_without_a_file_descriptor() -> None:
    """An in-memory stream is never the journal."""
    assert not under_journald({"JOURNAL_STREAM": "1:2"}, io.StringIO())
