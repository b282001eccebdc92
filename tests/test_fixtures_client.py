"""Every real-server capture, replayed over HTTP, decodes into the right result or reason."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from akeeba_backupd.akeeba import (
    AkeebaClient,
    AkeebaError,
    ApiGeneration,
    AuthPlacement,
    BackupRecord,
    BackupStatus,
    ClientSettings,
    Endpoint,
    FailureReason,
    HttpError,
    HttpVerb,
    Profile,
    Secret,
    VersionInfo,
)
from tests.fakes import FakeClock
from tests.fixture_data import V1_SECRET, V2_SECRET, Exchange, exchanges
from tests.replay_server import ReplayServer, Reply

AUTH = FailureReason.AUTH
REMOTE = FailureReason.REMOTE_ERROR
HTTP = FailureReason.HTTP_ERROR

# The reason each error capture must map to (DESIGN.md §4): written out, not derived.
EXPECTED_ERRORS: dict[str, FailureReason] = {
    # v2, Akeeba Backup Pro 9.9.3
    "A10-stepBackup-after-finish": REMOTE,
    "B01-wrong-secret-header": AUTH,
    "B02-wrong-secret-query": AUTH,
    "B03-no-secret-GET": AUTH,
    "B04-no-secret-POST": AUTH,
    "B05-POST-secret-in-body-only": AUTH,
    "B06-header-wrong-query-right": AUTH,
    "B07-unknown-method": REMOTE,
    "B08-missing-method": REMOTE,
    "B10-stepBackup-bogus-backupid": REMOTE,
    "B11-stepBackup-no-backupid": REMOTE,
    "B12-stepBackup-empty-backupid": REMOTE,
    "B13-getBackupInfo-bogus-id": REMOTE,
    "B14-getBackupInfo-no-id": REMOTE,
    "B15-log-method-retired": REMOTE,
    "B16-PUT-verb": REMOTE,
    "B17-POST-method-only-in-query": REMOTE,
    "C05-step-X-after-Y-start": REMOTE,
    "C07-step-X-resume-001": REMOTE,
    "E03-step-while-db-down": HTTP,
    "E04-getVersion-while-db-down": HTTP,
    # v1, Akeeba Backup Core 1.3.4 (API 330)
    "err-wrong-secret": AUTH,
    "err-unknown-method": REMOTE,
    "err-no-json-param": REMOTE,
    "err-malformed-json-param": REMOTE,
    "err-unsupported-encapsulation-99": AUTH,
    "err-no-challenge": AUTH,
    "err-body-is-object-not-string": HTTP,
    "err-getBackupInfo-bogus-id": REMOTE,
    "err-getBackupInfo-no-id": REMOTE,
    "D-err-api-disabled-getVersion": AUTH,
    "E-err-stepBackup-db-down": HTTP,
    "E-err-getVersion-db-down": REMOTE,
}


def _error_key(exchange: Exchange) -> str:
    return exchange.label


def _call(exchange: Exchange) -> tuple[str | None, Callable[[AkeebaClient], Awaitable[object]]]:
    """Return the method the client will call for this capture, and the call."""
    params = exchange.params
    method = (exchange.api_method or "").lower()
    if method == "getprofiles":
        return "getProfiles", lambda client: client.get_profiles()
    if method == "startbackup":
        profile = int(str(params.get("profile", 1)))
        description = str(params.get("description", ""))
        comment = str(params.get("comment", ""))
        return "startBackup", lambda client: client.start_backup(profile, description, comment)
    if method == "stepbackup":
        backupid = str(params["backupid"]) if params.get("backupid") else None
        return "stepBackup", lambda client: client.step_backup(backupid)
    if method == "getbackupinfo":
        record_id = int(str(params.get("backup_id") or 0))
        return "getBackupInfo", lambda client: client.get_backup_info(record_id)
    if method == "listbackups":
        start, limit = int(str(params.get("from", 0))), int(str(params.get("limit", 50)))
        return "listBackups", lambda client: client.list_backups(start, limit)
    if method == "getversion":
        return "getVersion", lambda client: client.get_version()
    # Requests the client cannot make (unknown or missing method, PUT...): decode the reply
    # as if it answered getVersion; the server does not check the method then.
    return None, lambda client: client.get_version()


def _check_result(exchange: Exchange, result: object) -> None:
    """Compare the decoded result with what the capture rig decoded independently."""
    data = exchange.rig_data
    if isinstance(result, VersionInfo):
        assert isinstance(data, dict)
        assert result.api_level == int(data["api"])
        assert result.component == data["component"]
    elif isinstance(result, BackupStatus):
        assert isinstance(data, dict)
        assert result.has_run is bool(data["HasRun"])
        assert result.domain == data["Domain"]
        assert result.error == (data["Error"] or "")
        assert result.warnings == tuple(data["Warnings"])
        assert result.step_number == data.get("stepNumber")
        assert result.backupid == (data.get("backupid") or None)
        assert result.backup_record_id == (data.get("BackupID") or None)
        assert result.progress_percent == data.get("Progress")
        assert result.archive == (data.get("Archive") or None)
    elif isinstance(result, BackupRecord):
        assert isinstance(data, dict)
        assert result.id == int(data["id"])
        assert result.status == data["status"]
        assert result.comment == data["comment"]
        assert result.size_bytes == int(data["total_size"] or 0)
    elif isinstance(result, tuple) and result and isinstance(result[0], Profile):
        assert isinstance(data, list)
        assert [profile.id for profile in result] == [int(item["id"]) for item in data]
    elif isinstance(result, tuple):
        assert isinstance(data, list)
        assert [item.id for item in result] == [int(item["id"]) for item in data]
    else:
        raise AssertionError(f"unexpected result type {type(result)}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _cases(generation: str) -> list[Exchange]:
    return list(exchanges(generation))


@pytest.mark.parametrize(
    "exchange",
    _cases("v2") + _cases("v1"),
    ids=lambda exchange: f"{exchange.generation}:{exchange.name}",
)
async def test_capture_decodes(exchange: Exchange, session: aiohttp.ClientSession) -> None:
    """The client turns each captured reply into the right typed result or failure reason."""
    v2 = exchange.generation == "v2"
    secret = V2_SECRET if v2 else V1_SECRET
    replay = ReplayServer(exchange.generation, secret)
    expect_method, call = _call(exchange)
    replay.queue([Reply.of(exchange, check_method=expect_method is not None)])
    async with TestServer(replay.app()) as server:
        endpoint = Endpoint(
            str(server.make_url("/index.php?option=com_akeebabackup&view=Api&format=raw")),
            ApiGeneration.V2 if v2 else ApiGeneration.V1,
        )
        settings = ClientSettings(
            verb=HttpVerb.POST if exchange.http_verb == "POST" else HttpVerb.GET,
            auth=AuthPlacement.QUERY
            if v2 and exchange.http_verb == "POST"
            else AuthPlacement.HEADER,
        )
        client = AkeebaClient(session, endpoint, Secret(secret), FakeClock(), settings)
        expected_reason = EXPECTED_ERRORS.get(_error_key(exchange))
        if expected_reason is None:
            _check_result(exchange, await call(client))
        else:
            with pytest.raises(AkeebaError) as caught:
                await call(client)
            assert caught.value.reason is expected_reason, caught.value.message
            assert secret not in str(caught.value)
            if expected_reason is HTTP:
                assert isinstance(caught.value, HttpError)
                assert caught.value.http_status == exchange.status
    assert replay.problems == []
    assert replay.served == [exchange.label]


def test_every_error_capture_is_listed() -> None:
    """Each capture whose envelope is not status 200 (or that has none) has an expected reason."""
    unlisted = [
        exchange.label
        for generation in ("v2", "v1")
        for exchange in exchanges(generation)
        if exchange.rig_status != 200 and _error_key(exchange) not in EXPECTED_ERRORS
    ]
    assert unlisted == []
