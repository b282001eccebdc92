"""The real-server captures, replayed in order over real HTTP to SiteRemote + BackupRun.

Each test queues the replies the real server gave, in the order the engine must ask for them;
the ReplayServer answers any other API method with HTTP 599, so the sequence of calls the engine
makes is part of what is tested. Where the engine makes a call the capture rig did not (the rig
skipped getProfiles or verified with another method), the reply is taken or built from another
capture of the same server, as the comment at that step says.

The RunSpec's tag is the comment the rig sent with startBackup, so verification finds the
record the server wrote for that backup.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from akeeba_backupd.akeeba import (
    ApiGeneration,
    AuthPlacement,
    ClientSettings,
    FailureReason,
    HttpVerb,
    Platform,
    Secret,
    SiteAddress,
    SiteRemote,
)
from akeeba_backupd.run import BackupRun, RunOutcome, RunResult, RunSpec, StepRetried
from tests.fakes import FakeClock, RecordingObserver
from tests.fixture_data import V1_SECRET, V2_SECRET, Exchange, by_prefix, span
from tests.replay_server import ReplayServer, Reply

V2_ENDPOINT = "/index.php?option=com_akeebabackup&view=Api&format=raw"
V1_ENDPOINT = "/wp-content/plugins/akeebabackupwp/app/index.php?view=json"
V1_OLD_VERSION_WARNING = (
    "Your version of Akeeba Backup is more than 90 days old and most likely already out of "
    "date. Please check if a newer version is published and install it."
)
_NOT_PARAMS = ("option", "view", "format", "method", "_akeebaAuth")


@dataclass
class RecordingReplay(ReplayServer):
    """A ReplayServer that also keeps each request's API method and parameters."""

    requests: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        fields: dict[str, str] = {**request.query, **{k: str(v) for k, v in form.items()}}
        if self.generation == "v2":
            params: dict[str, object] = {
                key: value for key, value in fields.items() if key not in _NOT_PARAMS
            }
            self.requests.append((fields.get("method", ""), params))
        else:
            inner = json.loads(json.loads(fields["json"])["body"])
            self.requests.append((inner["method"], dict(inner.get("data") or {})))
        return await super()._handle(request)

    def methods(self) -> list[str]:
        """Return the API methods requested, in order."""
        return [method for method, _ in self.requests]

    def params_of(self, method: str) -> list[dict[str, object]]:
        """Return the parameters of every call to ``method``."""
        return [params for name, params in self.requests if name == method]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@dataclass
class Replayed:
    """What one replayed run produced."""

    result: RunResult
    observer: RecordingObserver
    server: RecordingReplay
    clock: FakeClock


def replies(exchanges: Iterable[Exchange]) -> list[Reply]:
    """Return the captured replies of ``exchanges``, each checked for its API method."""
    return [Reply.of(exchange) for exchange in exchanges]


async def replay(
    session: aiohttp.ClientSession,
    generation: str,
    queued: list[Reply],
    *,
    verb: HttpVerb = HttpVerb.GET,
    **spec: Any,
) -> Replayed:
    """Serve ``queued`` and run one backup against it through SiteRemote and BackupRun."""
    v2 = generation == "v2"
    server = RecordingReplay(generation, V2_SECRET if v2 else V1_SECRET)
    server.queue(queued)
    clock = FakeClock()
    observer = RecordingObserver()
    settings = ClientSettings(
        verb=verb,
        auth=AuthPlacement.QUERY if v2 and verb is HttpVerb.POST else AuthPlacement.HEADER,
    )
    run_spec = RunSpec(
        **{
            "site": "example",
            "schedule": "nightly",
            "run_id": "replay",
            "profile_id": 1,
            "description": "replayed backup",
            "retry_backoff_seconds": 0.01,
            **spec,
        }
    )
    async with TestServer(server.app()) as test_server:
        address = SiteAddress(
            url=str(test_server.make_url("/")),
            platform=Platform.CUSTOM,
            api=ApiGeneration.V2 if v2 else ApiGeneration.V1,
            endpoint_url=str(test_server.make_url(V2_ENDPOINT if v2 else V1_ENDPOINT)),
        )
        remote = SiteRemote(session, address, Secret(server.secret), clock, settings)
        result = await BackupRun(remote, run_spec, clock, observer).execute()
    assert observer.finished.result is result
    return Replayed(result, observer, server, clock)


def assert_replayed_exactly(replayed: Replayed, queued: list[Reply]) -> None:
    """Every queued reply was asked for, in order, by the right method and with valid auth."""
    assert replayed.server.problems == []
    assert replayed.server.served == [reply.label for reply in queued]
    assert replayed.server.replies == []


def tag_of(start: Exchange) -> str:
    """Return the comment the capture rig sent with startBackup."""
    comment = start.params["comment"]
    assert isinstance(comment, str)
    assert comment
    return comment


# --- v2: Akeeba Backup Professional 9.9.3 (API 600) -------------------------------------------

V2_GET_VERSION = "0001"  # getVersion over GET with header auth: what SiteRemote detects with
V2_GET_PROFILES = "0005"  # A05: the site's one profile (the rig asked only once, in flow A)


async def test_v2_a_full_backup_over_get_succeeds(session: aiohttp.ClientSession) -> None:
    """Flow A: start, 19 steps and the record by BackupID: succeeded with the record's size."""
    start = by_prefix("v2", "0006")
    queued = replies(
        [
            by_prefix("v2", V2_GET_VERSION),
            by_prefix("v2", V2_GET_PROFILES),
            *span("v2", "0006", "0025"),
            by_prefix("v2", "0026"),  # getBackupInfo(1): BackupID from the start reply
        ]
    )
    replayed = await replay(session, "v2", queued, tag=tag_of(start))
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None)
    assert result.archive_size_bytes == 42616947
    assert result.archive == "site-127.0.0.1-20261203-185740utc--tLGJedrWU2Xa1h1.jpa"
    assert (result.archive_parts, result.backup_record_id) == (1, 1)
    assert result.warnings == ()
    steps = replayed.server.params_of("stepBackup")
    assert steps == [{"backupid": "id-20261203-185740-411230"}] * 19
    assert replayed.server.params_of("getBackupInfo") == [{"backup_id": "1"}]
    (sent,) = replayed.server.params_of("startBackup")
    assert (sent["profile"], sent["comment"]) == ("1", tag_of(start))


async def test_v2_f_backup_over_post_keeps_both_warnings(session: aiohttp.ClientSession) -> None:
    """Flow F (POST, query auth): succeeded with exactly the two distinct symlink warnings."""
    start = by_prefix("v2", "0127")
    queued = replies(
        [
            by_prefix("v2", "0004"),  # getVersion over POST with query auth
            # The rig did not call getProfiles in flow F: its flow A answer (same server,
            # captured over GET; the reply does not depend on the verb) stands in.
            by_prefix("v2", V2_GET_PROFILES),
            *span("v2", "0127", "0146"),
            by_prefix("v2", "0147"),  # getBackupInfo(6) over POST
        ]
    )
    replayed = await replay(session, "v2", queued, verb=HttpVerb.POST, tag=tag_of(start))
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None)
    assert result.warnings == (
        "The symlink /var/www/example/administrator/language/en-GB/zz-rig-broken-link-1.ini "
        "points to a file or folder that no longer exists and will NOT be backed up.",
        "The symlink /var/www/example/modules/mod_related_items/zz-rig-broken-link-2.php "
        "points to a file or folder that no longer exists and will NOT be backed up.",
    )
    assert result.message == "backup complete with 2 warning(s)"
    assert (result.archive_size_bytes, result.backup_record_id) == (42617630, 6)


async def test_v2_c_run_killed_by_a_second_start_fails(session: aiohttp.ClientSession) -> None:
    """Flow C: a second startBackup killed run X; its next step gets status 500: remote_error."""
    start = by_prefix("v2", "0052")
    queued = replies(
        [
            by_prefix("v2", V2_GET_VERSION),
            by_prefix("v2", V2_GET_PROFILES),  # flow A's answer: flow C did not ask
            *span("v2", "0052", "0056"),
            # 0057 (Y's startBackup) and 0058 (the rig's listBackups) came from another client.
            by_prefix("v2", "0059"),
        ]
    )
    replayed = await replay(session, "v2", queued, tag=tag_of(start))
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.FAILED, FailureReason.REMOTE_ERROR)
    assert "problem while saving temporary data" in result.message
    assert replayed.observer.of_type(StepRetried) == []


def built_get_backup_info(listing: Exchange, record_id: str) -> Reply:
    """Return a getBackupInfo reply made of one record of a captured listBackups reply.

    Both methods return the same record object on this server (compare 0026 and 0027).
    """
    envelope = json.loads(listing.body)
    (found,) = [item for item in envelope["data"] if item["id"] == record_id]
    return Reply(
        expect_method="getBackupInfo",
        status=200,
        content_type=listing.content_type,
        body=json.dumps({"status": 200, "data": found}),
        label=f"getBackupInfo({record_id}) built from {listing.label}",
    )


async def test_v2_e_database_outage_resumes_and_succeeds(
    session: aiohttp.ClientSession,
) -> None:
    """Flow E: a step answered by Joomla's HTML 500 page is retried, the same run completes."""
    start = by_prefix("v2", "0104")
    queued = replies(
        [
            by_prefix("v2", V2_GET_VERSION),
            by_prefix("v2", V2_GET_PROFILES),  # flow A's answer: flow E did not ask
            *span("v2", "0104", "0111"),  # start, 6 steps, then the step while the db is down
            # 0112 is the rig's getVersion while the db was down: not a call the run makes.
            *span("v2", "0113", "0125"),  # the retried step, then on to the end
        ]
    )
    # The rig verified flow E with listBackups only (0126); the engine asks getBackupInfo(5).
    queued.append(built_get_backup_info(by_prefix("v2", "0126"), "5"))
    replayed = await replay(session, "v2", queued, tag=tag_of(start))
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None)
    assert (result.archive_size_bytes, result.backup_record_id) == (42617314, 5)
    retried = replayed.observer.of_type(StepRetried)
    assert [(event.attempt, event.reason) for event in retried] == [(1, FailureReason.HTTP_ERROR)]
    assert "HTTP 500" in retried[0].message
    steps = replayed.server.params_of("stepBackup")
    assert steps == [{"backupid": "id-20261203-190126-319175"}] * 20


async def test_v2_g_unknown_profile_never_starts(session: aiohttp.ClientSession) -> None:
    """Flow G: profile 99 is not in getProfiles, so no startBackup is sent: unknown_profile."""
    queued = replies(
        [
            by_prefix("v2", V2_GET_VERSION),
            # B23: the getProfiles the rig took just before starting profile 99 (flow G).
            by_prefix("v2", "0051"),
        ]
    )
    replayed = await replay(session, "v2", queued, profile_id=99)
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.FAILED, FailureReason.UNKNOWN_PROFILE)
    assert replayed.server.methods() == ["getVersion", "getProfiles"]


# --- v1: Akeeba Backup Core for WordPress 1.3.4 (API 330) --------------------------------------

V1_GET_VERSION = "001"  # getVersion over GET; the server's answer is the same in every flow
V1_GET_PROFILES_ONE = "002"  # flow A: the site had one profile
V1_GET_PROFILES_THREE = "201"  # flow C on: profiles 1, 2 (broken output dir) and 3 (fast)


async def test_v1_a_full_backup_verified_by_tag(session: aiohttp.ClientSession) -> None:
    """Flow A: no BackupID at API 330, so the record is found by tag in listBackups: succeeded."""
    start = by_prefix("v1", "003")
    # 016 (getBackupInfo) is not queued: without a BackupID the engine has no id to ask for.
    queued = replies(span("v1", V1_GET_VERSION, "015"))
    replayed = await replay(session, "v1", queued, tag=tag_of(start))
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None)
    assert (result.archive_size_bytes, result.backup_record_id) == (24904201, 1)
    assert result.warnings == (V1_OLD_VERSION_WARNING,)
    assert replayed.server.methods()[-1] == "listBackups"
    # The start reply gave no backupid, so steps carry none (the rig sent only the profile).
    assert replayed.server.params_of("stepBackup") == [{}] * 11


async def test_v1_c_silent_restart_is_caught_by_the_tag(session: aiohttp.ClientSession) -> None:
    """Flow C: steps after a start on a broken profile run another backup: restarted."""
    queued = replies(
        [
            by_prefix("v1", V1_GET_VERSION),
            by_prefix("v1", V1_GET_PROFILES_THREE),
            # 202 was the rig reading an older record: not part of this run.
            by_prefix("v1", "203"),  # startBackup on profile 2: accepted
            by_prefix("v1", "204"),  # the first step, silently a new backup on profile 1
            # The rig stopped flow C after one step. Flow D is the same start on the same
            # profile stepped to the end: its steps 2-12 and the listing that follows continue
            # this run (302 matches 204: Domain init, HasRun true).
            *span("v1", "303", "314"),
        ]
    )
    replayed = await replay(session, "v1", queued, profile_id=2, tag="akeeba-backupd run c-1")
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.FAILED, FailureReason.RESTARTED)
    assert replayed.server.methods()[-1] == "listBackups"
    (sent,) = replayed.server.params_of("startBackup")
    assert (sent["profile"], sent["comment"]) == (2, "akeeba-backupd run c-1")


async def test_v1_e_database_outage_resumes_and_succeeds(
    session: aiohttp.ClientSession,
) -> None:
    """Flow E: a step answered HTTP 500 with an empty body is retried and the backup completes."""
    queued = replies(
        [
            by_prefix("v1", V1_GET_VERSION),
            by_prefix("v1", V1_GET_PROFILES_THREE),  # flow E (profile 3) did not ask
            *span("v1", "401", "405"),  # start, 3 steps, the step while the db is down
            # 406 is the rig's getVersion while the db was down: not a call the run makes.
            *span("v1", "407", "415"),
        ]
    )
    # The rig sent no comment with 401, so no record can carry a tag: verification is off and
    # the run stands on its replies alone (416 shows record 8 complete on profile 3).
    replayed = await replay(session, "v1", queued, profile_id=3, verify=False)
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None)
    retried = replayed.observer.of_type(StepRetried)
    assert [(event.attempt, event.reason) for event in retried] == [(1, FailureReason.HTTP_ERROR)]
    # The start reply echoed the backupid the rig chose; every step, the retry too, sent it.
    assert replayed.server.params_of("stepBackup") == [{"backupid": "e-1"}] * 13


async def test_v1_b_run_taken_over_by_a_second_start_is_restarted(
    session: aiohttp.ClientSession,
) -> None:
    """Flow B: another startBackup mid-run; the steps finish the other backup: restarted."""
    queued = replies(
        [
            by_prefix("v1", "112"),  # getVersion over POST
            by_prefix("v1", V1_GET_PROFILES_ONE),  # flow A's answer: flow B did not ask
            *span("v1", "113", "114"),  # startBackup (backupid id2) and its first step
            # 115-117 came from other clients: a bogus and a missing backupid, then the
            # second startBackup, which failed this run's record (#2 in 130).
            *span("v1", "118", "130"),  # id2 stepped to the end, then listBackups
        ]
    )
    # The run's steps completed the second start's backup (#4, also keyed id2); the listing
    # holds no record carrying this run's tag (the rig sent no comment at all).
    replayed = await replay(session, "v1", queued, verb=HttpVerb.POST, tag="akeeba-backupd run b-1")
    assert_replayed_exactly(replayed, queued)
    result = replayed.result
    assert (result.outcome, result.reason) == (RunOutcome.FAILED, FailureReason.RESTARTED)
    assert replayed.server.params_of("stepBackup") == [{"backupid": "id2"}] * 13
