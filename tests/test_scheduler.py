"""The scheduler under a fake clock: fire times, site mutex, limits, overlap, misfire, reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from akeeba_backupd.config import Config, ScheduleConfig, SiteConfig, load_config
from akeeba_backupd.run import (
    RunBegan,
    RunFinished,
    RunObserver,
    RunOutcome,
    RunResult,
)
from akeeba_backupd.scheduler import Scheduler, SchedulerError, ScheduleState, fire_timing
from akeeba_backupd.state import LoadedState, SavedCheckpoint
from akeeba_backupd.status import SkipReason
from tests.sim_clock import START, SteppingClock

ENVIRON = {"SECRET": "s3cret-value"}
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


def write_config(tmp_path: Path, sites: list[dict[str, Any]], **top: Any) -> Config:
    """Write a config with ``sites`` (secret from the environment) and load it."""
    document: dict[str, Any] = {"listen": "127.0.0.1:0", "state_dir": str(tmp_path), **top}
    document["sites"] = [
        {"url": f"http://127.0.0.1:9/{site['name']}/", "secret_env": "SECRET", **site}
        for site in sites
    ]
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return load_config(path, ENVIRON)


def site(name: str, *schedules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Return a site entry with the given schedules."""
    return {"name": name, "schedules": list(schedules), **extra}


def schedule(name: str, cron: str, **extra: Any) -> dict[str, Any]:
    """Return a schedule entry."""
    return {"name": name, "cron": cron, **extra}


@dataclass
class FakeRun:
    """A run that takes ``duration`` seconds of fake time and ends with ``outcome``."""

    factory: FakeRunFactory
    site: str
    schedule: str
    run_id: str
    observer: RunObserver
    duration: float
    outcome: RunOutcome = RunOutcome.SUCCEEDED
    suspend_requested: bool = False
    cancel_requested: bool = False

    async def execute(self) -> RunResult:
        clock = self.factory.clock
        started = clock.now()
        self.factory.began.append((self.site, self.schedule, started))
        self.factory.active.add(self.site)
        self.factory.in_flight += 1
        self.factory.max_in_flight = max(self.factory.max_in_flight, self.factory.in_flight)
        self.observer.on_run_event(RunBegan(self.site, self.schedule, self.run_id, started, False))
        try:
            remaining = self.duration
            while remaining > 0 and not (self.suspend_requested or self.cancel_requested):
                step = min(remaining, 60.0)
                await clock.sleep(step)
                remaining -= step
        finally:
            self.factory.in_flight -= 1
            self.factory.active.discard(self.site)
        outcome = self.outcome
        if self.suspend_requested:
            outcome = RunOutcome.SUSPENDED
        finished = clock.now()
        result = RunResult(
            outcome=outcome,
            reason=None,
            message="",
            started_at=started,
            finished_at=finished,
            duration_seconds=(finished - started).total_seconds(),
        )
        self.observer.on_run_event(RunFinished(self.site, self.schedule, self.run_id, result))
        return result

    def request_suspend(self) -> None:
        self.suspend_requested = True

    def request_cancel(self) -> None:
        self.cancel_requested = True


@dataclass
class FakeRunFactory:
    """Makes FakeRuns and records when each began; checks the per-site mutex."""

    clock: SteppingClock
    duration: Callable[[str, str], float] = lambda site, schedule: 0.0
    began: list[tuple[str, str, datetime]] = field(default_factory=list)
    runs: list[FakeRun] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    mutex_violations: int = 0
    resumed: list[SavedCheckpoint | None] = field(default_factory=list)

    def create_run(
        self,
        site: SiteConfig,
        schedule: ScheduleConfig,
        run_id: str,
        observer: RunObserver,
        resume: SavedCheckpoint | None,
    ) -> FakeRun:
        self.resumed.append(resume)
        if site.name in self.active:
            self.mutex_violations += 1
        run = FakeRun(
            self,
            site.name,
            schedule.name,
            run_id,
            observer,
            self.duration(site.name, schedule.name),
        )
        self.runs.append(run)
        return run

    def times(self, site: str, schedule: str) -> list[datetime]:
        return [at for s, sch, at in self.began if (s, sch) == (site, schedule)]


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
async def started() -> AsyncIterator[list[Scheduler]]:
    """Collect schedulers to stop at teardown."""
    schedulers: list[Scheduler] = []
    yield schedulers
    for scheduler in schedulers:
        await scheduler.stop(0.0)


def make(
    config: Config,
    clock: SteppingClock,
    factory: FakeRunFactory,
    started: list[Scheduler],
    max_idle_wait_seconds: float = DAY,
) -> Scheduler:
    scheduler = Scheduler(config, clock, factory, max_idle_wait_seconds=max_idle_wait_seconds)
    scheduler.start()
    started.append(scheduler)
    return scheduler


async def test_a_week_of_fire_times(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """A week runs every hourly, daily and weekday schedule exactly at its fire times."""
    config = write_config(
        tmp_path,
        [
            site("a", schedule("hourly", "5 * * * *")),
            site("b", schedule("daily", "30 2 * * *")),
            site("c", schedule("weekdays", "0 9 * * 1-5", timezone="Europe/Amsterdam")),
        ],
    )
    factory = FakeRunFactory(clock)
    make(config, clock, factory, started)
    await clock.run_for(7 * DAY)
    hourly = factory.times("a", "hourly")
    assert len(hourly) == 7 * 24
    assert all(at.minute == 5 and at.second == 0 for at in hourly)
    assert factory.times("b", "daily") == [
        START + timedelta(days=day, hours=2, minutes=30) for day in range(7)
    ]
    # 09:00 in Amsterdam is 08:00 UTC in winter; Monday 7 December to Friday 11 December.
    assert factory.times("c", "weekdays") == [
        START + timedelta(days=day, hours=8) for day in range(5)
    ]


async def test_site_mutex_across_schedules(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """Two schedules of one site due together run one after the other, never at once."""
    config = write_config(
        tmp_path,
        [site("a", schedule("full", "0 1 * * *"), schedule("db", "0 1 * * *", profile=2))],
    )
    factory = FakeRunFactory(clock, duration=lambda site, schedule: 10 * MINUTE)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(1 * HOUR + 30 * MINUTE)
    assert factory.mutex_violations == 0
    first, second = sorted(at for _, _, at in factory.began)
    assert first == START + timedelta(hours=1)
    assert second == first + timedelta(minutes=10)
    entry = scheduler.entry("a", "db")
    assert entry is not None
    assert entry.stats.skipped_total == {}


async def test_overlap_skips_a_fire(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """A run still going at its next fire time skips that fire and counts it as overlap."""
    config = write_config(tmp_path, [site("a", schedule("every5", "*/5 * * * *"))])
    factory = FakeRunFactory(clock, duration=lambda site, schedule: 7 * MINUTE)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(21 * MINUTE)
    # Fires at :05, :10 (overlap), :15, :20 (overlap): two runs, two skips.
    assert factory.times("a", "every5") == [
        START + timedelta(minutes=5),
        START + timedelta(minutes=15),
    ]
    entry = scheduler.entry("a", "every5")
    assert entry is not None
    assert entry.stats.skipped_total[SkipReason.OVERLAP] == 2
    assert factory.mutex_violations == 0


async def test_global_limit_serves_in_due_order(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """With max_concurrent 2, five due runs start two at a time, earliest due first."""
    sites = [site(f"s{i}", schedule("nightly", f"{i} 1 * * *")) for i in range(5)]
    config = write_config(tmp_path, sites, limits={"max_concurrent": 2})
    factory = FakeRunFactory(clock, duration=lambda site, schedule: 30 * MINUTE)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(1 * HOUR + 10 * MINUTE)
    assert scheduler.running_count == 2
    assert scheduler.queued_count == 3
    queued = [
        entry.site.name for entry in scheduler.entries() if entry.state is ScheduleState.QUEUED
    ]
    assert sorted(queued) == ["s2", "s3", "s4"]
    await clock.run_for(2 * HOUR)
    assert factory.max_in_flight == 2
    assert [name for name, _, _ in factory.began] == ["s0", "s1", "s2", "s3", "s4"]


async def test_group_cap(tmp_path: Path, clock: SteppingClock, started: list[Scheduler]) -> None:
    """Sites sharing a group with cap 1 run one at a time while others are not held back."""
    sites = [
        site("g1", schedule("n", "0 1 * * *"), group="web3"),
        site("g2", schedule("n", "0 1 * * *"), group="web3"),
        site("free", schedule("n", "0 1 * * *")),
    ]
    config = write_config(tmp_path, sites, limits={"max_concurrent": 10, "groups": {"web3": 1}})
    factory = FakeRunFactory(clock, duration=lambda site, schedule: 20 * MINUTE)
    make(config, clock, factory, started)
    await clock.run_for(2 * HOUR)
    began = {name: at for name, _, at in factory.began}
    one = START + timedelta(hours=1)
    assert began["free"] == one
    assert sorted([began["g1"], began["g2"]]) == [one, one + timedelta(minutes=20)]


async def test_run_now_and_conflicts(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """Run-now starts at once; asking again while it runs is a conflict; unknown is 404."""
    config = write_config(tmp_path, [site("a", schedule("n", "0 3 * * *"))])
    factory = FakeRunFactory(clock, duration=lambda site, schedule: 5 * MINUTE)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(MINUTE)
    scheduler.trigger("a", "n")
    await clock.settle()
    assert factory.times("a", "n") == [START + timedelta(minutes=1)]
    with pytest.raises(SchedulerError) as conflict:
        scheduler.trigger("a", "n")
    assert conflict.value.status == 409
    with pytest.raises(SchedulerError) as missing:
        scheduler.trigger("a", "nope")
    assert missing.value.status == 404


async def test_pause_and_resume(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """A paused schedule does not fire; resumed, it fires again from its next fire time."""
    config = write_config(tmp_path, [site("a", schedule("h", "0 * * * *"))])
    factory = FakeRunFactory(clock)
    scheduler = make(config, clock, factory, started)
    scheduler.pause("a")
    await clock.run_for(3 * HOUR + MINUTE)
    assert factory.began == []
    entry = scheduler.entry("a", "h")
    assert entry is not None
    assert entry.paused
    scheduler.resume("a", "h")
    await clock.run_for(HOUR)
    assert factory.times("a", "h") == [START + timedelta(hours=4)]


@pytest.mark.parametrize(
    ("policy", "grace", "expected_runs", "expected_misfires"),
    [
        ("run_once", "6h", 1, 0),
        ("skip", "6h", 0, 1),
        ("run_once", "30m", 0, 1),
    ],
)
async def test_missed_fires_after_a_clock_jump(
    tmp_path: Path,
    clock: SteppingClock,
    started: list[Scheduler],
    policy: str,
    grace: str,
    expected_runs: int,
    expected_misfires: int,
) -> None:
    """Fires missed while asleep run once at most (run_once within grace), never once per slot."""
    config = write_config(
        tmp_path,
        [site("a", schedule("h", "0 * * * *"))],
        defaults={"misfire": policy, "misfire_grace": grace},
    )
    factory = FakeRunFactory(clock)
    # The real idle cap: the loop looks at the wall clock at least once a minute.
    scheduler = make(config, clock, factory, started, max_idle_wait_seconds=MINUTE)
    await clock.run_for(30 * MINUTE)
    clock.jump(3 * HOUR)  # asleep from 00:30 to 03:30: the 01:00, 02:00, 03:00 fires are missed
    await clock.run_for(31 * MINUTE)  # to 04:01; within a minute the loop sees the jump
    entry = scheduler.entry("a", "h")
    assert entry is not None
    catch_up = [at for at in factory.times("a", "h") if at < START + timedelta(hours=4)]
    assert len(catch_up) == expected_runs
    assert entry.stats.skipped_total[SkipReason.MISFIRE] == expected_misfires
    # The regular 04:00 fire runs whatever the policy.
    assert START + timedelta(hours=4) in factory.times("a", "h")


@pytest.mark.parametrize(
    ("policy", "grace", "down_hours", "expected_catch_up", "expected_misfires"),
    [
        ("run_once", "6h", 3, 1, 0),  # down 00:30-03:30 over the 02:00 fire: run it once now
        ("skip", "6h", 3, 0, 1),
        ("run_once", "1h", 3, 0, 1),  # the 02:00 fire is 1.5 h old at restart: beyond grace
        ("run_once", "6h", 1, 0, 0),  # down 00:30-01:30: nothing was missed
    ],
)
async def test_a_fire_missed_while_down_is_caught_up_at_restart(
    tmp_path: Path,
    clock: SteppingClock,
    started: list[Scheduler],
    policy: str,
    grace: str,
    down_hours: int,
    expected_catch_up: int,
    expected_misfires: int,
) -> None:
    """A schedule tracked but never fired yet still has its missed fire handled at restart:
    the first start records the fire before it as seen, and the restart compares with that."""
    config = write_config(
        tmp_path,
        [site("a", schedule("n", "0 2 * * *"))],
        defaults={"misfire": policy, "misfire_grace": grace},
    )
    first = make(config, clock, FakeRunFactory(clock), started)
    await clock.run_for(30 * MINUTE)
    entry = first.entry("a", "n")
    assert entry is not None
    assert entry.last_fire_at == START - timedelta(hours=22)  # yesterday's 02:00, as seen
    restored = LoadedState(last_fire_at={("a", "n"): entry.last_fire_at})
    await first.stop(0.0)
    clock.jump(down_hours * HOUR)
    factory = FakeRunFactory(clock)
    second = Scheduler(config, clock, factory, restored=restored, max_idle_wait_seconds=DAY)
    second.start()
    started.append(second)
    await clock.run_for(MINUTE)
    again = second.entry("a", "n")
    assert again is not None
    assert len(factory.times("a", "n")) == expected_catch_up
    assert again.stats.skipped_total[SkipReason.MISFIRE] == expected_misfires


async def test_a_cron_changed_while_down_does_not_catch_up_on_the_new_timing(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """The saved fire time belongs to the old cron: with another cron at restart, its fires
    before the restart were never due, so none is caught up (timing applies from now)."""
    old = write_config(tmp_path, [site("a", schedule("n", "0 2 * * *"))])
    first = make(old, clock, FakeRunFactory(clock), started)
    entry = first.entry("a", "n")
    assert entry is not None
    assert entry.last_fire_at is not None
    restored = LoadedState(
        last_fire_at={("a", "n"): entry.last_fire_at},
        fire_timing={("a", "n"): fire_timing(entry.schedule)},
    )
    await first.stop(0.0)
    clock.jump(3.5 * HOUR)  # down over 03:00, the new cron's fire
    new = write_config(tmp_path, [site("a", schedule("n", "0 3 * * *"))])
    factory = FakeRunFactory(clock)
    second = Scheduler(new, clock, factory, restored=restored, max_idle_wait_seconds=DAY)
    second.start()
    started.append(second)
    await clock.run_for(MINUTE)
    assert factory.times("a", "n") == []
    again = second.entry("a", "n")
    assert again is not None
    assert again.stats.skipped_total[SkipReason.MISFIRE] == 0
    assert again.last_fire_at == START + timedelta(hours=3)  # the new baseline


async def test_a_cron_changed_by_reload_is_tracked_from_the_reload(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """Reloaded at 00:30 to fire at 00:15: that fire was before the reload, so a restart at
    00:40 has nothing to catch up."""
    config = write_config(tmp_path, [site("a", schedule("n", "0 5 * * *"))])
    first = make(config, clock, FakeRunFactory(clock), started)
    await clock.run_for(30 * MINUTE)
    first.apply(write_config(tmp_path, [site("a", schedule("n", "15 0 * * *"))]))
    entry = first.entry("a", "n")
    assert entry is not None
    assert entry.last_fire_at == START + timedelta(minutes=15)
    restored = LoadedState(
        last_fire_at={("a", "n"): entry.last_fire_at},
        fire_timing={("a", "n"): fire_timing(entry.schedule)},
    )
    await first.stop(0.0)
    clock.jump(10 * MINUTE)
    factory = FakeRunFactory(clock)
    reloaded = write_config(tmp_path, [site("a", schedule("n", "15 0 * * *"))])
    second = Scheduler(reloaded, clock, factory, restored=restored, max_idle_wait_seconds=DAY)
    second.start()
    started.append(second)
    await clock.run_for(MINUTE)
    assert factory.times("a", "n") == []


async def test_jitter_delays_within_bounds(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """Jitter delays each fire by up to its value and never fires early."""
    config = write_config(
        tmp_path, [site("a", schedule("h", "0 * * * *"))], defaults={"jitter": "10m"}
    )
    factory = FakeRunFactory(clock)
    make(config, clock, factory, started)
    await clock.run_for(24 * HOUR + 10 * MINUTE)  # fires 01:00 to 00:00 the next day
    times = factory.times("a", "h")
    assert len(times) == 24
    offsets = [(at - at.replace(minute=0, second=0, microsecond=0)).total_seconds() for at in times]
    assert all(0 <= offset <= 600 for offset in offsets)
    assert len(set(offsets)) > 1  # really random, not a constant shift


async def test_reload_adds_removes_and_keeps_timing(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """apply() adds, removes (a running one after its run) and keeps unchanged timing."""
    config = write_config(
        tmp_path,
        [
            site("keep", schedule("n", "H 5 * * *"), jitter="30m"),
            site("busy", schedule("n", "0 1 * * *")),
            site("gone", schedule("n", "0 2 * * *")),
        ],
    )
    factory = FakeRunFactory(clock, duration=lambda site, schedule: HOUR)
    scheduler = make(config, clock, factory, started)
    keep_before = scheduler.entry("keep", "n")
    assert keep_before is not None
    due_before = keep_before.next_due_at
    await clock.run_for(HOUR + 10 * MINUTE)  # busy/n is running
    new = write_config(
        tmp_path,
        [
            site("keep", schedule("n", "H 5 * * *"), jitter="30m"),
            site("added", schedule("n", "0 3 * * *")),
        ],
    )
    assert scheduler.apply(new) == (1, 2, 0)
    names = {entry.key for entry in scheduler.entries()}
    assert names == {("keep", "n"), ("added", "n"), ("busy", "n")}  # busy still running
    keep_after = scheduler.entry("keep", "n")
    assert keep_after is keep_before
    assert keep_after.next_due_at == due_before
    await clock.run_for(2 * HOUR)
    names = {entry.key for entry in scheduler.entries()}
    assert names == {("keep", "n"), ("added", "n")}
    assert factory.times("added", "n") == [START + timedelta(hours=3)]
    assert factory.times("gone", "n") == []


async def test_reload_with_changed_cron(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """A changed cron expression takes effect from the reload on."""
    config = write_config(tmp_path, [site("a", schedule("n", "0 5 * * *"))])
    factory = FakeRunFactory(clock)
    scheduler = make(config, clock, factory, started)
    scheduler.apply(write_config(tmp_path, [site("a", schedule("n", "0 2 * * *"))]))
    await clock.run_for(3 * HOUR)
    assert factory.times("a", "n") == [START + timedelta(hours=2)]


async def test_stop_suspends_running_runs(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """stop() asks running runs to suspend after their step and drops queued fires."""
    sites = [site(f"s{i}", schedule("n", "0 1 * * *")) for i in range(3)]
    config = write_config(tmp_path, sites, limits={"max_concurrent": 2})
    factory = FakeRunFactory(clock, duration=lambda site, schedule: HOUR)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(HOUR + MINUTE)
    assert scheduler.running_count == 2
    assert scheduler.queued_count == 1
    stopping = asyncio.ensure_future(scheduler.stop(5.0))
    await clock.settle()
    await clock.run_for(MINUTE)
    summary = await stopping
    assert summary.suspended == 2
    assert summary.cancelled == 0
    assert all(run.suspend_requested for run in factory.runs)
    assert scheduler.queued_count == 0
    assert not scheduler.healthy()


async def test_stop_cancels_after_grace(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """A run that does not stop within the grace period is cancelled."""
    config = write_config(tmp_path, [site("a", schedule("n", "0 1 * * *"))])
    factory = FakeRunFactory(clock, duration=lambda site, schedule: HOUR)
    scheduler = make(config, clock, factory, started)
    await clock.run_for(HOUR + MINUTE)
    summary = await scheduler.stop(0.05)  # the fake clock never moves: the run cannot end
    assert summary.cancelled == 1


async def test_expected_interval_and_next_run(
    tmp_path: Path, clock: SteppingClock, started: list[Scheduler]
) -> None:
    """Each schedule knows its next fire time and the longest gap between fires."""
    config = write_config(
        tmp_path,
        [site("a", schedule("h", "0 * * * *"), schedule("w", "0 3 * * 0"))],
    )
    scheduler = make(config, clock, FakeRunFactory(clock), started)
    hourly = scheduler.entry("a", "h")
    weekly = scheduler.entry("a", "w")
    assert hourly is not None
    assert weekly is not None
    assert hourly.expected_interval_seconds == HOUR
    assert weekly.expected_interval_seconds == 7 * DAY
    assert hourly.next_due_at == START + timedelta(hours=1)
    assert weekly.next_due_at == START + timedelta(days=6, hours=3)
