"""Typed results of the API methods the daemon uses (PROTOCOL.md §5-§6), built tolerantly.

Each ``parse_*`` function takes the envelope's ``data`` of a successful reply and returns a
frozen value, or raises :class:`BadResponseError` naming what is missing. Numbers may come as
strings, ``HasRun`` as 1, ``Error`` as ``false``: all of that is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from .errors import BadResponseError
from .parse import (
    coerce_bool,
    coerce_int,
    coerce_optional_text,
    coerce_text,
)

MIN_API_LEVEL = 330
"""Below this the daemon refuses to run: the step protocol differs too much."""
STEP_FIELDS_API_LEVEL = 340
"""From this level step replies carry backupid, stepNumber, sleepTime, Archive and BackupID."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """getVersion: the API level and the Akeeba Backup release answering."""

    api_level: int
    component: str
    date: str
    edition: str

    @property
    def has_step_fields(self) -> bool:
        """Return True when step replies carry backupid and stepNumber (API >= 340)."""
        return self.api_level >= STEP_FIELDS_API_LEVEL

    def describe(self) -> str:
        """Return a one-line summary for operators, saying what the API level implies."""
        text = f"Akeeba Backup {self.component} ({self.edition}), API level {self.api_level}"
        if self.api_level < MIN_API_LEVEL:
            return text + f": too old, API level {MIN_API_LEVEL} or newer is required"
        if not self.has_step_fields:
            return text + ": legacy server without backupid/stepNumber in step replies"
        return text


@dataclass(frozen=True, slots=True)
class Profile:
    """One backup profile of the site."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class BackupStatus:
    """The status object of startBackup and stepBackup (PROTOCOL.md §6)."""

    has_run: bool
    """True: more steps are needed; False: the backup has just finished (unless ``error``)."""
    domain: str
    step: str
    substep: str
    error: str
    """Non-empty means the backup failed, whatever ``has_run`` says."""
    warnings: tuple[str, ...]
    """The warnings of this reply only on new engines, cumulative on API 330 engines."""
    archive: str | None = None
    progress_percent: int | None = None
    backupid: str | None = None
    backup_record_id: int | None = None
    """``BackupID``: the numeric record id (null in Akeeba Backup 9's final reply)."""
    sleep_time_ms: int | None = None
    step_number: int | None = None
    step_state: str | None = None
    profile_id: int | None = None


class RecordStatus(StrEnum):
    """A backup record's ``status``; ``run`` also covers stuck backups."""

    RUN = "run"
    FAIL = "fail"
    COMPLETE = "complete"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class BackupFile:
    """One part of a backup archive (getBackupInfo ``filenames``)."""

    part: int
    name: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """A backup record from getBackupInfo or listBackups."""

    id: int
    status: RecordStatus
    description: str
    comment: str
    origin: str
    profile_id: int | None
    archive_name: str
    total_size_bytes: int | None
    instep: bool | None
    """True while a step executes (and on finished records); None when the server omits it."""
    backupid: str | None
    started: datetime | None
    ended: datetime | None
    multipart: int | None
    files: tuple[BackupFile, ...] = ()

    @property
    def size_bytes(self) -> int:
        """Return the archive size: ``total_size``, else the sum of the parts' sizes, else 0."""
        if self.total_size_bytes:
            return self.total_size_bytes
        return sum(part.size_bytes for part in self.files)

    @property
    def part_count(self) -> int:
        """Return how many archive parts the record lists (at least 1 for a complete backup)."""
        if self.files:
            return len(self.files)
        return max(1, self.multipart or 0)


def parse_version(data: object) -> VersionInfo:
    """Return getVersion's result; raise BadResponseError without a numeric ``api``."""
    fields = _require_mapping(data, "getVersion")
    level = coerce_int(fields.get("api"))
    if level is None:
        raise BadResponseError("getVersion: the reply has no numeric API level ('api')")
    return VersionInfo(
        api_level=level,
        component=coerce_text(fields.get("component")) or "unknown",
        date=coerce_text(fields.get("date")),
        edition=coerce_text(fields.get("edition")) or "unknown",
    )


def parse_profiles(data: object) -> tuple[Profile, ...]:
    """Return getProfiles' list; raise BadResponseError when it is not a list of ids."""
    items = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise BadResponseError("getProfiles: the reply is not a list")
    profiles = []
    for item in items:
        if not isinstance(item, dict) or coerce_int(item.get("id")) is None:
            raise BadResponseError("getProfiles: a profile has no numeric id")
        profile_id = coerce_int(item["id"])
        assert profile_id is not None
        profiles.append(Profile(id=profile_id, name=coerce_text(item.get("name"))))
    return tuple(profiles)


def parse_status(data: object, method: str) -> BackupStatus:
    """Return the backup status object; raise BadResponseError without a usable ``HasRun``."""
    fields = _require_mapping(data, method)
    has_run = coerce_bool(fields.get("HasRun"))
    if has_run is None:
        raise BadResponseError(f"{method}: the reply has no usable HasRun field")
    progress = coerce_int(fields.get("Progress"))
    record_id = coerce_int(fields.get("BackupID"))
    return BackupStatus(
        has_run=has_run,
        domain=coerce_text(fields.get("Domain")),
        step=coerce_text(fields.get("Step")),
        substep=coerce_text(fields.get("Substep")),
        error=coerce_text(fields.get("Error")).strip(),
        warnings=_parse_warnings(fields.get("Warnings")),
        archive=coerce_optional_text(fields.get("Archive")),
        progress_percent=None if progress is None else min(100, max(0, progress)),
        backupid=coerce_optional_text(fields.get("backupid")),
        backup_record_id=record_id if record_id else None,
        sleep_time_ms=coerce_int(fields.get("sleepTime")),
        step_number=coerce_int(fields.get("stepNumber")),
        step_state=coerce_optional_text(fields.get("stepState")),
        profile_id=coerce_int(fields.get("Profile")),
    )


def parse_record(data: object, method: str = "getBackupInfo") -> BackupRecord:
    """Return one backup record; raise BadResponseError without a numeric ``id``."""
    fields = _require_mapping(data, method)
    record_id = coerce_int(fields.get("id"))
    if record_id is None:
        raise BadResponseError(f"{method}: a backup record has no numeric id")
    status_text = coerce_text(fields.get("status")).lower()
    try:
        status = RecordStatus(status_text)
    except ValueError:
        status = RecordStatus.OTHER
    instep = coerce_bool(fields["instep"]) if "instep" in fields else None
    return BackupRecord(
        id=record_id,
        status=status,
        description=coerce_text(fields.get("description")),
        comment=coerce_text(fields.get("comment")),
        origin=coerce_text(fields.get("origin")),
        profile_id=coerce_int(fields.get("profile_id")),
        archive_name=coerce_text(fields.get("archivename")),
        total_size_bytes=coerce_int(fields.get("total_size")),
        instep=instep,
        backupid=coerce_optional_text(fields.get("backupid")),
        started=_parse_timestamp(fields.get("backupstart")),
        ended=_parse_timestamp(fields.get("backupend")),
        multipart=coerce_int(fields.get("multipart")),
        files=_parse_files(fields.get("filenames")),
    )


def parse_records(data: object) -> tuple[BackupRecord, ...]:
    """Return listBackups' records, newest first as the server sends them."""
    items = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise BadResponseError("listBackups: the reply is not a list")
    return tuple(parse_record(item, "listBackups") for item in items)


def _require_mapping(data: object, method: str) -> dict[str, object]:
    if not isinstance(data, dict):
        raise BadResponseError(f"{method}: the reply's data is not an object")
    return data


def _parse_warnings(value: object) -> tuple[str, ...]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(text for text in (coerce_text(item).strip() for item in value) if text)


def _parse_files(value: object) -> tuple[BackupFile, ...]:
    if not isinstance(value, list):
        return ()
    files: list[BackupFile] = []
    for item in value:
        if isinstance(item, dict):
            files.append(
                BackupFile(
                    part=coerce_int(item.get("part")) or len(files) + 1,
                    name=coerce_text(item.get("name")),
                    size_bytes=max(0, coerce_int(item.get("size")) or 0),
                )
            )
    return tuple(files)


def _parse_timestamp(value: object) -> datetime | None:
    text = coerce_text(value)
    if not text or text.startswith("0000"):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
