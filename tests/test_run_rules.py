"""Every run rule of DESIGN.md §4, one test each, against the scripted FakeRemote and FakeClock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from akeeba_backupd.akeeba import (
    BackupRecord,
    BadResponseError,
    FailureReason,
    HttpError,
    Profile,
    RecordStatus,
    RemoteError,
    RequestTimeoutError,
    UnreachableError,
)
from akeeba_backupd.run import (
    INSTEP_POLL_SECONDS,
    MAX_SLEEP_SECONDS,
    BackupRun,
    Checkpoint,
    RunBegan,
    RunEvent,
    RunFinished,
    RunOutcome,
    RunResult,
    RunSpec,
    StepDone,
    StepRetried,
    WarningRaised,
)
from tests.fakes import START, FakeClock, FakeRemote, RecordingObserver, Scripted, record, status

TAG = "akeeba-backupd run r1"
SPEC = RunSpec(site="example", schedule="nightly", run_id="r1", profile_id=1, description="b")
COMPLETE = record(7, comment=TAG)
SUCCEEDED = RunOutcome.SUCCEEDED
FAILED = RunOutcome.FAILED


def start_reply(**fields: Any) -> Scripted:
    """Return an Akeeba Backup 9 style startBackup reply (Domain init, stepNumber 2)."""
    return status(**{"domain": "init", "step_number": 2, "progress": 0, **fields})


def final_reply(step_number: int | None = None, **fields: Any) -> Scripted:
    """Return a last reply as Akeeba Backup 9 sends it: HasRun false, BackupID null."""
    return status(**{"has_run": False, "record_id": None, "step_number": step_number, **fields})


def normal_remote(**fields: Any) -> FakeRemote:
    """Return a remote that runs a three-reply v2 backup whose record verifies."""
    defaults: dict[str, Any] = {
        "starts": [start_reply()],
        "steps": [status(step_number=3), final_reply(3)],
        "records": {7: COMPLETE},
    }
    return FakeRemote(**{**defaults, **fields})


async def execute(
    remote: FakeRemote,
    *,
    clock: FakeClock | None = None,
    observer: RecordingObserver | None = None,
    resume_from: Checkpoint | None = None,
    **overrides: Any,
) -> RunResult:
    """Run one BackupRun and check the event stream ends with its single RunFinished."""
    observer = observer if observer is not None else RecordingObserver()
    run = BackupRun(
        remote,
        replace(SPEC, **overrides),
        clock or remote.clock or FakeClock(),
        observer,
        resume_from,
    )
    result = await run.execute()
    assert observer.finished.result is result
    assert observer.events[-1] is observer.finished
    return result


def step_args(remote: FakeRemote) -> list[object]:
    """Return the backupid each stepBackup call carried."""
    return [argument for name, argument in remote.calls if name == "stepBackup"]


# --- reply verdicts ---------------------------------------------------------------------------


async def test_envelope_error_status_fails_as_remote_error() -> None:
    """A step answered with envelope status 500 fails the run as remote_error, without retry."""
    error = RemoteError("stepBackup: API status 500: A backup error has occurred", api_status=500)
    remote = normal_remote(steps=[status(step_number=3), error])
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.REMOTE_ERROR)
    assert "A backup error has occurred" in result.message
    assert remote.methods() == ["getProfiles", "startBackup", "stepBackup", "stepBackup"]


@pytest.mark.parametrize("has_run", [True, False])
async def test_error_field_fails_whatever_hasrun_says(has_run: bool) -> None:
    """A non-empty Error fails the run as remote_error even when HasRun asks for more steps."""
    remote = normal_remote(steps=[status(step_number=3, has_run=has_run, error="Disk full")])
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.REMOTE_ERROR)
    assert "Disk full" in result.message
    assert remote.methods() == ["getProfiles", "startBackup", "stepBackup"]


async def test_hasrun_false_on_start_reply_finishes_after_verify() -> None:
    """A startBackup reply with HasRun false ends the run: no step, then the record verifies."""
    remote = normal_remote(starts=[start_reply(has_run=False)], steps=[])
    result = await execute(remote)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.calls == [
        ("getProfiles", None),
        ("startBackup", (1, "b", TAG, SPEC.backupid_hint)),
        ("getBackupInfo", 7),
    ]


async def test_sleep_time_is_honoured_between_steps() -> None:
    """The server's sleepTime (ms) is waited before the next stepBackup, and only then."""
    clock = FakeClock()
    remote = normal_remote(
        starts=[start_reply(sleep_time_ms=1500)],
        steps=[status(step_number=3, sleep_time_ms=250), final_reply(3, sleep_time_ms=9000)],
    )
    result = await execute(remote, clock=clock)
    assert result.outcome is SUCCEEDED
    assert clock.sleeps == [1.5, 0.25]


async def test_sleep_time_is_clamped() -> None:
    """An absurd sleepTime is clamped to MAX_SLEEP_SECONDS instead of parking the run."""
    clock = FakeClock()
    remote = normal_remote(starts=[start_reply(sleep_time_ms=86_400_000)])
    result = await execute(remote, clock=clock)
    assert result.outcome is SUCCEEDED
    assert clock.sleeps == [MAX_SLEEP_SECONDS]


W1 = "The symlink a points to a file or folder that no longer exists"
W2 = "Your version of Akeeba Backup is more than 90 days old"


@pytest.mark.parametrize(
    "per_reply",
    [
        pytest.param([[], [W1], [W1], [W1, W2], [W1, W2]], id="cumulative-v1"),
        pytest.param([[], [W1], [], [W2], []], id="per-step-v2"),
    ],
)
async def test_distinct_warnings_are_collected_once(per_reply: list[list[str]]) -> None:
    """Cumulative (API 330) and per-step (API 600) warnings give the same distinct set."""
    first, *middle, last = per_reply
    steps: list[Scripted] = [
        status(step_number=3 + index, warnings=warnings) for index, warnings in enumerate(middle)
    ]
    steps.append(final_reply(2 + len(per_reply) - 1, warnings=last))
    observer = RecordingObserver()
    result = await execute(
        normal_remote(starts=[start_reply(warnings=first)], steps=steps), observer=observer
    )
    assert result.outcome is SUCCEEDED
    assert result.warnings == (W1, W2)
    assert [event.message for event in observer.of_type(WarningRaised)] == [W1, W2]
    assert result.message == "backup complete with 2 warning(s)"


async def test_first_archive_and_first_backup_id_are_kept() -> None:
    """The first non-empty Archive and first non-zero BackupID stay, null on the end included."""
    observer = RecordingObserver()
    remote = normal_remote(
        starts=[start_reply(archive=None, record_id=None)],
        steps=[
            status(step_number=3, archive="first.jpa", record_id=7),
            status(step_number=4, archive="second.jpa", record_id=8),
            final_reply(4, archive=""),
        ],
    )
    result = await execute(remote, observer=observer)
    assert result.outcome is SUCCEEDED
    assert remote.calls[-1] == ("getBackupInfo", 7)
    last = observer.of_type(StepDone)[-1].checkpoint
    assert (last.archive, last.backup_record_id) == ("first.jpa", 7)
    assert result.backup_record_id == 7


async def test_backupid_is_echoed_on_every_step() -> None:
    """Every stepBackup carries the backupid the start reply gave."""
    remote = normal_remote(
        starts=[start_reply(backupid="id-20261203-185740-411230")],
        steps=[
            status(step_number=3, backupid="id-20261203-185740-411230"),
            status(step_number=4, backupid=None),
            final_reply(4, backupid="id-20261203-185740-411230"),
        ],
    )
    result = await execute(remote)
    assert result.outcome is SUCCEEDED
    assert step_args(remote) == ["id-20261203-185740-411230"] * 3


async def test_changed_backupid_means_restarted() -> None:
    """A reply carrying another backupid means the server switched backups: restarted."""
    remote = normal_remote(steps=[status(step_number=3), status(step_number=4, backupid="id-2")])
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.RESTARTED)
    assert step_args(remote) == ["id-1", "id-1"]


@pytest.mark.parametrize(
    ("running", "last", "reason"),
    [
        pytest.param([3, 4], 4, None, id="final-repeats"),
        pytest.param([3, 4], 5, None, id="final-increases"),
        pytest.param([5, 9], 9, None, id="gaps-allowed"),
        pytest.param([3, 3], 4, FailureReason.MISBEHAVING_SERVER, id="mid-run-repeat"),
        pytest.param([3, 1], 4, FailureReason.MISBEHAVING_SERVER, id="falls-mid-run"),
        pytest.param([3, 4], 3, FailureReason.MISBEHAVING_SERVER, id="final-falls"),
    ],
)
async def test_step_number_rules(
    running: list[int], last: int, reason: FailureReason | None
) -> None:
    """stepNumber rises strictly while HasRun is true, may repeat on the last reply, never falls."""
    steps: list[Scripted] = [status(step_number=number) for number in running]
    remote = normal_remote(steps=[*steps, final_reply(last)])
    result = await execute(remote)
    assert result.reason is reason
    assert result.outcome is (SUCCEEDED if reason is None else FAILED)
    if reason is not None:
        assert not remote.steps or remote.steps == [final_reply(last)]
        assert "getBackupInfo" not in remote.methods()


def v1_reply(domain: str, *, has_run: bool = True) -> Scripted:
    """Return an API 330 step reply: no backupid, stepNumber, BackupID or Archive."""
    return status(
        domain=domain,
        has_run=has_run,
        backupid=None,
        record_id=None,
        archive=None,
        step_number=None,
    )


async def test_domain_back_to_init_without_step_number_means_restarted() -> None:
    """Without stepNumber, Domain init again after the run left init is a silent restart."""
    remote = FakeRemote(
        starts=[v1_reply("init")],
        steps=[v1_reply("init"), v1_reply("installer"), v1_reply("init"), v1_reply("finale")],
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.RESTARTED)
    assert remote.methods().count("stepBackup") == 3


async def test_several_init_replies_before_leaving_init_are_normal() -> None:
    """An API 330 run stays in init for a few replies: that alone is no restart."""
    remote = FakeRemote(
        starts=[v1_reply("init")],
        steps=[
            v1_reply("init"),
            v1_reply("init"),
            v1_reply("installer"),
            v1_reply("finale", has_run=False),
        ],
        listing=(record(3, comment=TAG),),
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)


async def test_unknown_profile_fails_before_start() -> None:
    """A profile missing from getProfiles fails as unknown_profile and startBackup is never sent."""
    remote = normal_remote(profiles=(Profile(1, "Default"), Profile(2, "Files only")))
    result = await execute(remote, profile_id=99)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.UNKNOWN_PROFILE)
    assert remote.methods() == ["getProfiles"]


# --- transport failures and retries -----------------------------------------------------------


def http_500() -> HttpError:
    """Return the error Joomla's HTML error page maps to (database down)."""
    return HttpError("stepBackup: HTTP 500 Internal Server Error (HTML page)", http_status=500)


async def test_never_two_calls_in_flight_even_with_retries() -> None:
    """Calls never overlap, through retries after errors and timeouts and the instep polling."""
    clock = FakeClock()
    remote = normal_remote(
        clock=clock,
        step_cost_seconds=2.0,
        steps=[
            status(step_number=3),
            http_500(),
            RequestTimeoutError("stepBackup: no reply within 300 s"),
            status(step_number=5),
            final_reply(5),
        ],
        record_script={7: [record(7, status_=RecordStatus.RUN, instep=False)]},
    )
    result = await execute(remote)
    assert result.outcome is SUCCEEDED
    assert remote.max_in_flight == 1
    assert remote.in_flight == 0


async def test_transport_retry_keeps_the_same_backupid() -> None:
    """A step that failed in transport is resent with the same backupid, and the run goes on."""
    observer = RecordingObserver()
    remote = normal_remote(
        steps=[
            status(step_number=3),
            http_500(),
            BadResponseError("stepBackup: the body is not JSON"),
            status(step_number=4),
            final_reply(4),
        ]
    )
    result = await execute(remote, observer=observer)
    assert result.outcome is SUCCEEDED
    assert step_args(remote) == ["id-1"] * 5
    retried = observer.of_type(StepRetried)
    assert [(event.attempt, event.reason) for event in retried] == [
        (1, FailureReason.HTTP_ERROR),
        (2, FailureReason.BAD_RESPONSE),
    ]


async def test_retries_are_bounded_and_backoff_doubles() -> None:
    """A step is sent 1 + step_retries times; each wait doubles, from retry_backoff on."""
    clock = FakeClock()
    remote = normal_remote(
        steps=[http_500() for _ in range(6)],
        records={7: record(7, status_=RecordStatus.RUN, comment=TAG, instep=False)},
    )
    result = await execute(remote, clock=clock, step_retries=3, retry_backoff_seconds=2.0)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.HTTP_ERROR)
    assert remote.methods() == ["getProfiles", "startBackup", *["stepBackup"] * 4, "getBackupInfo"]
    assert clock.sleeps == [2.0, 4.0, 8.0]


async def test_retry_after_timeout_waits_until_the_step_has_ended() -> None:
    """After a timeout, the step is resent only once getBackupInfo shows instep false."""
    clock = FakeClock()
    running = record(7, status_=RecordStatus.RUN, comment=TAG, instep=True)
    between = record(7, status_=RecordStatus.RUN, comment=TAG, instep=False)
    remote = normal_remote(
        steps=[RequestTimeoutError("stepBackup: no reply within 300 s"), final_reply(3)],
        record_script={7: [running, running, between]},
    )
    result = await execute(remote, clock=clock, retry_backoff_seconds=1.0)
    assert result.outcome is SUCCEEDED
    assert remote.methods() == [
        "getProfiles",
        "startBackup",
        "stepBackup",
        "getBackupInfo",
        "getBackupInfo",
        "getBackupInfo",
        "stepBackup",
        "getBackupInfo",
    ]
    assert clock.sleeps == [1.0, INSTEP_POLL_SECONDS, INSTEP_POLL_SECONDS]


@pytest.mark.parametrize("http_status", [504, 524])
async def test_retry_after_gateway_timeout_waits_until_the_step_has_ended(
    http_status: int,
) -> None:
    """A proxy's gateway timeout leaves the step running behind it: wait for instep false too."""
    running = record(7, status_=RecordStatus.RUN, comment=TAG, instep=True)
    between = record(7, status_=RecordStatus.RUN, comment=TAG, instep=False)
    gateway = HttpError(f"stepBackup: HTTP {http_status} Gateway Timeout", http_status=http_status)
    remote = normal_remote(steps=[gateway, final_reply(3)], record_script={7: [running, between]})
    result = await execute(remote)
    assert result.outcome is SUCCEEDED
    assert remote.methods()[2:] == [
        "stepBackup",
        "getBackupInfo",
        "getBackupInfo",
        "stepBackup",
        "getBackupInfo",
    ]


async def test_step_still_running_after_timeout_is_never_resent() -> None:
    """When the timed-out step never ends, the run fails as timeout without sending it again."""
    running = record(7, status_=RecordStatus.RUN, comment=TAG, instep=True)
    remote = normal_remote(
        steps=[RequestTimeoutError("stepBackup: no reply within 300 s")], records={7: running}
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.TIMEOUT)
    assert remote.methods().count("stepBackup") == 1


@pytest.mark.parametrize(
    ("found", "outcome", "reason"),
    [
        pytest.param(COMPLETE, SUCCEEDED, None, id="complete"),
        pytest.param(
            record(7, status_=RecordStatus.FAIL, comment=TAG),
            FAILED,
            FailureReason.REMOTE_ERROR,
            id="fail",
        ),
        pytest.param(
            record(7, status_=RecordStatus.RUN, comment=TAG, instep=False),
            FAILED,
            FailureReason.HTTP_ERROR,
            id="still-run",
        ),
        pytest.param(
            UnreachableError("getBackupInfo: cannot connect"),
            FAILED,
            FailureReason.HTTP_ERROR,
            id="unreachable",
        ),
    ],
)
async def test_exhausted_retries_let_the_record_decide(
    found: BackupRecord | BaseException, outcome: RunOutcome, reason: FailureReason | None
) -> None:
    """Retries exhausted: complete succeeds, fail is remote_error, else the last error's reason."""
    remote = normal_remote(
        steps=[UnreachableError("stepBackup: cannot connect"), http_500()], records={7: found}
    )
    result = await execute(remote, step_retries=1)
    assert (result.outcome, result.reason) == (outcome, reason)
    assert remote.methods().count("stepBackup") == 2
    assert remote.methods()[-1] == "getBackupInfo"


async def test_start_is_retried_when_it_never_reached_the_server() -> None:
    """startBackup is resent after a connect failure (request provably not sent)."""
    clock = FakeClock()
    refused = UnreachableError("startBackup: cannot connect: Connection refused", sent=False)
    remote = normal_remote(starts=[refused, refused, start_reply()])
    result = await execute(remote, clock=clock)
    assert result.outcome is SUCCEEDED
    assert remote.methods().count("startBackup") == 3
    assert clock.sleeps == [10.0, 20.0]


async def test_start_retries_are_bounded() -> None:
    """A site that refuses every connection fails as unreachable after step_retries resends."""
    refused = UnreachableError("startBackup: cannot connect: Connection refused", sent=False)
    remote = normal_remote(starts=[refused] * 5)
    result = await execute(remote, step_retries=2)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.UNREACHABLE)
    assert remote.methods() == ["getProfiles", "startBackup", "startBackup", "startBackup"]


async def test_start_is_never_resent_after_a_timeout() -> None:
    """A timed-out startBackup is not resent; with no record carrying the tag the run fails."""
    remote = normal_remote(
        starts=[RequestTimeoutError("startBackup: no reply"), start_reply()],
        listing=(record(6, comment="akeeba-backupd run r0"),),
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.TIMEOUT)
    assert remote.methods() == ["getProfiles", "startBackup", "listBackups"]


async def test_lost_start_reply_adopts_the_tagged_record() -> None:
    """After a lost start reply, the record carrying the tag gives the backupid to step on."""
    clock = FakeClock()
    adopted = record(7, status_=RecordStatus.RUN, comment=TAG, backupid="id-7", instep=True)
    remote = normal_remote(
        starts=[RequestTimeoutError("startBackup: no reply")],
        steps=[
            status(step_number=3, backupid="id-7"),
            final_reply(3, backupid="id-7"),
        ],
        listing=(adopted, record(6, comment="akeeba-backupd run r0")),
        record_script={7: [adopted, replace(adopted, instep=False)]},
    )
    result = await execute(remote, clock=clock)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.methods() == [
        "getProfiles",
        "startBackup",
        "listBackups",
        "getBackupInfo",
        "getBackupInfo",
        "stepBackup",
        "stepBackup",
        "getBackupInfo",
    ]
    assert step_args(remote) == ["id-7", "id-7"]
    assert result.backup_record_id == 7


@pytest.mark.parametrize(
    ("found", "outcome", "reason"),
    [
        pytest.param(COMPLETE, SUCCEEDED, None, id="complete"),
        pytest.param(
            record(7, status_=RecordStatus.FAIL, comment=TAG),
            FAILED,
            FailureReason.REMOTE_ERROR,
            id="fail",
        ),
    ],
)
async def test_lost_start_reply_of_an_ended_backup_takes_its_record_outcome(
    found: BackupRecord, outcome: RunOutcome, reason: FailureReason | None
) -> None:
    """A lost start reply whose tagged record already ended takes that record's outcome."""
    remote = normal_remote(
        starts=[RequestTimeoutError("startBackup: no reply")], steps=[], listing=(found,)
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (outcome, reason)
    assert "stepBackup" not in remote.methods()
    assert remote.methods().count("startBackup") == 1


# --- time limits ------------------------------------------------------------------------------


async def test_no_progress_for_stall_timeout_means_stalled() -> None:
    """Replies that move nothing for stall_timeout fail the run as stalled."""
    clock = FakeClock()
    same = v1_reply("Packing")
    remote = FakeRemote(starts=[same], steps=[same] * 10, clock=clock, step_cost_seconds=100.0)
    result = await execute(remote, stall_timeout_seconds=250.0)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.STALLED)
    assert remote.methods().count("stepBackup") == 3


async def test_run_past_run_timeout_means_deadline() -> None:
    """A run still stepping (and progressing) past run_timeout fails as deadline."""
    clock = FakeClock()
    remote = normal_remote(
        steps=[status(step_number=number) for number in range(3, 20)],
        clock=clock,
        step_cost_seconds=100.0,
    )
    result = await execute(remote, run_timeout_seconds=350.0)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.DEADLINE)
    assert remote.methods().count("stepBackup") == 2


# --- verification -----------------------------------------------------------------------------


async def test_verified_record_gives_archive_size_and_parts() -> None:
    """A complete record of the right profile with a size records its archive, size and parts."""
    verified = replace(
        COMPLETE, archive_name="site-2026.jpa", total_size_bytes=42616947, multipart=3
    )
    result = await execute(normal_remote(records={7: verified}))
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert result.archive == "site-2026.jpa"
    assert result.archive_size_bytes == 42616947
    assert result.archive_parts == 3
    assert result.backup_record_id == 7


@pytest.mark.parametrize(
    "found",
    [
        pytest.param(replace(COMPLETE, status=RecordStatus.RUN), id="not-complete"),
        pytest.param(replace(COMPLETE, status=RecordStatus.FAIL), id="failed"),
        pytest.param(replace(COMPLETE, profile_id=99), id="other-profile"),
        pytest.param(replace(COMPLETE, total_size_bytes=0), id="no-size"),
    ],
)
async def test_record_not_a_complete_backup_fails_verify(found: BackupRecord) -> None:
    """The run's own record that is not complete, of another profile or empty fails as verify."""
    result = await execute(normal_remote(records={7: found}))
    assert (result.outcome, result.reason) == (FAILED, FailureReason.VERIFY)


@pytest.mark.parametrize(
    "records",
    [
        pytest.param({7: record(7, comment="akeeba-backupd run r0")}, id="foreign-tag"),
        pytest.param({7: record(7, comment="")}, id="untagged"),
        pytest.param({}, id="no-such-record"),
    ],
)
async def test_record_of_another_run_means_restarted(records: dict[int, BackupRecord]) -> None:
    """A record by BackupID that does not carry this run's tag (or is gone) means restarted."""
    result = await execute(normal_remote(records=records))
    assert (result.outcome, result.reason) == (FAILED, FailureReason.RESTARTED)


async def test_without_backup_id_the_record_is_found_by_tag() -> None:
    """Without BackupID (API 330) the newest listBackups record with the tag is verified."""
    remote = FakeRemote(
        starts=[v1_reply("init")],
        steps=[v1_reply("installer"), v1_reply("finale", has_run=False)],
        listing=(record(9, comment=""), record(8, comment=TAG, size=24904201)),
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert (result.backup_record_id, result.archive_size_bytes) == (8, 24904201)
    assert remote.calls[-1][0] == "listBackups"
    assert "getBackupInfo" not in remote.methods()


async def test_without_backup_id_and_no_tagged_record_means_restarted() -> None:
    """Without BackupID and no listed record carrying the tag, the server ran another backup."""
    remote = FakeRemote(
        starts=[v1_reply("init")],
        steps=[v1_reply("installer"), v1_reply("finale", has_run=False)],
        listing=(record(9, comment="", profile_id=1),),
    )
    result = await execute(remote)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.RESTARTED)


async def test_verify_off_skips_verification() -> None:
    """With verify false the run succeeds on the last reply without reading any record."""
    remote = normal_remote(records={})
    result = await execute(remote, verify=False)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert result.archive == "site.jpa"
    assert remote.methods() == ["getProfiles", "startBackup", "stepBackup", "stepBackup"]


# --- suspend, resume, cancel, observers -------------------------------------------------------


class ActingObserver(RecordingObserver):
    """Calls ``act(run)`` once, when the ``after``-th StepDone arrives."""

    def __init__(self, after: int, act: str) -> None:
        super().__init__()
        self.run: BackupRun | None = None
        self._after = after
        self._act = act

    def on_run_event(self, event: RunEvent) -> None:
        """Store the event and act on the chosen StepDone."""
        super().on_run_event(event)
        if isinstance(event, StepDone) and len(self.of_type(StepDone)) == self._after:
            assert self.run is not None
            getattr(self.run, self._act)()


async def run_with(remote: FakeRemote, observer: ActingObserver) -> RunResult:
    """Run with an observer that can reach the run."""
    run = BackupRun(remote, SPEC, FakeClock(), observer)
    observer.run = run
    result = await run.execute()
    assert observer.finished.result is result
    return result


async def test_request_suspend_returns_a_checkpoint() -> None:
    """request_suspend stops after the step in progress and returns SUSPENDED with a checkpoint."""
    observer = ActingObserver(after=2, act="request_suspend")
    remote = normal_remote(
        steps=[status(step_number=3, warnings=[W1]), status(step_number=4), final_reply(4)]
    )
    result = await run_with(remote, observer)
    assert (result.outcome, result.reason) == (RunOutcome.SUSPENDED, None)
    assert remote.methods() == ["getProfiles", "startBackup", "stepBackup"]
    checkpoint = result.checkpoint
    assert checkpoint is not None
    assert (checkpoint.backupid, checkpoint.backup_record_id) == ("id-1", 7)
    assert (checkpoint.last_step_number, checkpoint.replies) == (3, 2)
    assert checkpoint.warnings == (W1,)
    assert checkpoint.left_init


def saved_checkpoint(*, clean: bool = True) -> Checkpoint:
    """Return the checkpoint of a run stopped after its fifth reply (by a shutdown if clean)."""
    return Checkpoint(
        site="example",
        schedule="nightly",
        run_id="r1",
        profile_id=1,
        started_at=START,
        backupid="id-9",
        backup_record_id=7,
        archive="site.jpa",
        last_step_number=6,
        domain="Packing",
        progress_percent=74,
        replies=5,
        left_init=True,
        warnings=(W1,),
        clean=clean,
    )


async def test_resume_continues_stepping_the_saved_backupid() -> None:
    """A resumed run steps the saved backupid at once (no getProfiles, no startBackup)."""
    observer = RecordingObserver()
    remote = FakeRemote(
        steps=[
            status(step_number=7, backupid="id-9", warnings=[W2]),
            final_reply(7, backupid="id-9"),
        ],
        records={7: COMPLETE},
    )
    result = await execute(remote, observer=observer, resume_from=saved_checkpoint())
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.methods() == ["stepBackup", "stepBackup", "getBackupInfo"]
    assert step_args(remote) == ["id-9", "id-9"]
    assert result.warnings == (W1, W2)
    assert observer.of_type(RunBegan)[0].resumed
    assert result.started_at == START


async def test_resume_rejected_but_record_complete_succeeds() -> None:
    """When the server no longer knows the run but its record is complete, the run succeeded."""
    rejected = RemoteError("stepBackup: API status 500: problem while saving temporary data")
    remote = FakeRemote(steps=[rejected], records={7: COMPLETE})
    result = await execute(remote, resume_from=saved_checkpoint())
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.methods() == ["stepBackup", "getBackupInfo"]


@pytest.mark.parametrize(
    "records",
    [
        pytest.param({7: record(7, status_=RecordStatus.FAIL, comment=TAG)}, id="record-failed"),
        pytest.param({}, id="record-gone"),
    ],
)
async def test_resume_rejected_without_complete_record_is_interrupted(
    records: dict[int, BackupRecord],
) -> None:
    """When the server no longer continues the run and its record is not complete: interrupted."""
    rejected = RemoteError("stepBackup: API status 500: problem while saving temporary data")
    remote = FakeRemote(steps=[rejected], records=dict(records))
    result = await execute(remote, resume_from=saved_checkpoint())
    assert (result.outcome, result.reason) == (FAILED, FailureReason.INTERRUPTED)
    assert remote.methods().count("stepBackup") == 1


async def test_request_cancel_fails_as_interrupted() -> None:
    """request_cancel stops stepping and fails the run as interrupted."""
    observer = ActingObserver(after=1, act="request_cancel")
    remote = normal_remote()
    result = await run_with(remote, observer)
    assert (result.outcome, result.reason) == (FAILED, FailureReason.INTERRUPTED)
    assert remote.methods() == ["getProfiles", "startBackup"]


class RaisingObserver:
    """An observer that fails on every event."""

    def __init__(self) -> None:
        self.seen = 0

    def on_run_event(self, event: RunEvent) -> None:
        """Count the event, then fail."""
        self.seen += 1
        raise RuntimeError(f"observer broken on {type(event).__name__}")


async def test_raising_observer_does_not_break_the_run() -> None:
    """An observer that raises on every event leaves the run and its outcome untouched."""
    observer = RaisingObserver()
    remote = normal_remote(steps=[status(step_number=3, warnings=[W1]), final_reply(3)])
    run = BackupRun(remote, SPEC, FakeClock(), observer)
    result = await run.execute()
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    # RunBegan, StepDone x3, WarningRaised, RunFinished: every event was still delivered.
    assert observer.seen == 6


@pytest.mark.parametrize(
    ("remote", "outcome"),
    [
        pytest.param(normal_remote(), SUCCEEDED, id="succeeded"),
        pytest.param(normal_remote(records={}), FAILED, id="failed-verify"),
        pytest.param(normal_remote(profiles=()), FAILED, id="failed-before-start"),
        pytest.param(
            normal_remote(steps=[http_500()] * 4, records={}), FAILED, id="failed-after-retries"
        ),
    ],
)
async def test_exactly_one_run_finished_per_run(remote: FakeRemote, outcome: RunOutcome) -> None:
    """Whatever the outcome, a run emits RunBegan first and exactly one RunFinished, last."""
    observer = RecordingObserver()
    result = await execute(remote, observer=observer)
    assert result.outcome is outcome
    assert isinstance(observer.events[0], RunBegan)
    assert len(observer.of_type(RunFinished)) == 1


async def test_resume_after_crash_waits_for_the_running_step() -> None:
    """After a crash, the resumed run polls getBackupInfo until instep is 0 before stepping."""
    clock = FakeClock()
    remote = FakeRemote(
        steps=[final_reply(7, backupid="id-9")],
        records={7: COMPLETE},
        record_script={
            7: [
                record(7, status_=RecordStatus.RUN, comment=TAG, instep=True),
                record(7, status_=RecordStatus.RUN, comment=TAG, instep=False),
            ]
        },
        clock=clock,
    )
    result = await execute(remote, clock=clock, resume_from=saved_checkpoint(clean=False))
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.methods() == ["getBackupInfo", "getBackupInfo", "stepBackup", "getBackupInfo"]
    assert remote.max_in_flight == 1


async def test_resume_after_crash_finds_the_backup_already_complete() -> None:
    """After a crash during the last step, a complete record ends the run without a step."""
    remote = FakeRemote(records={7: COMPLETE})
    result = await execute(remote, resume_from=saved_checkpoint(clean=False))
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert "stepBackup" not in remote.methods()


async def test_resume_after_crash_without_record_id_waits_out_a_step() -> None:
    """Without a record id (API 330), a crash resume waits until a step cannot still run."""
    clock = FakeClock()
    checkpoint = replace(
        saved_checkpoint(clean=False), backup_record_id=None, last_step_number=None
    )
    remote = FakeRemote(
        steps=[status(backupid=None, record_id=None), final_reply(None, backupid=None)],
        listing=(record(3, comment=TAG),),
    )
    observer = RecordingObserver()
    run = BackupRun(remote, SPEC, clock, observer, checkpoint, checkpoint_age_seconds=30.0)
    result = await run.execute()
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert clock.sleeps[0] == 150.0  # the 180 s a step can last, less the checkpoint's age


async def test_resume_before_the_first_reply_adopts_the_started_backup() -> None:
    """A crash right after startBackup was sent: the tagged record's backup is adopted."""
    checkpoint = replace(
        saved_checkpoint(clean=False),
        backupid=None,
        backup_record_id=None,
        last_step_number=None,
        replies=0,
        left_init=False,
        warnings=(),
    )
    adopted = record(7, status_=RecordStatus.RUN, comment=TAG, instep=False, backupid="id-9")
    remote = FakeRemote(
        steps=[final_reply(3, backupid="id-9")],
        listing=(adopted,),
        records={7: COMPLETE},
        record_script={7: [adopted]},
    )
    result = await execute(remote, resume_from=checkpoint)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert "startBackup" not in remote.methods()
    assert step_args(remote) == ["id-9"]


async def test_resume_before_the_first_reply_starts_when_nothing_started() -> None:
    """A crash before startBackup reached the server: no tagged record, so the run starts."""
    checkpoint = replace(
        saved_checkpoint(clean=False),
        backupid=None,
        backup_record_id=None,
        last_step_number=None,
        replies=0,
        left_init=False,
        warnings=(),
    )
    remote = normal_remote()
    result = await execute(remote, resume_from=checkpoint)
    assert (result.outcome, result.reason) == (SUCCEEDED, None)
    assert remote.methods()[:3] == ["listBackups", "getProfiles", "startBackup"]
    assert remote.methods().count("startBackup") == 1


async def test_before_start_hook_runs_before_startbackup() -> None:
    """The before_start hook gets the run's first checkpoint before startBackup is sent."""
    remote = normal_remote()
    seen: list[tuple[list[str], Checkpoint]] = []

    async def hook(checkpoint: Checkpoint) -> None:
        seen.append((remote.methods(), checkpoint))

    run = BackupRun(remote, SPEC, FakeClock(), RecordingObserver(), before_start=hook)
    result = await run.execute()
    assert result.outcome is SUCCEEDED
    ((methods, checkpoint),) = seen
    assert methods == ["getProfiles"]
    assert (checkpoint.replies, checkpoint.backupid, checkpoint.clean) == (0, None, False)
