"""One backup run, from ``startBackup`` (or a saved checkpoint) to exactly one outcome.

The engine applies every rule of DESIGN.md §4 to the replies of a :class:`BackupRemote`, reports
what happens through :class:`RunObserver` events (it owns no metrics) and takes time from an
injected :class:`~akeeba_backupd.clock.Clock`. It never has two calls in flight for one run: the
step loop is strictly sequential, and a step is retried only once the previous one has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from akeeba_backupd.akeeba import (
    AkeebaError,
    BackupRecord,
    BackupStatus,
    DeadlineError,
    FailureReason,
    HttpError,
    InterruptedRunError,
    MisbehavingServerError,
    Profile,
    RecordNotFoundError,
    RecordStatus,
    RemoteError,
    RequestTimeoutError,
    RestartedError,
    StalledError,
    TransportError,
    UnknownProfileError,
    VerifyError,
)
from akeeba_backupd.clock import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SLEEP_SECONDS = 60.0
"""Upper clamp for the server's ``sleepTime``: a bogus value must not park a run for hours."""
SERVER_MAX_STEP_SECONDS = 180.0
"""The longest a step can run on the server (Akeeba's maximum execution time setting)."""
INSTEP_POLL_SECONDS = 5.0
"""How often to ask getBackupInfo whether a timed-out step has ended."""
RECORD_SEARCH_LIMIT = 50
"""How many of the newest records to search for the run's tag."""
INIT_DOMAIN = "init"


class BackupRemote(Protocol):
    """The API calls a run needs (implemented by ``SiteRemote``; faked in tests)."""

    async def get_profiles(self) -> tuple[Profile, ...]:
        """Return the site's backup profiles."""
        ...

    async def start_backup(
        self, profile_id: int, description: str, comment: str, backupid: str | None = None
    ) -> BackupStatus:
        """Start a backup and return its first status."""
        ...

    async def step_backup(self, backupid: str | None) -> BackupStatus:
        """Run one step of the backup and return its status."""
        ...

    async def get_backup_info(self, record_id: int) -> BackupRecord:
        """Return one backup record."""
        ...

    async def list_backups(self, from_index: int = 0, limit: int = 50) -> tuple[BackupRecord, ...]:
        """Return the newest backup records."""
        ...


class RunOutcome(StrEnum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    """The backup completed (and was verified, unless ``verify`` is off); maybe with warnings."""
    FAILED = "failed"
    """The backup did not complete; ``reason`` says why."""
    SUSPENDED = "suspended"
    """Stepping stopped for a shutdown; the checkpoint lets a later process resume the run."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to back up and the limits of one run."""

    site: str
    schedule: str
    run_id: str
    profile_id: int
    description: str
    stall_timeout_seconds: float = 1800.0
    run_timeout_seconds: float = 21600.0
    step_retries: int = 3
    retry_backoff_seconds: float = 10.0
    request_timeout_seconds: float = 300.0
    verify: bool = True
    tag: str = ""
    """The run tag sent as ``comment``; the run's own record is the one carrying it.
    Empty means ``akeeba-backupd run <run_id>``."""

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", f"akeeba-backupd run {self.run_id}")

    @property
    def backupid_hint(self) -> str:
        """Return the backupid offered to v1 servers (they key the run's state by it)."""
        return f"id-abd-{self.run_id}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything needed to continue a run in another process (saved after every step)."""

    site: str
    schedule: str
    run_id: str
    profile_id: int
    started_at: datetime
    backupid: str | None
    backup_record_id: int | None = None
    archive: str | None = None
    last_step_number: int | None = None
    domain: str = INIT_DOMAIN
    progress_percent: int = 0
    replies: int = 0
    left_init: bool = False
    warnings: tuple[str, ...] = ()
    clean: bool = False
    """True when saved by a suspension, between steps: no call of the run can be executing on
    the server. False after a crash, when the last step (or the start) may still be running."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """The single outcome of a run."""

    outcome: RunOutcome
    reason: FailureReason | None
    message: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    warnings: tuple[str, ...] = ()
    archive: str | None = None
    archive_size_bytes: int | None = None
    archive_parts: int | None = None
    backup_record_id: int | None = None
    checkpoint: Checkpoint | None = None


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunBegan:
    """The run began (its fire was taken): nothing has been sent yet, or it is being resumed."""

    site: str
    schedule: str
    run_id: str
    started_at: datetime
    resumed: bool


@dataclass(frozen=True, slots=True)
class StepDone:
    """A start or step reply moved the run's live view."""

    site: str
    schedule: str
    step_number: int
    """The server's stepNumber, or the number of replies so far when it sends none."""
    progress_percent: int
    domain: str
    step: str
    substep: str
    at: datetime
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class WarningRaised:
    """The server reported a warning not seen before in this run."""

    site: str
    schedule: str
    message: str


@dataclass(frozen=True, slots=True)
class StepRetried:
    """A transport failure; the same step will be tried again."""

    site: str
    schedule: str
    attempt: int
    reason: FailureReason
    message: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run reached its outcome."""

    site: str
    schedule: str
    run_id: str
    result: RunResult


RunEvent = RunBegan | StepDone | WarningRaised | StepRetried | RunFinished


class RunObserver(Protocol):
    """Receives a run's events in order; must not raise or block."""

    def on_run_event(self, event: RunEvent) -> None:
        """Handle one event."""
        ...


GATEWAY_TIMEOUT_STATUSES = frozenset({504, 524})
"""HTTP statuses a proxy or CDN sends when the site did not answer in time (524: Cloudflare)."""


def _step_may_still_run(error: TransportError) -> bool:
    """Return True when the failed step may still be executing on the server.

    Besides the client's own in-doubt failures (timeout, connection lost mid-reply), a gateway
    timeout means a proxy gave up waiting while PHP went on with the step: nginx's default
    60 s read timeout is shorter than the steps of a tuned profile.
    """
    if error.in_doubt:
        return True
    return isinstance(error, HttpError) and error.http_status in GATEWAY_TIMEOUT_STATUSES


class CallsForbidden(Exception):
    """The run may not call the site (now): it stops, SUSPENDED and resumable by whoever
    holds it. Raised by a ``before_start`` hook that could not make the run findable, and
    when ``may_call`` says no (the lease may belong to another instance)."""


class _StepEnded(Exception):
    """Internal: the backup is over according to its record, not to a step reply."""

    def __init__(self, record: BackupRecord) -> None:
        super().__init__(f"record #{record.id} is {record.status}")
        self.record = record


@dataclass(slots=True)
class _LiveState:
    backupid: str | None = None
    record_id: int | None = None
    archive: str | None = None
    last_step_number: int | None = None
    domain: str = INIT_DOMAIN
    step: str = ""
    substep: str = ""
    progress_percent: int = 0
    replies: int = 0
    left_init: bool = False
    warnings: list[str] = field(default_factory=list)
    motion: tuple[object, ...] = ()


class BackupRun:
    """Run one backup to its outcome; ``execute`` never raises for remote problems."""

    def __init__(
        self,
        remote: BackupRemote,
        spec: RunSpec,
        clock: Clock,
        observer: RunObserver,
        resume_from: Checkpoint | None = None,
        *,
        checkpoint_age_seconds: float | None = None,
        before_start: Callable[[Checkpoint], Awaitable[None]] | None = None,
        may_call: Callable[[], bool] | None = None,
    ) -> None:
        """Prepare a run of ``spec``, or the continuation of ``resume_from``.

        ``checkpoint_age_seconds`` says how long ago an unclean checkpoint was saved (None:
        unknown), which bounds the wait for a step that may still run on a server that sends no
        record id. ``before_start`` is awaited with the run's first checkpoint just before
        ``startBackup`` is sent, so the run can be found and adopted after a crash.
        ``may_call`` is asked before every call to the site: once it says False (this
        instance's lease on the run may have passed to another instance), the run makes no
        further call and ends SUSPENDED, resumable by whoever holds the run now.
        """
        self.spec = spec
        self._remote = remote
        self._clock = clock
        self._observer = observer
        self._resume_from = resume_from
        self._checkpoint_age_seconds = checkpoint_age_seconds
        self._before_start = before_start
        self._may_call = may_call
        self._state = _LiveState()
        self._started_at = resume_from.started_at if resume_from else clock.now()
        self._deadline = 0.0
        self._last_motion = 0.0
        self._suspend_requested = False
        self._cancel_requested = False

    def request_suspend(self) -> None:
        """Stop after the step in progress and return SUSPENDED with a checkpoint (shutdown)."""
        self._suspend_requested = True

    def request_cancel(self) -> None:
        """Stop after the step in progress and fail the run as ``interrupted`` (operator)."""
        self._cancel_requested = True

    async def execute(self) -> RunResult:
        """Run the backup and return its single outcome (events are sent along the way)."""
        spec = self.spec
        now_monotonic = self._clock.monotonic()
        elapsed = max(0.0, (self._clock.now() - self._started_at).total_seconds())
        self._deadline = now_monotonic - elapsed + spec.run_timeout_seconds
        self._last_motion = now_monotonic
        self._emit(
            RunBegan(
                spec.site,
                spec.schedule,
                spec.run_id,
                self._started_at,
                self._resume_from is not None,
            )
        )
        try:
            try:
                status = await (self._resume() if self._resume_from else self._begin())
                while status.has_run:
                    if self._cancel_requested:
                        raise InterruptedRunError(
                            "cancelled by an operator; the server-side backup is abandoned"
                        )
                    if self._suspend_requested:
                        return self._finish(self._suspended())
                    await self._pause_between_steps(status)
                    status = await self._step()
                record = None
            except _StepEnded as ended:
                record = ended.record
            result = await self._succeed(record)
        except AkeebaError as error:
            result = self._failed(error.reason, error.message)
        except CallsForbidden as forbidden:
            # The last call may have been cut short: the checkpoint is not a clean one.
            result = replace(
                self._result(RunOutcome.SUSPENDED, None, f"stepping stopped: {forbidden}"),
                checkpoint=self.checkpoint(),
            )
        return self._finish(result)

    # --- the phases ----------------------------------------------------------------------

    async def _begin(self) -> BackupStatus:
        spec = self.spec
        profiles = await self._bounded(self._remote.get_profiles())
        if all(profile.id != spec.profile_id for profile in profiles):
            known = ", ".join(str(profile.id) for profile in profiles) or "none"
            raise UnknownProfileError(
                f"profile {spec.profile_id} does not exist on the site (profiles: {known}); "
                "the server would silently back up with default settings"
            )
        if self._before_start is not None:
            await self._before_start(self.checkpoint())
        return await self._start()

    async def _start(self) -> BackupStatus:
        """Send startBackup and return the run's first reply, already applied to the live state.

        When the start reply was lost, that first reply is the adopted run's next step reply:
        it was applied by ``_step``, and applying it twice would count it as a repeated
        stepNumber. So both paths apply here or below, never in the caller.
        """
        spec = self.spec
        attempt = 0
        while True:
            try:
                status = await self._bounded(
                    self._remote.start_backup(
                        spec.profile_id, spec.description, spec.tag, spec.backupid_hint
                    )
                )
            except TransportError as error:
                if error.request_sent:
                    return await self._recover_lost_start(error)
                attempt += 1
                if attempt > spec.step_retries:
                    raise
                await self._retry_pause(attempt, error)
                continue
            self._apply(status)
            return status

    async def _recover_lost_start(self, error: TransportError) -> BackupStatus:
        """The start reply was lost: adopt the backup if the server did start it, else fail.

        A second startBackup would kill the first, so the start is never resent; instead the
        run's record (found by its tag) gives the backupid to step on. A complete record ends
        the run as a success, a failed one as remote_error; without a record, ``error`` is raised.
        """
        try:
            record = await self._find_own_record()
        except (TransportError, RemoteError):
            record = None
        if record is not None and record.status is RecordStatus.COMPLETE:
            # A small site can finish within startBackup itself (the lost reply had HasRun false).
            raise _StepEnded(record)
        if record is not None and record.status is RecordStatus.FAIL:
            raise RemoteError(
                f"the backup failed on the server (record #{record.id}) after: {error.message}"
            )
        if record is None or record.status is not RecordStatus.RUN or not record.backupid:
            raise error
        log.warning(
            "%s/%s: startBackup reply lost (%s); continuing backup record #%d",
            self.spec.site,
            self.spec.schedule,
            error.reason,
            record.id,
        )
        self._state.backupid = record.backupid
        self._state.record_id = record.id
        await self._wait_for_step_end(error)
        return await self._step()

    async def _resume(self) -> BackupStatus:
        checkpoint = self._resume_from
        assert checkpoint is not None
        state = self._state
        state.backupid = checkpoint.backupid
        state.record_id = checkpoint.backup_record_id
        state.archive = checkpoint.archive
        state.last_step_number = checkpoint.last_step_number
        state.domain = checkpoint.domain
        state.progress_percent = checkpoint.progress_percent
        state.replies = checkpoint.replies
        state.left_init = checkpoint.left_init
        state.warnings = list(checkpoint.warnings)
        if checkpoint.replies == 0:
            return await self._resume_before_first_reply()
        try:
            if not checkpoint.clean:
                await self._wait_after_crash()
            status = await self._step()
        except (RestartedError, MisbehavingServerError, RemoteError) as error:
            return await self._settle_resume(error)
        return status

    async def _resume_before_first_reply(self) -> BackupStatus:
        """The process died around startBackup: adopt the backup if it started, else start.

        The run's record, found by its tag, tells: none means the start never reached the
        server (starting now kills nothing of ours); running means adopt it; ended means that
        is the outcome.
        """
        try:
            record = await self._with_retries(self._find_own_record)
        except (TransportError, RemoteError) as error:
            raise InterruptedRunError(
                f"could not tell whether the backup started before the restart: {error.message}"
            ) from None
        if record is None:
            log.info("%s/%s: the start never reached the server; starting now", *self._names())
            return await self._begin()
        if record.status is RecordStatus.COMPLETE:
            raise _StepEnded(record)
        if record.status is not RecordStatus.RUN or not record.backupid:
            raise InterruptedRunError(
                f"the backup started before the restart ended as {record.status} "
                f"(record #{record.id})"
            )
        self._state.backupid = record.backupid
        self._state.record_id = record.id
        await self._wait_after_crash()
        return await self._step()

    async def _wait_after_crash(self) -> None:
        """Return once no step of this run can still be executing on the server.

        After a crash the last step may still run there, and a second one now would corrupt
        the archive: with a record id, wait for ``instep`` 0; without, wait until the step has
        outlived the longest a step can run, counting from when the checkpoint was saved.
        """
        if self._state.record_id is not None:
            await self._wait_for_step_end(
                RequestTimeoutError("the step running before the restart did not end in time")
            )
            return
        age = self._checkpoint_age_seconds
        remaining = SERVER_MAX_STEP_SECONDS - (age if age is not None else 0.0)
        if remaining > 0:
            log.info(
                "%s/%s: waiting %.0f s in case a step is still running on the server",
                *self._names(),
                remaining,
            )
            await self._clock.sleep(remaining)
            self._check_time()

    def _names(self) -> tuple[str, str]:
        return self.spec.site, self.spec.schedule

    async def _settle_resume(self, error: AkeebaError) -> BackupStatus:
        """The server no longer continues the saved run: its record says how it ended."""
        record = await self._own_record_or_none()
        if record is not None and record.status is RecordStatus.COMPLETE:
            raise _StepEnded(record)
        raise InterruptedRunError(f"could not resume the run after a restart: {error.message}")

    async def _step(self) -> BackupStatus:
        spec = self.spec
        attempt = 0
        while True:
            try:
                status = await self._bounded(self._remote.step_backup(self._state.backupid))
            except TransportError as error:
                if isinstance(error, HttpError) and not error.retryable:
                    raise
                attempt += 1
                if attempt > spec.step_retries:
                    return await self._settle_after_retries(error)
                await self._retry_pause(attempt, error)
                if _step_may_still_run(error):
                    await self._wait_for_step_end(error)
                continue
            self._apply(status)
            return status

    async def _settle_after_retries(self, error: TransportError) -> BackupStatus:
        """Retries are exhausted: the record tells whether the backup ended anyway."""
        record = await self._own_record_or_none()
        if record is not None:
            if record.status is RecordStatus.COMPLETE:
                raise _StepEnded(record)
            if record.status is RecordStatus.FAIL:
                raise RemoteError(
                    f"the backup failed on the server (record #{record.id}) after: {error.message}"
                )
        raise error

    async def _succeed(self, record: BackupRecord | None) -> RunResult:
        spec = self.spec
        state = self._state
        if not spec.verify and record is None:
            return self._result(
                RunOutcome.SUCCEEDED, None, self._success_message(), archive=state.archive
            )
        if record is None:
            record = await self._verification_record()
        if record.status is not RecordStatus.COMPLETE:
            raise VerifyError(
                f"backup record #{record.id} has status {record.status}, not complete"
            )
        if record.profile_id is not None and record.profile_id != spec.profile_id:
            raise VerifyError(
                f"backup record #{record.id} used profile {record.profile_id}, "
                f"not {spec.profile_id}"
            )
        if record.size_bytes <= 0:
            raise VerifyError(f"backup record #{record.id} has no archive size (files missing?)")
        return self._result(
            RunOutcome.SUCCEEDED,
            None,
            self._success_message(),
            archive=record.archive_name or state.archive,
            archive_size_bytes=record.size_bytes,
            archive_parts=record.part_count,
            record_id=record.id,
        )

    async def _verification_record(self) -> BackupRecord:
        """Return the run's own record; raise RestartedError when there is none."""
        state = self._state
        if state.record_id is not None:
            try:
                record = await self._with_retries(
                    lambda: self._remote.get_backup_info(state.record_id or 0)
                )
            except RecordNotFoundError:
                raise RestartedError(
                    f"the server has no backup record #{state.record_id} for this run: "
                    "it silently ran another backup"
                ) from None
            if self.spec.tag not in record.comment:
                raise RestartedError(
                    f"backup record #{record.id} belongs to another backup (not tagged with this "
                    "run): the server silently ran another backup"
                )
            return record
        found = await self._with_retries(self._find_own_record)
        if found is None:
            raise RestartedError(
                "no backup record carries this run's tag: the server silently started another "
                "backup instead of the one asked for"
            )
        return found

    # --- reply rules -----------------------------------------------------------------------

    def _apply(self, status: BackupStatus) -> None:
        """Apply one start/step reply to the live state; raise when it fails the run."""
        spec = self.spec
        state = self._state
        if status.error:
            raise RemoteError(f"the backup engine reported an error: {status.error}")
        if status.backupid:
            if state.backupid is None:
                state.backupid = status.backupid
            elif status.backupid != state.backupid:
                raise RestartedError(
                    f"the server switched to another backup (backupid {status.backupid!r} "
                    f"instead of {state.backupid!r})"
                )
        if status.step_number is not None:
            previous = state.last_step_number
            if previous is not None and state.replies > 0:
                if status.has_run and status.step_number <= previous:
                    raise MisbehavingServerError(
                        f"stepNumber went from {previous} to {status.step_number} mid-run"
                    )
                if not status.has_run and status.step_number < previous:
                    raise MisbehavingServerError(
                        f"stepNumber fell from {previous} to {status.step_number} on the last reply"
                    )
            state.last_step_number = status.step_number
        elif state.replies > 0 and state.left_init and status.domain == INIT_DOMAIN:
            raise RestartedError(
                "the server went back to the init phase mid-run: it silently started a new backup"
            )
        if status.domain and status.domain != INIT_DOMAIN:
            state.left_init = True
        if state.record_id is None and status.backup_record_id:
            state.record_id = status.backup_record_id
        if state.archive is None and status.archive:
            state.archive = status.archive
        for message in status.warnings:
            if message not in state.warnings:
                state.warnings.append(message)
                self._emit(WarningRaised(spec.site, spec.schedule, message))
        state.replies += 1
        state.domain = status.domain or state.domain
        state.step = status.step
        state.substep = status.substep
        if status.progress_percent is not None:
            state.progress_percent = status.progress_percent
        motion = (status.step_number, status.domain, status.step, status.progress_percent)
        if motion != state.motion:
            state.motion = motion
            self._last_motion = self._clock.monotonic()
        self._emit(
            StepDone(
                site=spec.site,
                schedule=spec.schedule,
                # Servers below API 340 number no step (v1 numbers only its start reply):
                # then the count of replies stands in, as DESIGN §6 says.
                step_number=status.step_number if status.step_number is not None else state.replies,
                progress_percent=state.progress_percent,
                domain=state.domain,
                step=state.step,
                substep=state.substep,
                at=self._clock.now(),
                checkpoint=self.checkpoint(),
            )
        )

    # --- time, retries, records ----------------------------------------------------------

    async def _pause_between_steps(self, status: BackupStatus) -> None:
        self._check_time()
        sleep_ms = status.sleep_time_ms or 0
        if sleep_ms > 0:
            await self._clock.sleep(min(MAX_SLEEP_SECONDS, sleep_ms / 1000.0))

    async def _retry_pause(self, attempt: int, error: AkeebaError) -> None:
        spec = self.spec
        log.warning(
            "%s/%s: %s (attempt %d of %d): %s",
            spec.site,
            spec.schedule,
            error.reason,
            attempt,
            spec.step_retries,
            error.message,
        )
        self._emit(StepRetried(spec.site, spec.schedule, attempt, error.reason, error.message))
        await self._clock.sleep(spec.retry_backoff_seconds * (2 ** (attempt - 1)))
        self._check_time()

    async def _wait_for_step_end(self, error: TransportError) -> None:
        """Return once the step whose reply was lost has certainly ended on the server.

        Sending the same backupid while that step still runs would corrupt the archive (the
        server has no lock), so poll the record until ``instep`` is 0. Servers that send no
        record id (API < 340) leave nothing to poll: wait until the step has outlived the
        longest a step can run. Raise ``error`` when the step does not end in time.
        """
        if self._state.record_id is None:
            timed_out = isinstance(error, RequestTimeoutError)
            waited = self.spec.request_timeout_seconds if timed_out else 0.0
            if waited < SERVER_MAX_STEP_SECONDS:
                await self._clock.sleep(SERVER_MAX_STEP_SECONDS - waited)
            self._check_time()
            return
        started = self._clock.monotonic()
        wait_limit = max(self.spec.request_timeout_seconds, SERVER_MAX_STEP_SECONDS)
        while True:
            record = await self._own_record_or_none()
            if record is not None:
                if record.status is RecordStatus.COMPLETE:
                    raise _StepEnded(record)
                if record.status is RecordStatus.FAIL:
                    raise RemoteError(f"the backup failed on the server (record #{record.id})")
                if record.instep is not True:
                    return
            if self._clock.monotonic() - started >= wait_limit:
                raise error
            await self._clock.sleep(INSTEP_POLL_SECONDS)
            self._check_time()

    async def _own_record_or_none(self) -> BackupRecord | None:
        """Return the run's record (by BackupID, else by tag), or None when it cannot be read."""
        try:
            if self._state.record_id is not None:
                return await self._bounded(self._remote.get_backup_info(self._state.record_id))
            return await self._find_own_record()
        except (TransportError, RemoteError):
            return None

    async def _find_own_record(self) -> BackupRecord | None:
        """Return the newest record carrying the run's tag, or None."""
        records = await self._bounded(self._remote.list_backups(0, RECORD_SEARCH_LIMIT))
        return next((record for record in records if self.spec.tag in record.comment), None)

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await self._bounded(call())
            except TransportError as error:
                attempt += 1
                if attempt > self.spec.step_retries:
                    raise
                await self._retry_pause(attempt, error)

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Await ``call`` but no longer than the run's deadline and stall limit allow."""
        if self._may_call is not None and not self._may_call():
            if asyncio.iscoroutine(call):
                call.close()  # never sent: no "coroutine was never awaited" warning
            raise CallsForbidden(
                "this instance's lease on the run may have passed to another instance"
            )
        remaining = self._check_time()
        try:
            async with asyncio.timeout(remaining):
                return await call
        except TimeoutError:
            self._check_time(force=True)
            raise

    def _check_time(self, *, force: bool = False) -> float:
        """Return seconds left before the deadline or a stall; raise once none are left."""
        now = self._clock.monotonic()
        stall_left = self._last_motion + self.spec.stall_timeout_seconds - now
        deadline_left = self._deadline - now
        if deadline_left <= 0 or (force and deadline_left <= stall_left):
            raise DeadlineError(
                f"the run exceeded run_timeout ({self.spec.run_timeout_seconds:g} s)"
            )
        if stall_left <= 0 or force:
            raise StalledError(
                f"no progress for {self.spec.stall_timeout_seconds:g} s (stall_timeout)"
            )
        return min(stall_left, deadline_left)

    # --- results ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """Return what a later process needs to resume this run."""
        spec = self.spec
        state = self._state
        return Checkpoint(
            site=spec.site,
            schedule=spec.schedule,
            run_id=spec.run_id,
            profile_id=spec.profile_id,
            started_at=self._started_at,
            backupid=state.backupid,
            backup_record_id=state.record_id,
            archive=state.archive,
            last_step_number=state.last_step_number,
            domain=state.domain,
            progress_percent=state.progress_percent,
            replies=state.replies,
            left_init=state.left_init,
            warnings=tuple(state.warnings),
        )

    def _success_message(self) -> str:
        count = len(self._state.warnings)
        return "backup complete" + (f" with {count} warning(s)" if count else "")

    def _suspended(self) -> RunResult:
        return replace(
            self._result(RunOutcome.SUSPENDED, None, "stepping stopped for shutdown; resumable"),
            checkpoint=replace(self.checkpoint(), clean=True),
        )

    def _failed(self, reason: FailureReason, message: str) -> RunResult:
        return self._result(RunOutcome.FAILED, reason, message, archive=self._state.archive)

    def _result(
        self,
        outcome: RunOutcome,
        reason: FailureReason | None,
        message: str,
        *,
        archive: str | None = None,
        archive_size_bytes: int | None = None,
        archive_parts: int | None = None,
        record_id: int | None = None,
    ) -> RunResult:
        finished = self._clock.now()
        return RunResult(
            outcome=outcome,
            reason=reason,
            message=message,
            started_at=self._started_at,
            finished_at=finished,
            duration_seconds=max(0.0, (finished - self._started_at).total_seconds()),
            warnings=tuple(self._state.warnings),
            archive=archive,
            archive_size_bytes=archive_size_bytes,
            archive_parts=archive_parts,
            backup_record_id=record_id if record_id is not None else self._state.record_id,
        )

    def _finish(self, result: RunResult) -> RunResult:
        spec = self.spec
        self._emit(RunFinished(spec.site, spec.schedule, spec.run_id, result))
        return result

    def _emit(self, event: RunEvent) -> None:
        try:
            self._observer.on_run_event(event)
        except Exception:
            log.exception("run observer failed on %s", type(event).__name__)
