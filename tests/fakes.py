"""Small typed fakes shared by the tests: a clock, a scripted remote, a recording observer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from akeeba_backupd.akeeba import (
    BackupRecord,
    BackupStatus,
    Profile,
    RecordNotFoundError,
    RecordStatus,
)
from akeeba_backupd.run import RunEvent, RunFinished

START = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
E = TypeVar("E")


class FakeClock:
    """A clock whose ``sleep`` jumps time forward at once ("autojump") and yields once."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._monotonic = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        """Return the fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        """Record the request, advance both clocks, and yield to the loop once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds


Scripted = BackupStatus | BaseException


@dataclass
class FakeRemote:
    """A scripted BackupRemote: replies come from lists; calls are recorded and never overlap."""

    starts: list[Scripted] = field(default_factory=list)
    steps: list[Scripted] = field(default_factory=list)
    profiles: tuple[Profile, ...] = (Profile(1, "Default Backup Profile"),)
    records: dict[int, BackupRecord | BaseException] = field(default_factory=dict)
    record_script: dict[int, list[BackupRecord | BaseException]] = field(default_factory=dict)
    """Per record id, answers getBackupInfo gives first, in order, before falling back to
    ``records`` (a record that changes while the run polls it)."""
    listing: tuple[BackupRecord, ...] | BaseException = ()
    clock: FakeClock | None = None
    step_cost_seconds: float = 0.0
    calls: list[tuple[str, object]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def get_profiles(self) -> tuple[Profile, ...]:
        """Return the scripted profiles."""
        async with self._call("getProfiles", None):
            return self.profiles

    async def start_backup(
        self, profile_id: int, description: str, comment: str, backupid: str | None = None
    ) -> BackupStatus:
        """Return the next scripted start reply."""
        async with self._call("startBackup", (profile_id, description, comment, backupid)):
            return _next(self.starts, "startBackup")

    async def step_backup(self, backupid: str | None) -> BackupStatus:
        """Return the next scripted step reply."""
        async with self._call("stepBackup", backupid):
            return _next(self.steps, "stepBackup")

    async def get_backup_info(self, record_id: int) -> BackupRecord:
        """Return the scripted record, or raise 404."""
        async with self._call("getBackupInfo", record_id):
            script = self.record_script.get(record_id)
            record = script.pop(0) if script else self.records.get(record_id)
            if record is None:
                raise RecordNotFoundError("getBackupInfo: Invalid backup record identifier")
            if isinstance(record, BaseException):
                raise record
            return record

    async def list_backups(self, from_index: int = 0, limit: int = 50) -> tuple[BackupRecord, ...]:
        """Return the scripted listing."""
        async with self._call("listBackups", (from_index, limit)):
            if isinstance(self.listing, BaseException):
                raise self.listing
            return self.listing[from_index : from_index + limit]

    def methods(self) -> list[str]:
        """Return the names of the calls made, in order."""
        return [name for name, _ in self.calls]

    def _call(self, name: str, argument: object) -> _InFlight:
        self.calls.append((name, argument))
        return _InFlight(self)


class _InFlight:
    def __init__(self, remote: FakeRemote) -> None:
        self._remote = remote

    async def __aenter__(self) -> None:
        remote = self._remote
        remote.in_flight += 1
        remote.max_in_flight = max(remote.max_in_flight, remote.in_flight)
        if remote.clock is not None and remote.step_cost_seconds:
            await remote.clock.sleep(remote.step_cost_seconds)

    async def __aexit__(self, *exc_info: object) -> None:
        self._remote.in_flight -= 1


def _next(script: list[Scripted], method: str) -> BackupStatus:
    if not script:
        raise AssertionError(f"unexpected {method}: the script is exhausted")
    item = script.pop(0)
    if isinstance(item, BaseException):
        raise item
    return item


class RecordingObserver:
    """Keeps every run event."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def on_run_event(self, event: RunEvent) -> None:
        """Store the event."""
        self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """Return the events of one type."""
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def finished(self) -> RunFinished:
        """Return the single RunFinished event."""
        (event,) = self.of_type(RunFinished)
        return event


def status(
    *,
    has_run: bool = True,
    domain: str = "Packing",
    step_number: int | None = None,
    backupid: str | None = "id-1",
    record_id: int | None = 7,
    progress: int | None = 50,
    error: str = "",
    warnings: Iterable[str] = (),
    archive: str | None = "site.jpa",
    step: str = "",
    sleep_time_ms: int | None = 0,
) -> BackupStatus:
    """Return a BackupStatus with convenient defaults."""
    return BackupStatus(
        has_run=has_run,
        domain=domain,
        step=step,
        substep="",
        error=error,
        warnings=tuple(warnings),
        archive=archive,
        progress_percent=progress,
        backupid=backupid,
        backup_record_id=record_id,
        sleep_time_ms=sleep_time_ms,
        step_number=step_number,
        step_state=None,
        profile_id=1,
    )


def record(
    record_id: int = 7,
    *,
    status_: RecordStatus = RecordStatus.COMPLETE,
    comment: str = "",
    profile_id: int = 1,
    size: int = 1000,
    instep: bool | None = True,
    backupid: str | None = "id-1",
) -> BackupRecord:
    """Return a BackupRecord with convenient defaults."""
    return BackupRecord(
        id=record_id,
        status=status_,
        description="",
        comment=comment,
        origin="json",
        profile_id=profile_id,
        archive_name="site.jpa",
        total_size_bytes=size,
        instep=instep,
        backupid=backupid,
        started=None,
        ended=None,
        multipart=0,
    )
