"""The SQLite state store: what it keeps survives a reopen, and a broken file never raises."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from akeeba_backupd.run import Checkpoint
from akeeba_backupd.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STATE_FILE_NAME,
    StateStore,
    stats_to_json,
)
from akeeba_backupd.status import ScheduleStats


async def test_pauses_survive_a_reopen(tmp_path: Path) -> None:
    """A pause and a resume are committed and read back by the next process's store."""
    store = StateStore(tmp_path)
    assert store.open().pauses == set()
    store.start()
    store.set_paused("shop", "nightly", True)
    store.set_paused("shop", "weekly", True)
    store.set_paused("shop", "weekly", False)
    await store.close()

    again = StateStore(tmp_path)
    assert again.open().pauses == {("shop", "nightly")}
    await again.close()
    assert again.problem is None


async def test_a_corrupt_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in state.db is moved to state.db.corrupt-<time>, logged, counted, and a new
    store starts and works."""
    (tmp_path / STATE_FILE_NAME).write_bytes(b"this is not a database" * 100)
    store = StateStore(tmp_path)
    with caplog.at_level(logging.ERROR):
        loaded = store.open()
    assert loaded.pauses == set()
    assert store.errors_total == 1
    assert store.problem is None
    aside = list(tmp_path.glob(f"{STATE_FILE_NAME}.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")
    assert any("is corrupt" in record.getMessage() for record in caplog.records)
    store.start()
    store.set_paused("shop", "nightly", True)
    await store.close()
    assert StateStore(tmp_path).open().pauses == {("shop", "nightly")}


async def test_an_unusable_directory_leaves_the_store_in_memory(tmp_path: Path) -> None:
    """A state_dir that is a file: open() does not raise, the problem names the path, and
    queued writes are dropped without an exception."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    store = StateStore(blocker)
    assert store.open().pauses == set()
    assert store.problem is not None
    assert str(blocker) in store.problem
    store.set_paused("shop", "nightly", True)
    await store.flush()
    await store.close()


async def test_a_locked_file_keeps_writes_in_memory_until_it_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holding the write lock: the commit fails after the busy timeout, is
    logged, counted and named in ``problem``; writes queued meanwhile, and flushes within the
    reopen interval, keep them in memory; once the lock is gone they reach the file."""
    store = StateStore(tmp_path, busy_timeout_seconds=0.1)
    store.open()
    other = sqlite3.connect(tmp_path / STATE_FILE_NAME, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        store.set_paused("shop", "nightly", True)
        with caplog.at_level(logging.ERROR):
            await store.flush()
        assert store.problem is not None
        assert "locked" in store.problem
        assert store.errors_total >= 1
        assert any("STATE STORE UNAVAILABLE" in r.getMessage() for r in caplog.records)
        store.set_paused("shop", "weekly", True)
        await store.flush()  # within the reopen interval: not tried, and nothing dropped
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.close()
    assert _problem(store) is None
    assert StateStore(tmp_path).open().pauses == {("shop", "nightly"), ("shop", "weekly")}


async def test_writes_are_committed_by_the_next_try_after_the_interval(tmp_path: Path) -> None:
    """With no reopen interval, the next flush after the lock is gone commits at once."""
    store = StateStore(tmp_path, busy_timeout_seconds=0.1, reopen_interval_seconds=0.0)
    store.open()
    other = sqlite3.connect(tmp_path / STATE_FILE_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store.set_paused("shop", "nightly", True)
    await store.flush()
    assert store.problem is not None
    other.execute("ROLLBACK")
    other.close()
    await store.flush()
    assert _problem(store) is None
    assert StateStore(tmp_path).open().pauses == {("shop", "nightly")}
    await store.close()


def _problem(store: StateStore) -> str | None:
    # A call, so that mypy does not carry the narrowing from before the await across it.
    return store.problem


async def test_a_schema_1_file_is_migrated_and_keeps_its_fire_times(tmp_path: Path) -> None:
    """A file of the first release (no fire_timing column) opens, migrates to the current
    schema, and keeps its last fire time, with no timing (taken as matching)."""
    with sqlite3.connect(tmp_path / STATE_FILE_NAME) as db:
        db.executescript(f"{MIGRATIONS[0]}\nPRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO schedule_state (site, schedule, data, last_fire_at) VALUES (?, ?, ?, ?)",
            ("shop", "nightly", stats_to_json(ScheduleStats("shop", "nightly")), 1_800_000_000.0),
        )
    store = StateStore(tmp_path)
    loaded = store.open()
    assert store.problem is None
    assert loaded.last_fire_at[("shop", "nightly")].timestamp() == 1_800_000_000.0
    assert loaded.fire_timing == {}
    with sqlite3.connect(tmp_path / STATE_FILE_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

    store.start()
    fired = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
    store.save_stats(ScheduleStats("shop", "nightly"), fired, "0 2 * * * UTC")
    await store.flush()
    store.save_stats(ScheduleStats("shop", "nightly"), None, None)  # tallies only: keeps both
    await store.close()
    again = StateStore(tmp_path).open()
    assert again.last_fire_at[("shop", "nightly")] == fired
    assert again.fire_timing[("shop", "nightly")] == "0 2 * * * UTC"


async def test_concurrent_flushes_share_commits_and_each_returns_committed(
    tmp_path: Path,
) -> None:
    """A burst of runs each committing its first checkpoint before startBackup (1,000 fires in
    one minute) shares a few commits instead of queueing one by one; and no caller returns
    before its own write is in the file."""
    store = StateStore(tmp_path)
    store.open()
    commits = 0
    commit = store._commit

    def counting(batch: Any) -> None:
        nonlocal commits
        commits += 1
        commit(batch)

    store._commit = counting  # type: ignore[method-assign]
    started = datetime(2027, 1, 1, tzinfo=UTC)

    async def start(number: int) -> None:
        site = f"site-{number:03d}"
        store.save_checkpoint(
            Checkpoint(site, "nightly", f"run-{number}", 1, started, None), started
        )
        await store.flush()
        with sqlite3.connect(tmp_path / STATE_FILE_NAME) as db:
            found = db.execute("SELECT count(*) FROM inflight WHERE site = ?", (site,)).fetchone()
        assert found == (1,), f"{site} returned before its checkpoint was committed"

    await asyncio.gather(*(start(number) for number in range(200)))
    assert commits <= 5
    await store.close()
    assert len(StateStore(tmp_path).open().inflight) == 200
