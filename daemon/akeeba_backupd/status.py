"""What is known about each schedule and site: the live run view and the tallies of finished runs.

Plain data, updated from run events (:mod:`akeeba_backupd.run`) and API call observations, and
read by the metrics collector, the HTTP API, the status page and systemd's STATUS line. Nothing
here does I/O or reads a clock: every time arrives inside an event or as an argument.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.run import (
    RunBegan,
    RunEvent,
    RunFinished,
    RunOutcome,
    RunResult,
    StepDone,
    StepRetried,
    WarningRaised,
)

RUN_DURATION_BUCKETS_SECONDS: Final = (
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
)
"""``akeeba_backup_duration_seconds`` buckets: 30 s to 8 h (DESIGN.md §6)."""
REQUEST_DURATION_BUCKETS_SECONDS: Final = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""``akeeba_api_request_duration_seconds`` buckets: a real step takes 2-15 s, up to minutes."""
HISTORY_PER_SCHEDULE: Final = 50
"""Finished runs kept per schedule for ``/api/v1/runs``."""

API_METHODS: Final = (
    "getVersion",
    "getProfiles",
    "startBackup",
    "stepBackup",
    "getBackupInfo",
    "listBackups",
)
"""The closed set of the ``method`` label."""


class SkipReason(StrEnum):
    """Why a fire time did not start a run (the ``reason`` of ``akeeba_backup_skipped_total``)."""

    OVERLAP = "overlap"
    """The schedule was still running or already queued at its fire time."""
    MISFIRE = "misfire"
    """The fire time was missed (daemon down, machine asleep) and the policy said not to run."""


class Domain(StrEnum):
    """The normalised phase of a running backup (the ``domain`` label)."""

    INIT = "init"
    INSTALLER = "installer"
    DB = "db"
    PACK = "pack"
    FINALIZATION = "finalization"
    OTHER = "other"


_DOMAIN_ALIASES: Final = {
    "init": Domain.INIT,
    "installer": Domain.INSTALLER,
    "db": Domain.DB,
    "packdb": Domain.DB,
    "pack": Domain.PACK,
    "packing": Domain.PACK,
    "finalization": Domain.FINALIZATION,
    "finalisation": Domain.FINALIZATION,
    "finale": Domain.FINALIZATION,
}


def normalise_domain(domain: str) -> Domain:
    """Return the closed-set phase for a server's ``Domain`` (real servers send PackDB, finale)."""
    return _DOMAIN_ALIASES.get(domain.strip().lower(), Domain.OTHER)


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram values, as Prometheus exposes them."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    """Observations per bucket (not cumulative); one more than ``bounds`` for +Inf."""
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Return ``(le, cumulative count)`` pairs, ending with ``+Inf``."""
        pairs: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return pairs


@dataclass(slots=True)
class LiveRun:
    """The current run of a schedule, or its last one once finished."""

    run_id: str
    started_at: datetime
    resumed: bool = False
    step_number: int = 0
    progress_percent: int = 0
    domain: str = "init"
    step: str = ""
    last_step_at: datetime | None = None
    warnings: int = 0


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """One finished run, as the history keeps it."""

    site: str
    schedule: str
    run_id: str
    outcome: str
    """``succeeded``, ``failed`` or ``skipped``."""
    reason: str | None
    message: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    warnings: tuple[str, ...] = ()
    archive: str | None = None
    archive_size_bytes: int | None = None
    backup_record_id: int | None = None


@dataclass(slots=True)
class ScheduleStats:
    """Everything the metrics say about one schedule, kept up to date from its run events."""

    site: str
    schedule: str
    running: bool = False
    live: LiveRun | None = None
    runs_total: int = 0
    failures_total: Counter[FailureReason] = field(default_factory=Counter)
    skipped_total: Counter[SkipReason] = field(default_factory=Counter)
    warnings_total: int = 0
    step_retries_total: int = 0
    last_status: bool | None = None
    last_duration_seconds: float | None = None
    last_success_at: datetime | None = None
    last_success_seeded: bool = False
    """True while ``last_success_at`` comes from the site's own backup list, not from a run."""
    last_failure_at: datetime | None = None
    last_failure_reason: FailureReason | None = None
    last_message: str = ""
    consecutive_failures: int = 0
    archive_size_bytes: int | None = None
    durations: Histogram = field(default_factory=lambda: Histogram(RUN_DURATION_BUCKETS_SECONDS))
    history: deque[FinishedRun] = field(default_factory=lambda: deque(maxlen=HISTORY_PER_SCHEDULE))

    def on_event(self, event: RunEvent) -> None:
        """Update the stats from one event of this schedule's run."""
        if isinstance(event, RunBegan):
            self.running = True
            self.live = LiveRun(event.run_id, event.started_at, resumed=event.resumed)
        elif isinstance(event, StepDone):
            live = self.live
            if live is not None:
                live.step_number = event.step_number
                live.progress_percent = event.progress_percent
                live.domain = event.domain
                live.step = event.step
                live.last_step_at = event.at
        elif isinstance(event, WarningRaised):
            if self.live is not None:
                self.live.warnings += 1
            self.warnings_total += 1
        elif isinstance(event, StepRetried):
            self.step_retries_total += 1
        elif isinstance(event, RunFinished):
            self._finish(event.run_id, event.result)

    def _finish(self, run_id: str, result: RunResult) -> None:
        self.running = False
        if result.outcome is RunOutcome.SUSPENDED:
            return  # not finished: the run goes on after the restart
        self.runs_total += 1
        self.last_duration_seconds = result.duration_seconds
        self.durations.observe(result.duration_seconds)
        self.last_message = result.message
        if self.live is not None:
            self.live.warnings = len(result.warnings)
        if result.outcome is RunOutcome.SUCCEEDED:
            self.last_status = True
            self.last_success_at = result.finished_at
            self.last_success_seeded = False
            self.consecutive_failures = 0
            if self.live is not None:
                self.live.progress_percent = 100
            if result.archive_size_bytes is not None:
                self.archive_size_bytes = result.archive_size_bytes
        else:
            reason = result.reason or FailureReason.INTERRUPTED
            self.last_status = False
            self.last_failure_at = result.finished_at
            self.last_failure_reason = reason
            self.consecutive_failures += 1
            self.failures_total[reason] += 1
        self.history.appendleft(
            FinishedRun(
                site=self.site,
                schedule=self.schedule,
                run_id=run_id,
                outcome=str(result.outcome),
                reason=None if result.reason is None else str(result.reason),
                message=result.message,
                started_at=result.started_at,
                finished_at=result.finished_at,
                duration_seconds=result.duration_seconds,
                warnings=result.warnings,
                archive=result.archive,
                archive_size_bytes=result.archive_size_bytes,
                backup_record_id=result.backup_record_id,
            )
        )

    def on_skip(self, reason: SkipReason, at: datetime, message: str) -> FinishedRun:
        """Count a fire time that did not start a run; return its history record."""
        self.skipped_total[reason] += 1
        skipped = FinishedRun(
            site=self.site,
            schedule=self.schedule,
            run_id="",
            outcome="skipped",
            reason=str(reason),
            message=message,
            started_at=at,
            finished_at=at,
            duration_seconds=0.0,
        )
        self.history.appendleft(skipped)
        return skipped


@dataclass(slots=True)
class SiteApiStats:
    """API call tallies of one site (``akeeba_api_*``), fed by the client's RequestObserver."""

    site: str
    requests_total: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Calls by (method, outcome)."""
    durations: dict[str, Histogram] = field(default_factory=dict)
    """Call latency by method."""

    def observe_request(self, method: str, outcome: str, duration_seconds: float) -> None:
        """Record one finished call (the client's RequestObserver interface)."""
        self.requests_total[(method, outcome)] += 1
        histogram = self.durations.get(method)
        if histogram is None:
            histogram = self.durations[method] = Histogram(REQUEST_DURATION_BUCKETS_SECONDS)
        histogram.observe(duration_seconds)


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the site told about itself (getVersion), for ``akeeba_site_info``."""

    api_level: int
    version: str
    edition: str


@dataclass(slots=True)
class SiteStatus:
    """One configured site as the metrics see it: config facts, what it said, its API calls."""

    name: str
    platform: str
    labels: tuple[tuple[str, str], ...]
    info: SiteInfo | None = None
    api: SiteApiStats = field(init=False)

    def __post_init__(self) -> None:
        self.api = SiteApiStats(self.name)
