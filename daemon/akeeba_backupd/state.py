"""Persistence in SQLite: schedule tallies, run history, in-flight runs for resume, pauses.

What a restart must not lose (DESIGN.md §5) lives in one file in ``state_dir`` (WAL mode). The
event loop never waits for the disk: writes are queued in memory, coalesced (the latest
checkpoint of a run replaces the one before) and committed in one transaction by a single
writer task that runs SQLite in a worker thread. :meth:`StateStore.flush` commits at once
(shutdown, tests).

A broken store never stops backups: a corrupt file is moved aside and a new one started; a
locked or unwritable one leaves the daemon running in memory, counting every failed write in
``errors_total`` and describing itself in ``problem`` (shown on ``/readyz``), and trying again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.database import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STATE_FILE_NAME,
    Connection,
    Database,
    SqliteDatabase,
    StateError,
)
from akeeba_backupd.run import Checkpoint
from akeeba_backupd.status import (
    HISTORY_PER_SCHEDULE,
    FinishedRun,
    Histogram,
    LiveRun,
    ScheduleStats,
    SkipReason,
)

log = logging.getLogger(__name__)

REOPEN_INTERVAL_SECONDS: Final = 60.0
"""How often an unavailable store is tried again."""

BUSY_TIMEOUT_SECONDS: Final = 5.0
"""How long a write waits for a lock held by another process (sqlite3 rolls back after)."""

ScheduleKey = tuple[str, str]

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_FILE_NAME",
    "LoadedState",
    "SavedCheckpoint",
    "StateError",
    "StateStore",
]


@dataclass(frozen=True, slots=True)
class SavedCheckpoint:
    """An in-flight run as saved, with when it was saved."""

    checkpoint: Checkpoint
    saved_at: datetime


@dataclass(slots=True)
class LoadedState:
    """Everything read back at startup."""

    stats: dict[ScheduleKey, ScheduleStats] = field(default_factory=dict)
    last_fire_at: dict[ScheduleKey, datetime] = field(default_factory=dict)
    fire_timing: dict[ScheduleKey, str] = field(default_factory=dict)
    """The timing each ``last_fire_at`` belongs to (absent in files older than schema 2)."""
    inflight: list[SavedCheckpoint] = field(default_factory=list)
    pauses: set[ScheduleKey] = field(default_factory=set)


# --- (de)serialisation ------------------------------------------------------------------------


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def stats_to_json(stats: ScheduleStats) -> str:
    """Return the tallies of ``stats`` (not the live run, not the history) as JSON."""
    return json.dumps(
        {
            "runs_total": stats.runs_total,
            "failures_total": {str(k): v for k, v in stats.failures_total.items()},
            "skipped_total": {str(k): v for k, v in stats.skipped_total.items()},
            "warnings_total": stats.warnings_total,
            "step_retries_total": stats.step_retries_total,
            "last_status": stats.last_status,
            "last_duration_seconds": stats.last_duration_seconds,
            "last_success_at": _ts(stats.last_success_at),
            "last_success_seeded": stats.last_success_seeded,
            "last_failure_at": _ts(stats.last_failure_at),
            "last_failure_reason": None
            if stats.last_failure_reason is None
            else str(stats.last_failure_reason),
            "last_message": stats.last_message,
            "consecutive_failures": stats.consecutive_failures,
            "archive_size_bytes": stats.archive_size_bytes,
            "durations": {
                "counts": stats.durations.counts,
                "total": stats.durations.total,
                "count": stats.durations.count,
            },
            "last_run": None
            if stats.live is None
            else {
                "run_id": stats.live.run_id,
                "started_at": _ts(stats.live.started_at),
                "step_number": stats.live.step_number,
                "progress_percent": stats.live.progress_percent,
                "domain": stats.live.domain,
                "last_step_at": _ts(stats.live.last_step_at),
                "warnings": stats.live.warnings,
            },
        }
    )


def stats_from_json(site: str, schedule: str, text: str) -> ScheduleStats:
    """Return a ScheduleStats rebuilt from :func:`stats_to_json` output; unknown keys ignored."""
    data: dict[str, Any] = json.loads(text)
    stats = ScheduleStats(site, schedule)
    stats.runs_total = int(data.get("runs_total", 0))
    for key, count in data.get("failures_total", {}).items():
        with contextlib.suppress(ValueError):
            stats.failures_total[FailureReason(key)] = int(count)
    for key, count in data.get("skipped_total", {}).items():
        with contextlib.suppress(ValueError):
            stats.skipped_total[SkipReason(key)] = int(count)
    stats.warnings_total = int(data.get("warnings_total", 0))
    stats.step_retries_total = int(data.get("step_retries_total", 0))
    stats.last_status = data.get("last_status")
    stats.last_duration_seconds = data.get("last_duration_seconds")
    stats.last_success_at = _dt(data.get("last_success_at"))
    stats.last_success_seeded = bool(data.get("last_success_seeded", False))
    stats.last_failure_at = _dt(data.get("last_failure_at"))
    reason = data.get("last_failure_reason")
    with contextlib.suppress(ValueError):
        stats.last_failure_reason = None if reason is None else FailureReason(reason)
    stats.last_message = str(data.get("last_message", ""))
    stats.consecutive_failures = int(data.get("consecutive_failures", 0))
    stats.archive_size_bytes = data.get("archive_size_bytes")
    durations = data.get("durations") or {}
    counts = durations.get("counts")
    if isinstance(counts, list) and len(counts) == len(stats.durations.counts):
        stats.durations = Histogram(
            stats.durations.bounds,
            [int(c) for c in counts],
            float(durations.get("total", 0.0)),
            int(durations.get("count", 0)),
        )
    last = data.get("last_run")
    if isinstance(last, dict) and last.get("started_at") is not None:
        started = _dt(last["started_at"])
        assert started is not None
        stats.live = LiveRun(
            run_id=str(last.get("run_id", "")),
            started_at=started,
            step_number=int(last.get("step_number", 0)),
            progress_percent=int(last.get("progress_percent", 0)),
            domain=str(last.get("domain", "init")),
            last_step_at=_dt(last.get("last_step_at")),
            warnings=int(last.get("warnings", 0)),
        )
    return stats


def checkpoint_to_json(checkpoint: Checkpoint) -> str:
    """Return ``checkpoint`` as JSON."""
    return json.dumps(
        {
            "site": checkpoint.site,
            "schedule": checkpoint.schedule,
            "run_id": checkpoint.run_id,
            "profile_id": checkpoint.profile_id,
            "started_at": checkpoint.started_at.timestamp(),
            "backupid": checkpoint.backupid,
            "backup_record_id": checkpoint.backup_record_id,
            "archive": checkpoint.archive,
            "last_step_number": checkpoint.last_step_number,
            "domain": checkpoint.domain,
            "progress_percent": checkpoint.progress_percent,
            "replies": checkpoint.replies,
            "left_init": checkpoint.left_init,
            "warnings": list(checkpoint.warnings),
        }
    )


def checkpoint_from_json(text: str) -> Checkpoint:
    """Return the Checkpoint of :func:`checkpoint_to_json`; raise ValueError when malformed."""
    try:
        data = json.loads(text)
        return Checkpoint(
            site=str(data["site"]),
            schedule=str(data["schedule"]),
            run_id=str(data["run_id"]),
            profile_id=int(data["profile_id"]),
            started_at=datetime.fromtimestamp(float(data["started_at"]), UTC),
            backupid=data.get("backupid"),
            backup_record_id=data.get("backup_record_id"),
            archive=data.get("archive"),
            last_step_number=data.get("last_step_number"),
            domain=str(data.get("domain", "init")),
            progress_percent=int(data.get("progress_percent", 0)),
            replies=int(data.get("replies", 0)),
            left_init=bool(data.get("left_init", False)),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed checkpoint: {error}") from None


# --- the store --------------------------------------------------------------------------------


# One daemon: the last write wins (a clock set back moves the last fire time back with it).
_UPSERT_STATS_LOCAL: Final = (
    "INSERT INTO schedule_state"
    " (site, schedule, data, last_fire_at, fire_timing, updated_at)"
    " VALUES (?, ?, ?, ?, ?, :now)"
    " ON CONFLICT (site, schedule) DO UPDATE SET"
    " data = excluded.data, updated_at = excluded.updated_at,"
    " fire_timing = CASE WHEN excluded.last_fire_at IS NULL"
    " THEN schedule_state.fire_timing ELSE excluded.fire_timing END,"
    " last_fire_at = coalesce(excluded.last_fire_at, schedule_state.last_fire_at)"
)
# Shared database: a fire time only moves forward under the same timing, so a late write of
# one instance never takes back a fire another one has claimed since. ``:now`` is the
# database's clock.
_UPSERT_STATS: Final = (
    "INSERT INTO schedule_state"
    " (site, schedule, data, last_fire_at, fire_timing, updated_at)"
    " VALUES (?, ?, ?, ?, ?, :now)"
    " ON CONFLICT (site, schedule) DO UPDATE SET"
    " data = excluded.data, updated_at = excluded.updated_at,"
    " fire_timing = CASE WHEN excluded.last_fire_at IS NULL"
    " THEN schedule_state.fire_timing ELSE excluded.fire_timing END,"
    " last_fire_at = CASE"
    " WHEN excluded.last_fire_at IS NULL THEN schedule_state.last_fire_at"
    " WHEN schedule_state.last_fire_at IS NULL"
    " OR schedule_state.fire_timing IS NULL"
    " OR excluded.fire_timing IS NULL"
    " OR schedule_state.fire_timing <> excluded.fire_timing"
    " OR excluded.last_fire_at > schedule_state.last_fire_at"
    " THEN excluded.last_fire_at ELSE schedule_state.last_fire_at END"
)


_UPSERT_CHECKPOINT: Final = (
    "INSERT INTO inflight (site, schedule, run_id, checkpoint, saved_at, owner)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (site, schedule) DO UPDATE SET"
    " run_id = excluded.run_id, checkpoint = excluded.checkpoint,"
    " saved_at = excluded.saved_at, owner = excluded.owner"
)
# Shared database: only the instance holding the schedule's lease writes its checkpoint, so a
# late write of one that lost the run never lands, not even where no row is left.
_UPSERT_OWN_CHECKPOINT: Final = (
    "INSERT INTO inflight (site, schedule, run_id, checkpoint, saved_at, owner)"
    " SELECT ?, ?, ?, ?, ?, owner FROM leases"
    " WHERE site = ? AND schedule = ? AND owner = ?"
    " ON CONFLICT (site, schedule) DO UPDATE SET"
    " run_id = excluded.run_id, checkpoint = excluded.checkpoint,"
    " saved_at = excluded.saved_at, owner = excluded.owner"
)


@dataclass(slots=True)
class _Pending:
    stats: dict[ScheduleKey, tuple[str, float | None, str | None]] = field(default_factory=dict)
    runs: list[FinishedRun] = field(default_factory=list)
    checkpoints: dict[ScheduleKey, tuple[Checkpoint, float] | None] = field(default_factory=dict)
    ended_runs: dict[ScheduleKey, str] = field(default_factory=dict)
    pauses: dict[ScheduleKey, bool] = field(default_factory=dict)
    forget: set[ScheduleKey] = field(default_factory=set)

    def empty(self) -> bool:
        return not (
            self.stats
            or self.runs
            or self.checkpoints
            or self.ended_runs
            or self.pauses
            or self.forget
        )


class StateStore:
    """The state of one daemon: a SQLite file, or a PostgreSQL database shared by several."""

    def __init__(
        self,
        state_dir: Path,
        *,
        database: Database | None = None,
        owner: str | None = None,
        busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS,
        reopen_interval_seconds: float = REOPEN_INTERVAL_SECONDS,
    ) -> None:
        """Keep state in ``database`` (default: the SQLite file in ``state_dir``); nothing is
        read or written before :meth:`open`.

        ``owner`` names this instance among several sharing the database: the checkpoints it
        writes carry it, and one owned by another instance (which took the run over) is never
        overwritten or deleted. ``busy_timeout_seconds`` is how long a write waits for a lock
        another process holds; ``reopen_interval_seconds`` how often an unavailable store is
        tried again.
        """
        self.path = state_dir / STATE_FILE_NAME
        self._db = database or SqliteDatabase(self.path, busy_timeout_seconds=busy_timeout_seconds)
        self.describe = self._db.describe
        self._owner = owner
        self._reopen_interval_seconds = reopen_interval_seconds
        self.errors_total = 0
        self.problem: str | None = None
        """Why the store is not persisting right now (None while it works)."""
        self._connection: Connection | None = None
        self._pending = _Pending()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._last_open_attempt = 0.0
        self._opened_once = False
        self._commit_in_thread: asyncio.Future[None] | None = None
        self._queued_seq = 0
        """Counts queued writes; :attr:`_committed_seq` says how many of them are committed."""
        self._committed_seq = 0
        self._attempt_done = asyncio.Event()

    # --- opening ----------------------------------------------------------------------------

    def open(self) -> LoadedState:
        """Open (creating or migrating) the database and return what it holds.

        Never raises: on failure the store runs in memory and :attr:`problem` says why.
        """
        try:
            self._connection = self._connect()
        except StateError as error:
            self._fail(str(error))
            return LoadedState()
        self._opened_once = True
        try:
            return self._load()
        except self._db.errors as error:
            self._fail(f"cannot read {self.describe}: {error}")
            return LoadedState()

    def _connect(self) -> Connection:
        connection = self._db.connect()
        if isinstance(self._db, SqliteDatabase) and self._db.moved_aside is not None:
            aside, error = self._db.moved_aside
            self._db.moved_aside = None
            log.error(
                "state file %s is corrupt (%s): moved to %s; starting a new one "
                "(run history and last-success times are lost; in-flight runs cannot resume)",
                self.path,
                error,
                aside,
            )
            self.errors_total += 1
        return connection

    def _load(self) -> LoadedState:
        assert self._connection is not None
        loaded = LoadedState()
        db = self._connection

        def rows(sql: str) -> list[Any]:
            return self._db.execute(db, sql).fetchall()

        for site, schedule, data, last_fire_at, fire_timing in rows(
            "SELECT site, schedule, data, last_fire_at, fire_timing FROM schedule_state"
        ):
            try:
                loaded.stats[(site, schedule)] = stats_from_json(site, schedule, data)
            except (ValueError, TypeError, KeyError) as error:
                self._count_error(f"unreadable stats of {site}/{schedule}: {error}")
                continue
            if last_fire_at is not None:
                moment = _dt(last_fire_at)
                assert moment is not None
                loaded.last_fire_at[(site, schedule)] = moment
                if fire_timing is not None:
                    loaded.fire_timing[(site, schedule)] = fire_timing
        for row in rows(
            "SELECT site, schedule, run_id, outcome, reason, message, started_at, finished_at,"
            " duration_seconds, warnings, archive, archive_size_bytes, backup_record_id"
            " FROM runs ORDER BY id"
        ):
            key = (row[0], row[1])
            stats = loaded.stats.setdefault(key, ScheduleStats(*key))
            started, finished = _dt(row[6]), _dt(row[7])
            assert started is not None
            assert finished is not None
            stats.history.appendleft(
                FinishedRun(
                    site=row[0],
                    schedule=row[1],
                    run_id=row[2],
                    outcome=row[3],
                    reason=row[4],
                    message=row[5],
                    started_at=started,
                    finished_at=finished,
                    duration_seconds=row[8],
                    warnings=tuple(json.loads(row[9])),
                    archive=row[10],
                    archive_size_bytes=row[11],
                    backup_record_id=row[12],
                )
            )
        for site, schedule, checkpoint, saved_at in rows(
            "SELECT site, schedule, checkpoint, saved_at FROM inflight"
        ):
            try:
                saved = _dt(saved_at)
                assert saved is not None
                loaded.inflight.append(SavedCheckpoint(checkpoint_from_json(checkpoint), saved))
            except ValueError as error:
                self._count_error(f"unreadable in-flight run of {site}/{schedule}: {error}")
        for site, schedule in rows("SELECT site, schedule FROM pauses"):
            loaded.pauses.add((site, schedule))
        return loaded

    # --- queueing writes ------------------------------------------------------------------

    def save_stats(
        self,
        stats: ScheduleStats,
        last_fire_at: datetime | None,
        fire_timing: str | None = None,
    ) -> None:
        """Queue the tallies of one schedule, and the last fire time it took with the timing
        (cron and time zone) that time belongs to."""
        self._pending.stats[(stats.site, stats.schedule)] = (
            stats_to_json(stats),
            _ts(last_fire_at),
            fire_timing,
        )
        self._queued()

    def add_run(self, run: FinishedRun) -> None:
        """Queue one finished (or skipped) run for the history."""
        self._pending.runs.append(run)
        self._queued()

    def save_checkpoint(self, checkpoint: Checkpoint, saved_at: datetime) -> None:
        """Queue the latest checkpoint of an in-flight run (replacing any queued before)."""
        self._pending.checkpoints[(checkpoint.site, checkpoint.schedule)] = (
            checkpoint,
            saved_at.timestamp(),
        )
        self._queued()

    def drop_checkpoint(self, site: str, schedule: str, run_id: str | None = None) -> None:
        """Queue the removal of a run's checkpoint (it finished); with ``run_id``, the lease
        that run held goes in the same transaction (so no instance can find the lease still
        running once the checkpoint is gone, and take the run for one never started)."""
        self._pending.checkpoints[(site, schedule)] = None
        if run_id is not None:
            self._pending.ended_runs[(site, schedule)] = run_id
        self._queued()

    def set_paused(self, site: str, schedule: str, paused: bool) -> None:
        """Queue a pause or resume."""
        self._pending.pauses[(site, schedule)] = paused
        self._queued()

    def forget_schedules(self, keys: Iterable[ScheduleKey]) -> None:
        """Queue the removal of everything kept about schedules no longer configured."""
        self._pending.forget.update(keys)
        self._queued()

    def _queued(self) -> None:
        self._queued_seq += 1
        self._wakeup.set()

    # --- the writer -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="state writer")

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the file."""
        if self._writer is not None:
            # Holding the lock, no commit is running in a worker thread: cancelling the writer
            # then cannot leave a thread using the connection closed below.
            async with self._write_lock:
                self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        # Last chance for what is queued: try the file again even within the reopen interval.
        await self.flush(retry_now=True)
        if self._commit_in_thread is not None and not self._commit_in_thread.done():
            await asyncio.wait([self._commit_in_thread])
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def flush(self, *, retry_now: bool = False) -> bool:
        """Commit every queued write now; return True when all written before the call are
        committed (False: the store is unavailable, and they wait for the next try).

        While the file is unavailable the writes stay queued (coalesced) for the next try, at
        most once per reopen interval unless ``retry_now``; they are dropped only by a store
        that never had a file open, which has nothing to add them to.
        """
        target = self._queued_seq
        # Group commit: while a commit runs, callers wait for it to end (all woken at once)
        # rather than queueing one by one on the lock; the next commit takes every write
        # queued meanwhile. A caller returns once its writes are committed, or after one
        # attempt of its own failed.
        while self._committed_seq < target and self._write_lock.locked():
            done = self._attempt_done
            await done.wait()
        if self._committed_seq >= target:
            return True
        async with self._write_lock:
            try:
                await self._commit_pending(retry_now=retry_now)
            finally:
                self._attempt_done.set()
                self._attempt_done = asyncio.Event()
        return self._committed_seq >= target

    async def _commit_pending(self, *, retry_now: bool) -> None:
        if self._pending.empty():
            self._committed_seq = self._queued_seq
            return
        if self._connection is None and not self._reopen(retry_now=retry_now):
            if not self._opened_once:
                self._pending = _Pending()
            return
        seq = self._queued_seq
        batch, self._pending = self._pending, _Pending()
        commit = asyncio.ensure_future(asyncio.to_thread(self._commit, batch))
        self._commit_in_thread = commit
        try:
            # Shielded: a cancelled caller must not leave the thread behind unawaited.
            await asyncio.shield(commit)
        except self._db.errors as error:
            self._count_error(f"cannot write {self.describe}: {error}")
            self._merge_back(batch)
            if self._connection is not None:
                with contextlib.suppress(*self._db.errors):
                    self._connection.close()
                self._connection = None
            self._fail(f"cannot write {self.describe}: {error}")
        else:
            if self.problem is not None:
                log.warning("state store %s is writable again", self.describe)
            self.problem = None
            self._committed_seq = max(self._committed_seq, seq)

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()
            if self.problem is not None:
                # Back off while the store is broken; writes keep coalescing in memory.
                await _sleep_real(self._reopen_interval_seconds)

    def _reopen(self, *, retry_now: bool = False) -> bool:
        loop_time = asyncio.get_running_loop().time()
        if not retry_now and loop_time - self._last_open_attempt < self._reopen_interval_seconds:
            return False
        self._last_open_attempt = loop_time
        try:
            self._connection = self._connect()
        except StateError as error:
            self._fail(str(error))
            return False
        self._opened_once = True
        return True

    def _merge_back(self, batch: _Pending) -> None:
        """Put a failed batch back under writes queued since, newest winning."""
        pending = self._pending
        pending.stats = {**batch.stats, **pending.stats}
        pending.runs = [*batch.runs, *pending.runs]
        pending.checkpoints = {**batch.checkpoints, **pending.checkpoints}
        pending.ended_runs = {**batch.ended_runs, **pending.ended_runs}
        pending.pauses = {**batch.pauses, **pending.pauses}
        pending.forget = batch.forget | pending.forget

    def _commit(self, batch: _Pending) -> None:
        connection = self._connection
        assert connection is not None
        database = self._db

        def run(sql: str, parameters: tuple[Any, ...] = ()) -> None:
            database.execute(connection, sql, parameters)

        run(database.begin)
        try:
            for (site, schedule), (data, last_fire_at, fire_timing) in batch.stats.items():
                run(
                    (_UPSERT_STATS_LOCAL if self._owner is None else _UPSERT_STATS).replace(
                        ":now", database.now
                    ),
                    (site, schedule, data, last_fire_at, fire_timing),
                )
            touched: set[ScheduleKey] = set()
            for finished in batch.runs:
                run(
                    "INSERT INTO runs (site, schedule, run_id, outcome, reason, message,"
                    " started_at, finished_at, duration_seconds, warnings, archive,"
                    " archive_size_bytes, backup_record_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        finished.site,
                        finished.schedule,
                        finished.run_id,
                        finished.outcome,
                        finished.reason,
                        finished.message,
                        finished.started_at.timestamp(),
                        finished.finished_at.timestamp(),
                        finished.duration_seconds,
                        json.dumps(list(finished.warnings)),
                        finished.archive,
                        finished.archive_size_bytes,
                        finished.backup_record_id,
                    ),
                )
                touched.add((finished.site, finished.schedule))
            for site, schedule in touched:
                run(
                    "DELETE FROM runs WHERE site = ? AND schedule = ? AND id NOT IN"
                    " (SELECT id FROM runs WHERE site = ? AND schedule = ?"
                    " ORDER BY id DESC LIMIT ?)",
                    (site, schedule, site, schedule, HISTORY_PER_SCHEDULE),
                )
            # Checkpoints of a run another instance has taken over are its own from then on.
            for (site, schedule), saved in batch.checkpoints.items():
                if saved is None:
                    run(
                        "DELETE FROM inflight WHERE site = ? AND schedule = ?"
                        " AND (owner IS NULL OR owner = ?)",
                        (site, schedule, self._owner),
                    )
                else:
                    checkpoint, saved_at = saved
                    values = (
                        site,
                        schedule,
                        checkpoint.run_id,
                        checkpoint_to_json(checkpoint),
                        saved_at,
                        self._owner,
                    )
                    if self._owner is None:
                        run(_UPSERT_CHECKPOINT, values)
                    else:
                        run(_UPSERT_OWN_CHECKPOINT, (*values[:5], site, schedule, self._owner))
            for (site, schedule), run_id in batch.ended_runs.items():
                run(
                    "DELETE FROM leases WHERE site = ? AND schedule = ? AND run_id = ?",
                    (site, schedule, run_id),
                )
            for (site, schedule), paused in batch.pauses.items():
                if paused:
                    run(
                        "INSERT INTO pauses (site, schedule) VALUES (?, ?)"
                        " ON CONFLICT (site, schedule) DO NOTHING",
                        (site, schedule),
                    )
                else:
                    run("DELETE FROM pauses WHERE site = ? AND schedule = ?", (site, schedule))
            for site, schedule in batch.forget:
                for table in ("schedule_state", "runs", "inflight", "pauses"):
                    run(
                        f"DELETE FROM {table} WHERE site = ? AND schedule = ?",  # noqa: S608 - fixed names
                        (site, schedule),
                    )
            run("COMMIT")
        except BaseException:
            with contextlib.suppress(*database.errors):
                run("ROLLBACK")
            raise

    # --- trouble --------------------------------------------------------------------------

    def _fail(self, problem: str) -> None:
        if self.problem != problem:
            log.error(
                "STATE STORE UNAVAILABLE: %s; backups go on, but history, last-success times "
                "and in-flight runs are kept in memory only until it works again",
                problem,
            )
        self.problem = problem
        self.errors_total += 1

    def _count_error(self, message: str) -> None:
        log.error("state store: %s", message)
        self.errors_total += 1


async def _sleep_real(seconds: float) -> None:
    """Sleep in real time: the retry interval of a broken disk is not the scheduler's time."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    handle = loop.call_later(seconds, future.set_result, None)
    try:
        await future
    finally:
        handle.cancel()
