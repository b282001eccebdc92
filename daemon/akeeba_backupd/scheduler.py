"""When schedules fire and which due run may start (DESIGN.md §3).

One task owns one heap of due times (not a task per schedule, so 10,000 schedules cost nothing
while idle). At each due time the schedule's fire is *taken*: it is queued, or skipped
(``overlap`` while it runs or waits, ``misfire`` for a fire time missed beyond policy). Queued
fires start in due-time order as soon as their site is free (never two runs of one site at once:
a second ``startBackup`` kills the first on the server) and the global and group caps allow.

The scheduler knows nothing of HTTP: a :class:`RunFactory` turns (site, schedule, run id) into a
:class:`Run`. Time comes from the injected clock; schedule maths from :mod:`akeeba_backupd.cron`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import random
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.clock import Clock
from akeeba_backupd.config import Config, MisfirePolicy, ScheduleConfig, SiteConfig
from akeeba_backupd.cron import expected_interval_seconds, next_fire_time, previous_fire_time
from akeeba_backupd.database import StateError
from akeeba_backupd.fleet import (
    REFRESH_INTERVAL_SECONDS,
    Claim,
    FireClaim,
    FleetChanges,
    PostgresCoordinator,
    RunSlotRequest,
    Takeover,
)
from akeeba_backupd.run import (
    RunEvent,
    RunFinished,
    RunObserver,
    RunOutcome,
    RunResult,
)
from akeeba_backupd.state import LoadedState, SavedCheckpoint
from akeeba_backupd.status import FinishedRun, LiveRun, ScheduleStats, SkipReason

log = logging.getLogger(__name__)

ScheduleKey = tuple[str, str]
"""(site name, schedule name)."""

MISFIRE_TOLERANCE_SECONDS = 60.0
"""A fire taken later than this after its due time counts as missed (asleep, down, clock jump)."""
MAX_IDLE_WAIT_SECONDS = 60.0
"""The loop looks at the wall clock at least this often, so a wall-clock jump is noticed."""
TAKEOVERS_PER_ROUND = 200
"""Expired leases one instance takes over per round (the rest wait for the next)."""
FLEET_TICK_SECONDS = 1.0
"""How often an instance looks for expired leases to take over (fleet mode)."""


class ScheduleState(StrEnum):
    """Where a schedule is in its cycle."""

    IDLE = "idle"
    """Waiting for its next fire time."""
    QUEUED = "queued"
    """Due, waiting for its site to be free or for a slot under the limits."""
    RUNNING = "running"
    """A run is in progress."""


class Run(Protocol):
    """One backup run as the scheduler drives it (``BackupRun`` implements it)."""

    async def execute(self) -> RunResult:
        """Run to the single outcome."""
        ...

    def request_suspend(self) -> None:
        """Stop after the current step, resumable (shutdown)."""
        ...

    def request_cancel(self) -> None:
        """Stop after the current step and fail the run (operator)."""
        ...


class RunFactory(Protocol):
    """Makes the run for a taken fire."""

    def create_run(
        self,
        site: SiteConfig,
        schedule: ScheduleConfig,
        run_id: str,
        observer: RunObserver,
        resume: SavedCheckpoint | None,
    ) -> Run:
        """Return a run not yet started (or continuing ``resume``); events go to ``observer``."""
        ...


class SchedulerListener(Protocol):
    """Told what the state store must keep about schedules (the service persists it)."""

    def fire_taken(self, entry: ScheduleEntry) -> None:
        """``entry.last_fire_at`` moved on."""
        ...

    def fire_skipped(self, entry: ScheduleEntry, skipped: FinishedRun) -> None:
        """A fire started no run (``overlap`` or ``misfire``)."""
        ...

    def resume_dropped(self, saved: SavedCheckpoint) -> None:
        """An in-flight run of a schedule no longer configured will not be resumed."""
        ...

    def fleet_config_changed(self, generation: int, fingerprint: str | None) -> None:
        """Another instance published a new configuration (fleet mode only)."""
        ...


class SchedulerError(Exception):
    """A request the scheduler refuses; ``status`` is the HTTP status that fits it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class ScheduleEntry:
    """One schedule as the scheduler tracks it; read by metrics, the API and STATUS."""

    site: SiteConfig
    schedule: ScheduleConfig
    stats: ScheduleStats
    state: ScheduleState = ScheduleState.IDLE
    paused: bool = False
    next_fire_at: datetime | None = None
    """The next cron fire time (UTC)."""
    next_due_at: datetime | None = None
    """When that fire is taken: the fire time plus jitter."""
    queued_fire_at: datetime | None = None
    """The fire time a queued run stands for (its place in the queue)."""
    expected_interval_seconds: float = 0.0
    removed: bool = False
    """Dropped by a reload while running: it vanishes when the run ends."""
    run: Run | None = None
    run_group: str | None = None
    generation: int = 0
    last_fire_at: datetime | None = None
    """The latest fire time taken (run or skipped); None for a schedule never seen firing."""
    resume: SavedCheckpoint | None = None
    """The in-flight run a queued entry continues instead of starting a new one."""
    remote_owner: str | None = None
    """The instance running this schedule's backup, when another one does (fleet mode)."""
    run_id: str | None = None
    """The id the queued run will have (fleet mode: its lease carries it)."""
    run_now: bool = False
    """The queued run was asked for (run-now), so it has no lease yet (fleet mode)."""

    @property
    def key(self) -> ScheduleKey:
        """Return (site, schedule)."""
        return (self.site.name, self.schedule.name)


@dataclass(frozen=True, slots=True)
class StopSummary:
    """What shutdown did with the runs in progress."""

    suspended: int
    """Runs that ended within the grace period (suspended, or done with their last step)."""
    cancelled: int
    """Runs cancelled mid-call when the grace period ran out or a second signal forced it."""


@dataclass(order=True, slots=True)
class _Due:
    at: datetime
    seq: int
    key: ScheduleKey = field(compare=False)
    generation: int = field(compare=False)


class _Act(StrEnum):
    RECORD = "record"
    """Paused: the fire is only recorded."""
    RUN = "run"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class _Decision:
    act: _Act
    reason: SkipReason | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class _PendingClaim:
    entry: ScheduleEntry
    fire_at: datetime
    due_at: datetime
    decision: _Decision


def fire_timing(schedule: ScheduleConfig) -> str:
    """Return what a schedule's fire times depend on (resolved cron, time zone), as saved
    beside its last fire time to tell whether that time still belongs to the schedule."""
    return f"{schedule.cron.resolved} {schedule.settings.timezone.key}"


def make_run_id(fire_at: datetime, token: str | None = None) -> str:
    """Return a unique, sortable, human-readable run id such as ``20261204T021700-1a2b3c4d``."""
    return f"{fire_at:%Y%m%dT%H%M%S}-{token or secrets.token_hex(4)}"


class Scheduler:
    """Fires schedules, queues their runs and starts them under the limits."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        factory: RunFactory,
        *,
        observer: RunObserver | None = None,
        listener: SchedulerListener | None = None,
        restored: LoadedState | None = None,
        rng: random.Random | None = None,
        max_idle_wait_seconds: float = MAX_IDLE_WAIT_SECONDS,
        coordinator: PostgresCoordinator | None = None,
    ) -> None:
        """Track every schedule of ``config``; nothing fires before :meth:`start`.

        ``restored`` is what the state store kept: tallies and history, the last fire time of
        each schedule (fires missed since then are handled by the misfire policy at start),
        pauses, and in-flight runs (resumed first, at start). ``max_idle_wait_seconds`` bounds
        how long the loop trusts a sleep before it looks at the wall clock again (to notice
        clock jumps); tests simulating weeks raise it.

        With a ``coordinator`` (several instances sharing PostgreSQL), a fire is taken only
        after it is claimed in the database, a run starts only when the fleet-wide limits give
        it a slot, leases are renewed and expired ones of other instances taken over; restored
        in-flight runs are left to those takeovers.
        """
        self._clock = clock
        self._listener = listener
        self._restored = restored or LoadedState()
        self._max_idle_wait_seconds = max_idle_wait_seconds
        self._factory = factory
        self._observer = observer
        self._rng = rng or random.Random()
        self._entries: dict[ScheduleKey, ScheduleEntry] = {}
        self._heap: list[_Due] = []
        self._seq = 0
        self._queue: list[tuple[datetime, ScheduleKey]] = []
        self._busy_sites: set[str] = set()
        self._group_running: dict[str, int] = {}
        self._tasks: dict[ScheduleKey, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._max_concurrent = config.limits.max_concurrent
        self._group_caps = dict(config.limits.groups)
        self._interval_day: datetime | None = None
        self._coordinator = coordinator
        self._claims: list[_PendingClaim] = []
        self._fleet_task: asyncio.Task[None] | None = None
        self._config_generation_seen: int | None = None
        self._fleet_pauses_seen: set[ScheduleKey] | None = (
            None if coordinator is None else set(self._restored.pauses)
        )
        now = clock.now()
        for site in config.sites:
            for schedule in site.schedules:
                entry = self._add(site, schedule, now)
                kept = self._restored.stats.get(entry.key)
                if kept is not None:
                    entry.stats = kept
                kept_timing = self._restored.fire_timing.get(entry.key)
                if kept_timing in (None, fire_timing(schedule)):
                    # Measured against other timing (changed while down), the saved fire time
                    # would make the new cron "miss" fires it never had: start afresh instead.
                    entry.last_fire_at = self._restored.last_fire_at.get(entry.key)
                entry.paused = entry.key in self._restored.pauses

    # --- reading -------------------------------------------------------------------------

    def entries(self) -> Iterator[ScheduleEntry]:
        """Return every schedule tracked, including removed ones still running."""
        return iter(self._entries.values())

    def entry(self, site: str, schedule: str) -> ScheduleEntry | None:
        """Return one schedule, or None."""
        return self._entries.get((site, schedule))

    @property
    def running_count(self) -> int:
        """Return how many runs are in progress."""
        return len(self._tasks)

    @property
    def queued_count(self) -> int:
        """Return how many fires wait for a slot."""
        return len(self._queue)

    @property
    def started(self) -> bool:
        """Return True once :meth:`start` ran and until :meth:`stop`."""
        return self._loop_task is not None and not self._stopping

    def healthy(self) -> bool:
        """Return True while the scheduling loop is alive (the watchdog's question)."""
        task = self._loop_task
        return task is not None and not task.done() and not self._stopping

    def next_entry(self) -> ScheduleEntry | None:
        """Return the schedule that is due next (not paused), or None."""
        candidates = [
            entry
            for entry in self._entries.values()
            if entry.next_due_at is not None and not entry.paused and not entry.removed
        ]
        return min(candidates, key=lambda entry: entry.next_due_at or entry.site.name, default=None)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Queue restored in-flight runs and missed fires, then start the scheduling loop."""
        if self._loop_task is not None:
            return
        now = self._clock.now()
        if self._coordinator is None:
            for saved in self._restored.inflight:
                self._queue_resume(saved)
        for entry in list(self._entries.values()):
            self._catch_up(entry, now)
        self._restored = LoadedState()
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")
        if self._coordinator is not None:
            self._fleet_task = asyncio.create_task(self._fleet_loop(), name="fleet leases")

    def _queue_resume(self, saved: SavedCheckpoint) -> None:
        checkpoint = saved.checkpoint
        entry = self._entries.get((checkpoint.site, checkpoint.schedule))
        if entry is None:
            log.warning(
                "%s/%s: in-flight run %s not resumed: the schedule is no longer configured",
                checkpoint.site,
                checkpoint.schedule,
                checkpoint.run_id,
            )
            if self._listener is not None:
                self._listener.resume_dropped(saved)
            return
        entry.resume = saved
        # Resumes go first: their fire time is long past, and the server is holding the run.
        self._enqueue(entry, checkpoint.started_at)

    def _catch_up(self, entry: ScheduleEntry, now: datetime) -> None:
        """Apply the misfire policy to fires missed while the daemon was down."""
        last = entry.last_fire_at
        if last is None:
            # First seen now: fires before this moment are not ours to catch up, but one
            # missed while we are down from here on is, so the baseline goes to disk now.
            self._mark_tracked(entry, now)
            return
        settings = entry.schedule.settings
        latest = previous_fire_time(entry.schedule.cron, now, settings.timezone)
        if latest is None or latest <= last:
            return
        decision = self._catch_up_decision(entry, latest, now)
        if self._coordinator is not None:
            self._add_claim(_PendingClaim(entry, latest, latest, decision))
            return
        self._note_fire(entry, latest)
        self._act(entry, latest, decision, now)

    def _add_claim(self, claim: _PendingClaim) -> None:
        # One claim per schedule: fires piling up while the database is away are one
        # catch-up at most, never one run per missed slot.
        self._claims = [pending for pending in self._claims if pending.entry is not claim.entry]
        self._claims.append(claim)

    def _catch_up_decision(
        self, entry: ScheduleEntry, latest: datetime, now: datetime
    ) -> _Decision:
        settings = entry.schedule.settings
        if entry.paused:
            return _Decision(_Act.RECORD)
        age_seconds = (now - latest).total_seconds()
        if age_seconds <= settings.jitter_seconds + MISFIRE_TOLERANCE_SECONDS:
            # No later than a running daemon may take a fire (jitter, a busy loop): it is
            # this fire's normal run, not a missed one, whatever the misfire policy says.
            if entry.state is not ScheduleState.IDLE:
                return _Decision(
                    _Act.SKIP, SkipReason.OVERLAP, "in-flight run resumed at its fire time"
                )
            return _Decision(_Act.RUN)
        if settings.misfire is MisfirePolicy.SKIP or age_seconds > settings.misfire_grace_seconds:
            return _Decision(
                _Act.SKIP,
                SkipReason.MISFIRE,
                f"fire time {latest:%Y-%m-%d %H:%M} UTC missed while the daemon was down",
            )
        if entry.state is not ScheduleState.IDLE:
            return _Decision(
                _Act.SKIP, SkipReason.OVERLAP, "in-flight run resumed at its fire time"
            )
        return _Decision(
            _Act.RUN,
            message=f"fire time {latest:%Y-%m-%d %H:%M} UTC missed while down; running once now",
        )

    def _act(
        self, entry: ScheduleEntry, fire_at: datetime, decision: _Decision, now: datetime
    ) -> None:
        """Carry out what a taken fire means: nothing (paused), a skip, or a queued run."""
        if decision.act is _Act.SKIP:
            assert decision.reason is not None
            self._skip(entry, decision.reason, now, decision.message)
        elif decision.act is _Act.RUN:
            if entry.state is not ScheduleState.IDLE:
                self._skip(entry, SkipReason.OVERLAP, now, f"still {entry.state} at its fire time")
                return
            if decision.message:
                log.info("%s/%s: %s", entry.site.name, entry.schedule.name, decision.message)
            self._enqueue(entry, fire_at)

    def _mark_tracked(self, entry: ScheduleEntry, now: datetime) -> None:
        """Record the fire time before ``now`` as seen, so the next start can tell what it
        missed. A schedule whose cron never fired before ``now`` gets no baseline yet."""
        settings = entry.schedule.settings
        if self._coordinator is not None:
            # Fires other instances may still take (jitter, a busy loop) are theirs to claim:
            # marking them taken here would make their claims lose.
            now -= timedelta(seconds=settings.jitter_seconds + MISFIRE_TOLERANCE_SECONDS)
        latest = previous_fire_time(entry.schedule.cron, now, settings.timezone)
        if latest is not None:
            self._note_fire(entry, latest)

    def _note_fire(self, entry: ScheduleEntry, fire_at: datetime) -> None:
        entry.last_fire_at = fire_at
        if self._listener is not None:
            self._listener.fire_taken(entry)

    async def stop(self, grace_seconds: float, force: asyncio.Event | None = None) -> StopSummary:
        """Stop taking fires; ask every run to stop after its step; wait up to ``grace_seconds``.

        Runs still going when the grace period ends, or as soon as ``force`` is set, are
        cancelled (their backup stays in flight on the server). Return what happened.
        """
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for _at, key in self._queue:
            self._entries[key].state = ScheduleState.IDLE
            self._entries[key].queued_fire_at = None
        self._queue.clear()
        for entry in self._entries.values():
            if entry.run is not None:
                entry.run.request_suspend()
        tasks = set(self._tasks.values())
        pending = set(tasks)
        if pending:
            waiters: set[asyncio.Future[Any]] = set(pending)
            forced = None
            if force is not None:
                forced = asyncio.ensure_future(force.wait())
                waiters.add(forced)
            # Real time on purpose: the grace period bounds the process's exit for systemd.
            deadline = asyncio.get_running_loop().time() + max(0.0, grace_seconds)
            while pending:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or (forced is not None and forced.done()):
                    break
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                pending = {task for task in pending if not task.done()}
                waiters = {waiter for waiter in waiters if not waiter.done()} | (
                    {forced} if forced is not None else set()
                )
            if forced is not None and not forced.done():
                forced.cancel()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._fleet_task is not None:
            # Renewals went on while runs finished their step; the leases left are handed over.
            self._fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fleet_task
            self._fleet_task = None
        return StopSummary(suspended=len(tasks) - len(pending), cancelled=len(pending))

    # --- requests ------------------------------------------------------------------------

    def trigger(self, site: str, schedule: str) -> ScheduleEntry:
        """Queue a run now (run-now), under the site mutex and the limits; return the entry.

        Raise SchedulerError 404 for an unknown schedule, 409 when it is running or queued.
        """
        entry = self._require(site, schedule)
        if entry.state is not ScheduleState.IDLE:
            raise SchedulerError(f"{site}/{schedule} is already {entry.state}", 409)
        if entry.remote_owner is not None:
            raise SchedulerError(
                f"{site}/{schedule} is already running on instance {entry.remote_owner}", 409
            )
        if self._stopping:
            raise SchedulerError("the daemon is shutting down", 503)
        entry.run_now = True
        self._enqueue(entry, self._clock.now())
        self._wake()
        return entry

    def pause(self, site: str, schedule: str | None = None) -> list[ScheduleEntry]:
        """Pause one schedule, or every schedule of ``site``; queued fires are dropped.

        A running backup is not interrupted. Raise SchedulerError 404 when nothing matches.
        """
        entries = self._matching(site, schedule)
        for entry in entries:
            entry.paused = True
            # A queued resume is a backup in progress on the server: it goes on.
            if entry.state is ScheduleState.QUEUED and entry.resume is None:
                self._dequeue(entry)
        return entries

    def resume(self, site: str, schedule: str | None = None) -> list[ScheduleEntry]:
        """Resume paused schedules; they fire again from their next fire time."""
        entries = self._matching(site, schedule)
        for entry in entries:
            entry.paused = False
        return entries

    def set_paused(self, keys: Iterable[ScheduleKey]) -> None:
        """Mark the given schedules paused (restoring persisted pauses at startup)."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                entry.paused = True

    def cancel(self, site: str, schedule: str) -> ScheduleEntry:
        """Cancel a running run (it fails ``interrupted`` after its step) or drop a queued fire.

        Raise SchedulerError 404 for an unknown schedule, 409 when there is nothing to cancel.
        """
        entry = self._require(site, schedule)
        if entry.state is ScheduleState.RUNNING and entry.run is not None:
            entry.run.request_cancel()
        elif entry.state is ScheduleState.QUEUED:
            self._dequeue(entry)
        elif entry.remote_owner is not None:
            raise SchedulerError(
                f"{site}/{schedule} is running on instance {entry.remote_owner}: cancel it there",
                409,
            )
        else:
            raise SchedulerError(f"{site}/{schedule} is not running or queued", 409)
        return entry

    def apply(self, config: Config) -> tuple[int, int, int]:
        """Switch to a new configuration; return (added, removed, changed) schedule counts.

        Added schedules start from their next fire time. Removed ones lose a queued fire at
        once; a running one finishes first, then vanishes. Changed timing (cron, time zone,
        jitter) takes effect from now; anything else applies from the next run. Unchanged
        schedules keep their timing. A running backup is never interrupted.
        """
        now = self._clock.now()
        self._max_concurrent = config.limits.max_concurrent
        self._group_caps = dict(config.limits.groups)
        wanted = {
            (site.name, schedule.name): (site, schedule)
            for site in config.sites
            for schedule in site.schedules
        }
        added = removed = changed = 0
        for key, entry in list(self._entries.items()):
            if key in wanted:
                continue
            removed += 1
            if entry.state is ScheduleState.QUEUED:
                self._dequeue(entry)
            if entry.state is ScheduleState.RUNNING:
                entry.removed = True
                entry.next_fire_at = entry.next_due_at = None
                entry.generation += 1
            else:
                del self._entries[key]
        for key, (site, schedule) in wanted.items():
            found = self._entries.get(key)
            if found is None:
                added += 1
                self._mark_tracked(self._add(site, schedule, now), now)
                continue
            entry = found
            if entry.removed:
                entry.removed = False
                entry.site, entry.schedule = site, schedule
                self._reschedule(entry, now)
                continue
            timing_changed = (
                entry.schedule.cron != schedule.cron
                or entry.schedule.settings.timezone != schedule.settings.timezone
                or entry.schedule.settings.jitter_seconds != schedule.settings.jitter_seconds
            )
            if entry.site != site or entry.schedule != schedule:
                changed += 1
            entry.site, entry.schedule = site, schedule
            if timing_changed:
                self._reschedule(entry, now)
                # Fires of the new timing before now were never due: only later ones can be
                # missed (by a daemon down before the next fire).
                self._mark_tracked(entry, now)
        self._wake()
        return added, removed, changed

    # --- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            now = self._clock.now()
            self._refresh_intervals(now)
            self._take_due_fires(now)
            wait = self._max_idle_wait_seconds
            if self._coordinator is None:
                self._dispatch()
            else:
                settled = await self._settle_claims(now)
                await self._dispatch_fleet()
                if self._queue or not settled:
                    # Slots freed by other instances wake nobody here: look again soon.
                    wait = min(wait, self._coordinator.poll_interval_seconds)
            if self._heap:
                wait = min(wait, max(0.0, (self._heap[0].at - now).total_seconds()))
            await self._sleep_or_wake(wait)

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                if not task.done():
                    task.cancel()

    def _halted(self) -> bool:
        """Return True once stopping (a call: mypy keeps no narrowing across awaits then)."""
        return self._stopping

    def _wake(self) -> None:
        self._wakeup.set()

    def _take_due_fires(self, now: datetime) -> None:
        while self._heap and self._heap[0].at <= now:
            due = heapq.heappop(self._heap)
            entry = self._entries.get(due.key)
            if entry is None or entry.generation != due.generation or entry.removed:
                continue
            self._take_fire(entry, due.at, now)

    def _take_fire(self, entry: ScheduleEntry, due_at: datetime, now: datetime) -> None:
        fire_at = entry.next_fire_at or due_at
        settings = entry.schedule.settings
        latest = previous_fire_time(entry.schedule.cron, now, settings.timezone) or fire_at
        latest = max(latest, fire_at)
        self._reschedule(entry, now)
        decision = self._fire_decision(entry, fire_at, latest, due_at, now)
        if self._coordinator is not None:
            self._add_claim(_PendingClaim(entry, latest, due_at, decision))
            return
        self._note_fire(entry, latest)
        self._act(entry, latest, decision, now)

    def _fire_decision(
        self,
        entry: ScheduleEntry,
        fire_at: datetime,
        latest: datetime,
        due_at: datetime,
        now: datetime,
    ) -> _Decision:
        settings = entry.schedule.settings
        if entry.paused:
            return _Decision(_Act.RECORD)
        lag_seconds = (now - due_at).total_seconds()
        message = ""
        if lag_seconds > MISFIRE_TOLERANCE_SECONDS:
            age_seconds = (now - latest).total_seconds()
            if (
                settings.misfire is MisfirePolicy.SKIP
                or age_seconds > settings.misfire_grace_seconds
            ):
                return _Decision(
                    _Act.SKIP, SkipReason.MISFIRE, f"fire time {fire_at:%Y-%m-%d %H:%M} UTC missed"
                )
            message = (
                f"fire time missed by {lag_seconds:.0f} s; running once for "
                f"{latest:%Y-%m-%d %H:%M} UTC"
            )
        if entry.state is not ScheduleState.IDLE:
            return _Decision(_Act.SKIP, SkipReason.OVERLAP, f"still {entry.state} at its fire time")
        return _Decision(_Act.RUN, message=message)

    def _skip(self, entry: ScheduleEntry, reason: SkipReason, now: datetime, message: str) -> None:
        log.info(
            "%s/%s: fire skipped (%s): %s", entry.site.name, entry.schedule.name, reason, message
        )
        skipped = entry.stats.on_skip(reason, now, message)
        if self._listener is not None:
            self._listener.fire_skipped(entry, skipped)

    def _dispatch(self) -> None:
        if self._stopping or not self._queue:
            return
        started: list[tuple[datetime, ScheduleKey]] = []
        running = len(self._tasks)
        for item in self._queue:
            if running >= self._max_concurrent:
                break
            entry = self._entries[item[1]]
            if entry.site.name in self._busy_sites:
                continue
            group = entry.site.group
            if group is not None:
                cap = self._group_caps.get(group)
                if cap is not None and self._group_running.get(group, 0) >= cap:
                    continue
            started.append(item)
            self._start(entry)
            running += 1
        for item in started:
            self._queue.remove(item)

    async def _settle_claims(self, now: datetime) -> bool:
        """Claim the fires taken since the last round; return False when the database could
        not be asked (they are asked again next round)."""
        coordinator = self._coordinator
        if coordinator is None or not self._claims:
            return True
        claims, self._claims = self._claims, []
        # Decided when due; decided again now, late by however long the database was away.
        claims = [
            _PendingClaim(
                claim.entry,
                claim.fire_at,
                claim.due_at,
                self._fire_decision(claim.entry, claim.fire_at, claim.fire_at, claim.due_at, now)
                if claim.decision.act is _Act.RUN
                else claim.decision,
            )
            for claim in claims
        ]
        try:
            results = await coordinator.claim_fires(
                [
                    FireClaim(
                        claim.entry.key,
                        claim.fire_at,
                        fire_timing(claim.entry.schedule),
                        claim.entry.site.group,
                        claim.decision.act is _Act.RUN,
                    )
                    for claim in claims
                ]
            )
        except StateError:
            for claim in claims:
                if all(pending.entry is not claim.entry for pending in self._claims):
                    self._claims.append(claim)
            return False
        for claim in claims:
            entry = claim.entry
            result = results.get(entry.key, Claim.LOST)
            if self._entries.get(entry.key) is not entry or entry.removed:
                if result is Claim.WON and claim.decision.act is _Act.RUN:
                    coordinator.release(entry.key, hand_over=False)
                continue
            if result is Claim.LOST:
                # Another instance took it: remember the time, but it is not ours to persist.
                if entry.last_fire_at is None or claim.fire_at > entry.last_fire_at:
                    entry.last_fire_at = claim.fire_at
                continue
            self._note_fire(entry, claim.fire_at)
            if result is Claim.BUSY:
                self._skip(
                    entry, SkipReason.OVERLAP, now, "still queued or running at its fire time"
                )
                continue
            if claim.decision.act is _Act.RUN and entry.state is not ScheduleState.IDLE:
                coordinator.release(entry.key, hand_over=False)
            self._act(entry, claim.fire_at, claim.decision, now)
        return True

    async def _dispatch_fleet(self) -> None:
        """Ask the database for slots for the queued fires, oldest first, one per site."""
        coordinator = self._coordinator
        if coordinator is None or self._stopping or not self._queue:
            return
        sites = set(self._busy_sites)
        requests: list[RunSlotRequest] = []
        resumes: set[ScheduleKey] = set()
        for fire_at, key in self._queue:
            entry = self._entries[key]
            if entry.site.name in sites:
                continue
            sites.add(entry.site.name)
            if entry.resume is not None:
                entry.run_id = entry.resume.checkpoint.run_id
                resumes.add(key)
            elif entry.run_id is None:
                entry.run_id = make_run_id(fire_at)
            requests.append(
                RunSlotRequest(key, entry.site.group, fire_at, entry.run_id, entry.run_now)
            )
        if not requests:
            return
        try:
            grant = await coordinator.acquire(
                requests, self._max_concurrent, dict(self._group_caps)
            )
        except StateError:
            return
        for key in grant.gone:
            gone = self._entries.get(key)
            if gone is not None and gone.state is ScheduleState.QUEUED:
                log.info("%s/%s: queued fire dropped: another instance holds it", key[0], key[1])
                self._dequeue(gone, forget_resume=False, release=False)
        for item in list(self._queue):
            key = item[1]
            if key not in grant.granted:
                continue
            queued = self._entries[key]
            if self._halted() or queued.state is not ScheduleState.QUEUED:
                continue
            self._queue.remove(item)
            self._start(queued)
        for key in grant.granted:
            started = self._entries.get(key)
            if started is None or started.state is not ScheduleState.RUNNING:
                # Dropped meanwhile (cancel, pause, reload): only a backup in flight on the
                # server is handed over; a fire that never started is let go.
                coordinator.release(key, hand_over=key in resumes)

    # --- fleet mode: leases, takeovers, what the other instances changed ----------------

    async def _fleet_loop(self) -> None:
        coordinator = self._coordinator
        assert coordinator is not None
        last_renewal = last_refresh = -float("inf")
        tick_seconds = min(FLEET_TICK_SECONDS, coordinator.renew_interval_seconds)
        while not self._stopping:
            try:
                monotonic = self._clock.monotonic()
                if monotonic - last_renewal >= coordinator.renew_interval_seconds:
                    try:
                        self._leases_lost(await coordinator.renew())
                        last_renewal = monotonic
                    except StateError:
                        pass  # lease_valid() turns False in time; runs stop on their own
                if self._halted():
                    return
                with contextlib.suppress(StateError):
                    await coordinator.send_releases()
                # Expired leases are looked for every tick: a takeover comes within a tick of
                # the expiry, not a whole renewal interval later.
                with contextlib.suppress(StateError):
                    self._adopt(await coordinator.take_over(TAKEOVERS_PER_ROUND))
                if monotonic - last_refresh >= REFRESH_INTERVAL_SECONDS:
                    with contextlib.suppress(StateError):
                        self.apply_fleet_changes(await coordinator.refresh())
                        last_refresh = monotonic
            except Exception:
                # A bug must not end the renewals: every run here would be taken over.
                log.exception("fleet lease round failed")
            await self._clock.sleep(tick_seconds)

    def _leases_lost(self, keys: Iterable[ScheduleKey]) -> None:
        """Stop at once what this instance no longer holds: another instance has it now."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            task = self._tasks.get(key)
            if entry.state is ScheduleState.RUNNING and task is not None:
                log.error(
                    "%s/%s: lease lost (another instance took the run over): stepping stops now",
                    key[0],
                    key[1],
                )
                task.cancel()
            elif entry.state is ScheduleState.QUEUED:
                log.warning("%s/%s: lease of the queued fire lost to another instance", *key)
                self._dequeue(entry, forget_resume=False, release=False)

    def _adopt(self, takeovers: list[Takeover]) -> None:
        """Queue what was taken over: a run to resume, or a fire that never started."""
        coordinator = self._coordinator
        assert coordinator is not None
        for taken in takeovers:
            entry = self._entries.get(taken.key)
            if entry is None or entry.removed or self._stopping:
                log.warning(
                    "%s/%s: lease taken over from %s but the schedule is not configured here",
                    *taken.key,
                    taken.previous_owner,
                )
                coordinator.release(taken.key, hand_over=True)
                continue
            what = "run" if taken.resume is not None else "queued fire"
            log.warning(
                "%s/%s: %s taken over from %s, which stopped renewing its lease",
                *taken.key,
                what,
                taken.previous_owner,
            )
            if entry.state is ScheduleState.QUEUED:
                entry.resume = taken.resume or entry.resume
                continue
            if entry.state is ScheduleState.RUNNING:
                continue
            entry.resume = taken.resume
            entry.remote_owner = None
            self._enqueue(
                entry, taken.resume.checkpoint.started_at if taken.resume else taken.fire_at
            )
        if takeovers:
            self._wake()

    def apply_fleet_changes(self, changes: FleetChanges) -> None:
        """Take in what other instances changed: tallies and history of schedules not busy
        here, pauses, the runs they execute, and a newly published configuration."""
        for key, stats in changes.stats.items():
            entry = self._entries.get(key)
            if entry is None or entry.state is not ScheduleState.IDLE:
                continue
            if _tally(stats) <= _tally(entry.stats):
                # Not newer than what this instance knows (perhaps its own write not yet
                # committed): taking it would turn counters back.
                continue
            stats.history = entry.stats.history
            stats.live = entry.stats.live if stats.live is None else stats.live
            entry.stats = stats
        for key, fired in changes.last_fire_at.items():
            entry = self._entries.get(key)
            if entry is not None and (entry.last_fire_at is None or fired > entry.last_fire_at):
                entry.last_fire_at = fired
        for run in changes.runs:
            entry = self._entries.get((run.site, run.schedule))
            if entry is None or any(known.run_id == run.run_id for known in entry.stats.history):
                continue
            entry.stats.history.appendleft(run)
        # Only pauses that changed in the database since the last look: a local pause not yet
        # committed must not be undone by a stale read.
        seen, self._fleet_pauses_seen = self._fleet_pauses_seen, set(changes.pauses)
        for entry in self._entries.values():
            if seen is not None and entry.key in changes.pauses and entry.key not in seen:
                if not entry.paused:
                    self.pause(entry.site.name, entry.schedule.name)
            elif seen is not None and entry.key in seen and entry.key not in changes.pauses:
                entry.paused = False
            remote = changes.remote_runs.get(entry.key)
            if remote is None or entry.state is not ScheduleState.IDLE:
                entry.remote_owner = None
                continue
            entry.remote_owner = remote.owner
            if remote.resume is not None:
                checkpoint = remote.resume.checkpoint
                entry.stats.live = LiveRun(
                    run_id=checkpoint.run_id,
                    started_at=checkpoint.started_at,
                    step_number=checkpoint.last_step_number or checkpoint.replies,
                    progress_percent=checkpoint.progress_percent,
                    domain=checkpoint.domain,
                    last_step_at=remote.resume.saved_at,
                    warnings=len(checkpoint.warnings),
                )
        generation = changes.config_generation
        if self._config_generation_seen is None:
            self._config_generation_seen = generation
        elif generation > self._config_generation_seen:
            self._config_generation_seen = generation
            if self._listener is not None:
                self._listener.fleet_config_changed(generation, changes.config_fingerprint)

    def config_published(self, generation: int) -> None:
        """Note a configuration generation this instance published itself."""
        self._config_generation_seen = max(self._config_generation_seen or 0, generation)

    def _start(self, entry: ScheduleEntry) -> None:
        fire_at = entry.queued_fire_at or self._clock.now()
        entry.queued_fire_at = None
        resume, entry.resume = entry.resume, None
        run_id = (
            resume.checkpoint.run_id if resume is not None else entry.run_id or make_run_id(fire_at)
        )
        entry.run_id = None
        entry.run_now = False
        run = self._factory.create_run(
            entry.site, entry.schedule, run_id, _EntryObserver(entry, self._observer), resume
        )
        entry.run = run
        entry.state = ScheduleState.RUNNING
        entry.run_group = entry.site.group
        self._busy_sites.add(entry.site.name)
        if entry.run_group is not None:
            self._group_running[entry.run_group] = self._group_running.get(entry.run_group, 0) + 1
        self._tasks[entry.key] = asyncio.create_task(
            self._execute(entry, run, run_id), name=f"run {entry.site.name}/{entry.schedule.name}"
        )

    async def _execute(self, entry: ScheduleEntry, run: Run, run_id: str) -> None:
        hand_over = True
        try:
            result = await run.execute()
            hand_over = result.outcome is RunOutcome.SUSPENDED
        except asyncio.CancelledError:
            log.warning(
                "%s/%s: run %s cancelled mid-call (forced shutdown, or lease lost)",
                entry.site.name,
                entry.schedule.name,
                run_id,
            )
            raise
        except Exception as error:
            # A bug, not a remote problem (the engine maps those to outcomes): still one outcome.
            log.exception("%s/%s: run %s crashed", entry.site.name, entry.schedule.name, run_id)
            now = self._clock.now()
            result = RunResult(
                outcome=RunOutcome.FAILED,
                reason=FailureReason.INTERRUPTED,
                message=f"internal error: {type(error).__name__}",
                started_at=entry.stats.live.started_at if entry.stats.live else now,
                finished_at=now,
                duration_seconds=0.0,
            )
            _EntryObserver(entry, self._observer).on_run_event(
                RunFinished(entry.site.name, entry.schedule.name, run_id, result)
            )
            hand_over = False
        finally:
            self._release(entry, hand_over=hand_over)

    def _release(self, entry: ScheduleEntry, *, hand_over: bool) -> None:
        if self._coordinator is not None:
            # Suspended or cancelled: the backup is in flight on the server, so the lease
            # expires now and another instance resumes it; an ended run frees its slot.
            self._coordinator.release(entry.key, hand_over=hand_over)
        self._tasks.pop(entry.key, None)
        self._busy_sites.discard(entry.site.name)
        group = entry.run_group
        if group is not None:
            self._group_running[group] = max(0, self._group_running.get(group, 0) - 1)
        entry.run = None
        entry.run_group = None
        entry.state = ScheduleState.IDLE
        if entry.removed and self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._wake()

    # --- bookkeeping ---------------------------------------------------------------------

    def _add(self, site: SiteConfig, schedule: ScheduleConfig, now: datetime) -> ScheduleEntry:
        entry = ScheduleEntry(site, schedule, ScheduleStats(site.name, schedule.name))
        self._entries[entry.key] = entry
        self._reschedule(entry, now)  # sets expected_interval_seconds too
        return entry

    def _reschedule(self, entry: ScheduleEntry, now: datetime) -> None:
        settings = entry.schedule.settings
        fire_at = next_fire_time(entry.schedule.cron, now, settings.timezone)
        jitter = self._rng.uniform(0.0, settings.jitter_seconds) if settings.jitter_seconds else 0.0
        entry.next_fire_at = fire_at
        entry.next_due_at = fire_at + timedelta(seconds=jitter)
        entry.generation += 1
        entry.expected_interval_seconds = expected_interval_seconds(
            entry.schedule.cron, settings.timezone, now
        )
        self._seq += 1
        heapq.heappush(self._heap, _Due(entry.next_due_at, self._seq, entry.key, entry.generation))

    def _refresh_intervals(self, now: datetime) -> None:
        """Recompute expected intervals once a day (they depend on the local date: DST)."""
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self._interval_day == day:
            return
        self._interval_day = day
        for entry in self._entries.values():
            entry.expected_interval_seconds = expected_interval_seconds(
                entry.schedule.cron, entry.schedule.settings.timezone, now
            )

    def _enqueue(self, entry: ScheduleEntry, fire_at: datetime) -> None:
        entry.state = ScheduleState.QUEUED
        entry.queued_fire_at = fire_at
        bisect.insort(self._queue, (fire_at, entry.key))

    def _dequeue(
        self, entry: ScheduleEntry, *, forget_resume: bool = True, release: bool = True
    ) -> None:
        """Take a queued fire out of the queue; ``forget_resume`` drops the in-flight run it
        stands for, ``release`` gives up its lease (both False when another instance has it)."""
        if forget_resume and entry.resume is not None and self._listener is not None:
            self._listener.resume_dropped(entry.resume)
        if release and self._coordinator is not None:
            self._coordinator.release(entry.key, hand_over=False)
        entry.resume = None
        entry.run_id = None
        entry.run_now = False
        if entry.queued_fire_at is not None:
            with contextlib.suppress(ValueError):
                self._queue.remove((entry.queued_fire_at, entry.key))
        entry.queued_fire_at = None
        entry.state = ScheduleState.IDLE

    def _require(self, site: str, schedule: str) -> ScheduleEntry:
        entry = self._entries.get((site, schedule))
        if entry is None or entry.removed:
            raise SchedulerError(f"no schedule {site}/{schedule}", 404)
        return entry

    def _matching(self, site: str, schedule: str | None) -> list[ScheduleEntry]:
        if schedule is not None:
            return [self._require(site, schedule)]
        entries = [
            entry
            for entry in self._entries.values()
            if entry.site.name == site and not entry.removed
        ]
        if not entries:
            raise SchedulerError(f"no site {site}", 404)
        return entries


def _tally(stats: ScheduleStats) -> int:
    """Return how many fires a schedule's tallies have counted (grows with each one)."""
    return stats.runs_total + sum(stats.skipped_total.values())


class _EntryObserver:
    """Feeds a run's events to its schedule's stats, then to the daemon-wide observer."""

    def __init__(self, entry: ScheduleEntry, downstream: RunObserver | None) -> None:
        self._entry = entry
        self._downstream = downstream

    def on_run_event(self, event: RunEvent) -> None:
        self._entry.stats.on_event(event)
        if self._downstream is not None:
            self._downstream.on_run_event(event)
