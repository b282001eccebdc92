"""Property-based tests of bad input (DESIGN.md §4, §10): arbitrary bytes, truncated JSON, wrong
types and huge values thrown at the reply parser, and at the whole run engine over real HTTP.

The parser must return an envelope or raise BadResponseError; the field parsers must return a
value or raise BadResponseError. A run fed the real captured backup (Akeeba Backup Pro 9.9.3)
with some replies spoilt must end in a verdict (succeeded, or failed with a reason of the
closed set), never raise, never hang, and never put the secret in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akeeba_backupd.akeeba import (
    ApiGeneration,
    BadResponseError,
    ClientSettings,
    FailureReason,
    Platform,
    Secret,
    SiteAddress,
    SiteRemote,
)
from akeeba_backupd.akeeba.models import (
    parse_profiles,
    parse_record,
    parse_records,
    parse_status,
    parse_version,
)
from akeeba_backupd.akeeba.transport import Endpoint, decode_reply
from akeeba_backupd.run import BackupRun, RunOutcome, RunSpec
from tests.fakes import FakeClock, RecordingObserver
from tests.fixture_data import V2_SECRET, by_prefix, span

# Values of every JSON type, with the awkward ones weighted in: huge and negative numbers, NaN
# and infinities (Python's json writes them), long strings, nesting.
WEIRD: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**18, max_value=10**60),
        st.floats(),
        st.text(max_size=40),
        st.sampled_from(["", "0", "1", "-1", "true", "init", "finale", "99999999999999999999"]),
        st.just("x" * 100_000),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

ENDPOINTS = [
    Endpoint("http://example.org/index.php?option=com_akeebabackup", ApiGeneration.V2),
    Endpoint("http://example.org/wp-admin/admin-ajax.php", ApiGeneration.V1),
]
FIELD_PARSERS: list[Callable[[object], object]] = [
    parse_version,
    parse_profiles,
    lambda data: parse_status(data, "stepBackup"),
    lambda data: parse_status(data, "startBackup"),
    parse_record,
    parse_records,
]


# --- the parser --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2000), endpoint=st.sampled_from(ENDPOINTS))
def test_arbitrary_bytes_decode_or_fail_as_bad_response(body: bytes, endpoint: Endpoint) -> None:
    """Any body, decoded as the client decodes it, gives an envelope or BadResponseError."""
    # Anything but BadResponseError propagates and fails the test.
    with contextlib.suppress(BadResponseError):
        decode_reply(endpoint, body.decode("utf-8", errors="replace"), Secret(V2_SECRET))


@st.composite
def spoilt_json(draw: st.DrawFn) -> str:
    """A real captured reply, truncated, padded or with a field given a value of another type."""
    exchange = draw(st.sampled_from([by_prefix("v2", p) for p in ("0001", "0005", "0006", "0026")]))
    body = exchange.body
    how = draw(st.sampled_from(["truncate", "field", "status", "data", "wrap"]))
    if how == "truncate":
        return body[: draw(st.integers(0, len(body)))]
    if how == "wrap":
        return draw(st.text(max_size=50)) + body + draw(st.text(max_size=50))
    envelope = json.loads(body)
    if how == "status":
        envelope["status"] = draw(WEIRD)
    elif how == "data":
        envelope["data"] = draw(WEIRD)
    elif isinstance(envelope.get("data"), dict) and envelope["data"]:
        key = draw(st.sampled_from(sorted(envelope["data"])))
        envelope["data"][key] = draw(WEIRD)
    return json.dumps(envelope)


@settings(max_examples=300, deadline=None)
@given(body=spoilt_json(), parser=st.sampled_from(FIELD_PARSERS))
def test_spoilt_replies_parse_or_fail_as_bad_response(
    body: str, parser: Callable[[object], object]
) -> None:
    """Truncated JSON and fields of the wrong type end in a value or BadResponseError."""
    with contextlib.suppress(BadResponseError):
        parser(decode_reply(ENDPOINTS[0], body, Secret(V2_SECRET)).data)


@settings(max_examples=300, deadline=None)
@given(data=WEIRD, parser=st.sampled_from(FIELD_PARSERS))
def test_any_json_value_parses_or_fails_as_bad_response(
    data: object, parser: Callable[[object], object]
) -> None:
    """Every field parser takes any JSON value: a result or BadResponseError, nothing else."""
    with contextlib.suppress(BadResponseError):
        parser(data)


# --- the run engine over real HTTP -------------------------------------------------------------

START = by_prefix("v2", "0006")
CAPTURED: dict[str, list[str]] = {
    "getversion": [by_prefix("v2", "0001").body],
    "getprofiles": [by_prefix("v2", "0005").body],
    "startbackup": [START.body],
    "stepbackup": [exchange.body for exchange in span("v2", "0007", "0025")],
    "getbackupinfo": [by_prefix("v2", "0026").body],
    "listbackups": [by_prefix("v2", "0027").body],
}
EXHAUSTED = '{"status":500,"data":"A backup error has occurred: the fuzz script is exhausted"}'


@st.composite
def spoilt_script(draw: st.DrawFn) -> dict[str, list[str]]:
    """The captured flow A, per API method, with one to three replies spoilt."""
    script = {method: list(bodies) for method, bodies in CAPTURED.items()}
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from(sorted(script)))
        index = draw(st.integers(0, len(script[method]) - 1))
        body = script[method][index]
        how = draw(st.sampled_from(["text", "bytes", "truncate", "field", "status", "data"]))
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            how = "truncate"  # spoilt already: spoil it further
        if how == "text":
            script[method][index] = draw(st.text(max_size=300))
        elif how == "bytes":
            script[method][index] = draw(st.binary(max_size=300)).decode("latin-1")
        elif how == "truncate":
            script[method][index] = body[: draw(st.integers(0, len(body)))]
        else:
            if how == "status":
                envelope["status"] = draw(WEIRD)
            elif how == "data" or not isinstance(envelope.get("data"), dict):
                envelope["data"] = draw(WEIRD)
            else:
                key = draw(st.sampled_from(sorted(envelope["data"]) or ["HasRun"]))
                envelope["data"][key] = draw(WEIRD)
            script[method][index] = json.dumps(envelope)
    return script


class ScriptedSite:
    """Answers each API method with its next scripted body (the last one again for
    getBackupInfo and listBackups, which a run may ask more than once)."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self._script = script
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        method = request.query.get("method", "").lower()
        bodies = self._script.get(method, [])
        if len(bodies) > 1 or method not in ("getbackupinfo", "listbackups"):
            body = bodies.pop(0) if bodies else EXHAUSTED
        else:
            body = bodies[0] if bodies else EXHAUSTED
        return web.Response(body=body.encode("utf-8", "surrogateescape"), content_type="text/html")


async def _run_against(script: dict[str, list[str]]) -> tuple[Any, int]:
    site = ScriptedSite(script)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", site.handle)
    clock = FakeClock()
    spec = RunSpec(
        site="fuzz",
        schedule="nightly",
        run_id="fuzz",
        profile_id=1,
        description="fuzzed backup",
        retry_backoff_seconds=0.01,
        stall_timeout_seconds=600.0,
        tag=str(START.params["comment"]),
    )
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        address = SiteAddress(str(server.make_url("/")), Platform.JOOMLA, ApiGeneration.V2)
        remote = SiteRemote(
            session, address, Secret(V2_SECRET), clock, ClientSettings(request_timeout_seconds=5)
        )
        run = BackupRun(remote, spec, clock, RecordingObserver())
        # A guard against a loop that never ends, not a timing assertion: a run here takes
        # milliseconds, and the fake clock makes every wait instant.
        result = await asyncio.wait_for(run.execute(), timeout=60)
    return result, site.calls


def test_the_unspoilt_script_succeeds() -> None:
    """The baseline the fuzzing departs from: the captured flow as served here succeeds."""
    result, _ = asyncio.run(_run_against({m: list(b) for m, b in CAPTURED.items()}))
    assert (result.outcome, result.reason) == (RunOutcome.SUCCEEDED, None), result


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=spoilt_script())
def test_a_run_fed_spoilt_replies_ends_in_a_verdict(script: dict[str, list[str]]) -> None:
    """Whatever is spoilt, the run returns succeeded or failed with a known reason, within a
    bounded number of calls, with the secret masked in its message."""
    result, calls = asyncio.run(_run_against(script))
    assert result.outcome in (RunOutcome.SUCCEEDED, RunOutcome.FAILED)
    if result.outcome is RunOutcome.FAILED:
        assert isinstance(result.reason, FailureReason)
        assert result.message
    else:
        assert result.reason is None
    assert V2_SECRET not in result.message
    assert calls < 200
