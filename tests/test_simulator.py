"""The simulator replays the real-server captures faithfully, and every fault it injects drives
the real client and run engine (over real HTTP) to the outcome DESIGN.md §4 prescribes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from akeeba_backupd.akeeba import (
    ClientSettings,
    FailureReason,
    Platform,
    Secret,
    SiteAddress,
    SiteRemote,
)
from akeeba_backupd.clock import Clock, SystemClock
from akeeba_backupd.run import (
    BackupRun,
    RunEvent,
    RunOutcome,
    RunResult,
    RunSpec,
    StepDone,
    StepRetried,
)
from akeeba_backupd.simulator import Faults, Simulator, SiteSpec
from tests.fakes import FakeClock, RecordingObserver
from tests.fixture_data import V1_DIR, V1_SECRET, V2_DIR, V2_SECRET

SECRET = "sim-test-secret"
V1_OLD_WARNING = (
    "Your version of Akeeba Backup is more than 90 days old and most likely already out of "
    "date. Please check if a newer version is published and install it."
)


# --- shared helpers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    *specs: SiteSpec, now: Callable[[], datetime] | None = None
) -> AsyncIterator[Simulator]:
    """Run a simulator with ``specs`` on an ephemeral loopback port for the block."""
    simulator = Simulator(specs, now=now, seed=7)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class QuickClock:
    """Real time, except that sleeps take ``scale`` of their length while the clock counts all."""

    def __init__(self, scale: float = 0.0) -> None:
        self._real = SystemClock()
        self._scale = scale
        self._skipped = 0.0

    def now(self) -> datetime:
        """Return the real UTC time plus every skipped second."""
        return self._real.now() + timedelta(seconds=self._skipped)

    def monotonic(self) -> float:
        """Return the real monotonic time plus every skipped second."""
        return self._real.monotonic() + self._skipped

    async def sleep(self, seconds: float) -> None:
        """Sleep ``scale`` of ``seconds`` for real and skip the rest."""
        seconds = max(0.0, seconds)
        real = seconds * self._scale
        self._skipped += seconds - real
        await self._real.sleep(real)


class HookObserver(RecordingObserver):
    """Records events and calls ``hook`` on each (to change faults mid-run)."""

    def __init__(self, hook: Callable[[RunEvent], None] | None = None) -> None:
        super().__init__()
        self.hook = hook

    def on_run_event(self, event: RunEvent) -> None:
        """Store the event, then run the hook."""
        super().on_run_event(event)
        if self.hook is not None:
            self.hook(event)


# --- 1. fidelity: replay the captured requests, compare the answers ---------------------------


@dataclass(frozen=True)
class Capture:
    """One captured exchange, as sent and as answered."""

    name: str
    verb: str
    target: str
    """Path and query after the site root, exactly as sent (already URL-encoded)."""
    headers: dict[str, str]
    body: str | None
    status: int
    content_type: str
    text: str


def _capture(directory: Path, prefix: str) -> Capture:
    (path,) = directory.glob(f"{prefix}-*.json")
    raw = json.loads(path.read_text())
    request, response = raw["request"], raw["response"]
    target = request["url"].split("/", 3)[3]
    body = request.get("body") if "body" in request else request.get("form_body")
    content_type = next(v for k, v in response["headers"] if k.lower() == "content-type")
    return Capture(
        name=path.stem,
        verb=request["method"],
        target=target,
        headers=dict(request.get("headers") or {}),
        body=body,
        status=response["status"],
        content_type=content_type,
        text=response["body"] or "",
    )


def _captures(directory: Path, first: int, last: int, width: int) -> list[Capture]:
    return [
        _capture(directory, f"{number:0{width}d}")
        for number in range(first, last + 1)
        if list(directory.glob(f"{number:0{width}d}-*.json"))
    ]


@dataclass(frozen=True)
class Answer:
    """What the simulator answered to a replayed request."""

    status: int
    content_type: str
    text: str


async def _replay(
    session: aiohttp.ClientSession, simulator: Simulator, site: str, capture: Capture
) -> Answer:
    url = URL(simulator.base_url(site) + capture.target, encoded=True)
    async with session.request(
        capture.verb,
        url,
        headers=capture.headers,
        data=None if capture.body is None else capture.body.encode(),
        skip_auto_headers=("Accept", "User-Agent", "Content-Type"),
    ) as response:
        return Answer(response.status, response.headers["Content-Type"], await response.text())


_TITLE = re.compile(r"<title>.*?</title>")
_ARCHIVE_SUFFIX = re.compile(r"(utc-)[A-Za-z0-9_-]{16}(\.jpa)")
_BACKUPEND = re.compile(r'(backupend\\*":\\*")[0-9: -]+')
_SIZES = re.compile(r'((?:total_size|size)\\*":\\*"?)\d+')


def _normalized(text: str) -> str:
    """Blank what legitimately differs between runs: archive suffixes, end times, sizes."""
    text = _ARCHIVE_SUFFIX.sub(r"\1SUFFIX\2", text)
    text = _BACKUPEND.sub(r"\1T", text)
    return _SIZES.sub(r"\1N", text)


def _moment_of(backupid: str) -> datetime:
    """Return the time an Akeeba Backup 9 ``backupid`` (``id-YYYYMMDD-HHMMSS-micro``) encodes."""
    return datetime.strptime(backupid, "id-%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC)


class Wall:
    """A settable wall clock for the simulator, so its ids and dates match the captures'."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def follow(self, capture: Capture) -> None:
        """Move to the time of a startBackup reply's backupid, if the capture holds one."""
        match = re.search(r'"backupid":"(id-\d{8}-\d{6}-\d{6})"', capture.text)
        if match and '"Domain":"init"' in capture.text:
            self.moment = _moment_of(match.group(1))


def _mismatch(capture: Capture, answer: Answer) -> str | None:
    if answer.status != capture.status or answer.content_type != capture.content_type:
        return (
            f"{capture.name}: HTTP {answer.status} {answer.content_type!r}, captured "
            f"{capture.status} {capture.content_type!r}"
        )
    if capture.content_type.startswith("text/html") and capture.text.startswith("<!DOCTYPE"):
        # Joomla's error page: the simulator sends it without its 15 kB of inline translations
        if _TITLE.findall(answer.text) != _TITLE.findall(capture.text):
            return f"{capture.name}: another error page: {answer.text[:300]}"
        return None
    if _normalized(answer.text) != _normalized(capture.text):
        return f"{capture.name}:\n  sim: {answer.text[:600]}\n  cap: {capture.text[:600]}"
    return None


async def test_v2_replay_of_every_sequential_capture_matches_byte_for_byte() -> None:
    """Replaying flows A-G of the Akeeba Backup 9 captures gets the captured bodies back."""
    wall = Wall(datetime(2026, 12, 3, 18, 57, 40, tzinfo=UTC))
    spec = SiteSpec(name="j5", api="v2", platform="joomla", secret=V2_SECRET, steps=19)
    first_warning = (
        "The symlink /var/www/example/administrator/language/en-GB/zz-rig-broken-link-1.ini "
        "points to a file or folder that no longer exists and will NOT be backed up."
    )
    second_warning = (
        "The symlink /var/www/example/modules/mod_related_items/zz-rig-broken-link-2.php points "
        "to a file or folder that no longer exists and will NOT be backed up."
    )
    setup: dict[int, dict[str, Any]] = {
        87: {"step_seconds": 0.05},  # D03/D04: the pairs overlap on the server
        91: {"step_seconds": 0.0},
        127: {"warnings": ((7, first_warning), (15, second_warning))},
    }
    captures = _captures(V2_DIR, 1, 170, 4)
    problems: list[str] = []
    async with serving(spec, now=wall) as simulator, aiohttp.ClientSession() as session:
        index = 0
        while index < len(captures):
            capture = captures[index]
            number = int(capture.name[:4])
            if number in setup:
                simulator.update_site("j5", **setup[number])
            if number == 111:  # E03: the database is down for this step only
                simulator.set_faults("j5", db_down_at_step=7, fail_count=1)
            if number == 112:  # E04: getVersion while the database is down: not simulated
                simulator.set_faults("j5", db_down_at_step=None)
                index += 1
                continue
            wall.follow(capture)
            if "concurrent-pair" in capture.name:
                pair = captures[index : index + 2]
                answers = await asyncio.gather(
                    *(_replay(session, simulator, "j5", item) for item in pair)
                )
                problems += [
                    m for c, a in zip(pair, answers, strict=True) if (m := _mismatch(c, a))
                ]
                index += 2
                continue
            answer = await _replay(session, simulator, "j5", capture)
            if (problem := _mismatch(capture, answer)) is not None:
                problems.append(problem)
            index += 1
        site = simulator.site("j5")
        assert site.concurrent_step_violations == 2
        assert [record.get("corrupt", False) for record in site.records] == [
            False,
            False,
            False,
            True,
            False,
            False,
            False,
        ]
    assert problems == [], "\n".join(problems)


async def test_v1_replay_of_flow_a_and_the_stateless_errors_matches_byte_for_byte() -> None:
    """Replaying the API 330 full backup (001-016) and error cases (101-109) gets the bodies."""
    wall = Wall(datetime(2026, 12, 3, 18, 37, 55, tzinfo=UTC))
    spec = SiteSpec(
        name="wp",
        api="v1",
        platform="wordpress",
        secret=V1_SECRET,
        steps=11,
        warnings=((1, V1_OLD_WARNING),),
    )
    problems: list[str] = []
    async with serving(spec, now=wall) as simulator, aiohttp.ClientSession() as session:
        for capture in [*_captures(V1_DIR, 1, 16, 3), *_captures(V1_DIR, 101, 111, 3)]:
            answer = await _replay(session, simulator, "wp", capture)
            if (problem := _mismatch(capture, answer)) is not None:
                problems.append(problem)
    assert problems == [], "\n".join(problems)


# --- 1b. fidelity: the structure of a full backup, driven fresh --------------------------------


async def _v2(
    session: aiohttp.ClientSession, simulator: Simulator, site: str, method: str, **params: Any
) -> tuple[aiohttp.ClientResponse, str, dict[str, Any]]:
    url = simulator.base_url(site) + "index.php"
    query = {"option": "com_akeebabackup", "view": "Api", "format": "raw", "method": method}
    query.update({key: str(value) for key, value in params.items()})
    async with session.get(url, params=query, headers={"X-Akeeba-Auth": SECRET}) as response:
        text = await response.text()
    return response, text, json.loads(text)


def _data_of(directory: Path, first: int, last: int, width: int, v1: bool) -> list[Any]:
    out = []
    for capture in _captures(directory, first, last, width):
        text = capture.text
        if v1:
            envelope = json.loads(text[3:-3])
            out.append(json.loads(envelope["body"]["data"]))
        else:
            out.append(json.loads(text)["data"])
    return out


def _shape(value: Any) -> Any:
    """Return the keys (in order) and value types of a reply's data, recursively."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return sorted({json.dumps(_shape(item)) for item in value})
    return type(value).__name__


async def test_v2_fresh_backup_has_the_captured_shapes_and_sequences() -> None:
    """A fresh v2 backup shows the captured keys, types, Domain/stepNumber/BackupID sequences."""
    captured = _data_of(V2_DIR, 6, 26, 4, v1=False)
    async with (
        serving(SiteSpec(name="s", secret=SECRET)) as simulator,
        aiohttp.ClientSession() as session,
    ):
        response, _, start = await _v2(session, simulator, "s", "startBackup", profile=1)
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        replies = [start["data"]]
        backupid = start["data"]["backupid"]
        while replies[-1]["HasRun"]:
            _, _, step = await _v2(session, simulator, "s", "stepBackup", backupid=backupid)
            assert step["status"] == 200
            replies.append(step["data"])
        record_id = replies[0]["BackupID"]
        _, _, info = await _v2(session, simulator, "s", "getBackupInfo", backup_id=record_id)
    assert len(replies) == len(captured) - 1 == 20
    assert [_shape(reply) for reply in replies] == [_shape(item) for item in captured[:-1]]
    assert _shape(info["data"]) == _shape(captured[-1])
    for key in ("Domain", "Step", "Progress", "stepNumber", "stepState", "HasRun", "sleepTime"):
        assert [reply[key] for reply in replies] == [item[key] for item in captured[:-1]], key
    assert [reply["stepNumber"] for reply in replies][:3] == [2, 3, 4]
    assert replies[-1]["stepNumber"] == replies[-2]["stepNumber"]
    assert [reply["BackupID"] for reply in replies] == [record_id] * 19 + [None]
    assert isinstance(record_id, int)
    assert {reply["Archive"] for reply in replies} == {start["data"]["Archive"]}
    assert re.fullmatch(r"site-127\.0\.0\.1-\d{8}-\d{6}utc-[\w-]{16}\.jpa", replies[0]["Archive"])
    assert {reply["backupid"] for reply in replies} == {backupid}
    assert re.fullmatch(r"id-\d{8}-\d{6}-\d{6}", backupid)
    assert sorted(set(r["Domain"] for r in replies)) == sorted(
        {"init", "installer", "PackDB", "Packing", "finale"}
    )
    assert info["data"]["status"] == "complete"
    assert info["data"]["instep"] == "1"
    assert all(isinstance(info["data"][key], str) for key in ("id", "total_size", "profile_id"))


async def test_v1_fresh_backup_has_the_captured_shapes_types_and_cumulative_warnings() -> None:
    """A fresh v1 backup: HasRun 1 then bools, Error "" then false, seven-key step replies."""
    captured = _data_of(V1_DIR, 3, 14, 3, v1=True)
    spec = SiteSpec(
        name="old",
        api="v1",
        platform="wordpress",
        secret=SECRET,
        steps=11,
        warnings=((1, "first"), (4, "second")),
    )
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        client = _V1(session, simulator, "old")
        start = await client.call("startBackup", {"profile": 1, "description": "d"})
        replies = [start]
        while replies[-1]["HasRun"]:
            replies.append(await client.call("stepBackup", {}))
        listing = await client.call("listBackups", {"from": 0, "limit": 50})
        info = await client.call("getBackupInfo", {"backup_id": listing[0]["id"]})
        assert client.content_types == {"text/html; charset=UTF-8"}
    assert [_shape(reply) for reply in replies] == [_shape(item) for item in captured]
    assert start["HasRun"] == 1
    assert start["HasRun"] is not True
    assert start["Error"] == ""
    assert start["BackupID"] is None
    assert start["backupid"] is None
    assert all(reply["Error"] is False for reply in replies[1:])
    assert all(isinstance(reply["HasRun"], bool) for reply in replies[1:])
    absent = {"backupid", "stepNumber", "sleepTime", "Archive", "BackupID"}
    assert all(not absent & reply.keys() for reply in replies[1:])
    for key in ("Domain", "Step", "Progress", "HasRun"):
        assert [reply[key] for reply in replies] == [item[key] for item in captured], key
    assert [reply["Warnings"] for reply in replies[:6]] == [
        [],
        ["first"],
        ["first"],
        ["first"],
        ["first", "second"],
        ["first", "second"],
    ]
    assert _shape(info) == _shape(_data_of(V1_DIR, 16, 16, 3, v1=True)[0])
    assert _shape(listing) == _shape(_data_of(V1_DIR, 15, 15, 3, v1=True)[0])
    assert info["status"] == "complete"
    assert info["id"] == "1"


async def test_v2_warnings_come_in_exactly_one_reply_each() -> None:
    """v2 sends each warning in the one reply of its step, never again (capture F)."""
    spec = SiteSpec(name="s", secret=SECRET, steps=5, warnings=((0, "w0"), (2, "w2")))
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        _, _, start = await _v2(session, simulator, "s", "startBackup")
        replies = [start["data"]]
        while replies[-1]["HasRun"]:
            _, _, step = await _v2(
                session, simulator, "s", "stepBackup", backupid=start["data"]["backupid"]
            )
            replies.append(step["data"])
    assert [reply["Warnings"] for reply in replies] == [["w0"], [], ["w2"], [], [], []]


class _V1:
    """A raw v1 caller (our own encoding, independent of the daemon's client)."""

    def __init__(self, session: aiohttp.ClientSession, simulator: Simulator, site: str) -> None:
        self.session = session
        self.url = simulator.base_url(site) + "wp-content/plugins/akeebabackupwp/app/index.php"
        self.content_types: set[str] = set()

    async def raw(self, method: str, data: dict[str, Any], secret: str = SECRET) -> tuple[int, str]:
        import hashlib

        salt = "abcdef0123456789"
        digest = hashlib.md5((salt + secret).encode()).hexdigest()
        body = json.dumps({"challenge": f"{salt}:{digest}", "method": method, "data": data})
        params = {"view": "json", "json": json.dumps({"encapsulation": 1, "body": body})}
        async with self.session.get(self.url, params=params) as response:
            self.content_types.add(response.headers["Content-Type"])
            return response.status, await response.text()

    async def envelope(
        self, method: str, data: dict[str, Any], secret: str = SECRET
    ) -> tuple[int, Any]:
        status, text = await self.raw(method, data, secret)
        assert status == 200, text[:200]
        assert text.startswith("###"), text[:200]
        assert text.endswith("###"), text[:200]
        body = json.loads(text[3:-3])["body"]
        assert isinstance(body["data"], str)  # encoded a second time
        return body["status"], json.loads(body["data"])

    async def call(self, method: str, data: dict[str, Any]) -> Any:
        status, decoded = await self.envelope(method, data)
        assert status == 200, decoded
        return decoded


async def test_v2_second_start_silently_fails_the_first() -> None:
    """A second startBackup fails the running backup; stepping it then gives the 500 message."""
    async with (
        serving(SiteSpec(name="s", secret=SECRET, steps=6)) as simulator,
        aiohttp.ClientSession() as session,
    ):
        _, _, first = await _v2(session, simulator, "s", "startBackup", description="X")
        x = first["data"]["backupid"]
        await _v2(session, simulator, "s", "stepBackup", backupid=x)
        _, _, second = await _v2(session, simulator, "s", "startBackup", description="Y")
        assert second["status"] == 200
        _, _, listing = await _v2(session, simulator, "s", "listBackups")
        _, text, stale = await _v2(session, simulator, "s", "stepBackup", backupid=x)
        _, _, other = await _v2(
            session, simulator, "s", "stepBackup", backupid=second["data"]["backupid"]
        )
    assert [(r["description"], r["status"], r["meta"]) for r in listing["data"]] == [
        ("Y", "run", "pending"),
        ("X", "fail", "fail"),
    ]
    assert listing["data"][1]["remote_filename"] == "NULL"
    assert text == _capture(V2_DIR, "0059").text
    assert stale["status"] == 500
    assert other["status"] == 200
    assert other["data"]["Domain"] == "installer"


async def test_v2_step_errors_have_the_captured_statuses() -> None:
    """Bogus backupid → 500, missing → status 0, bogus record → 404, unknown method → 405."""
    async with (
        serving(SiteSpec(name="s", secret=SECRET)) as simulator,
        aiohttp.ClientSession() as session,
    ):
        answers = []
        for method, params in (
            ("stepBackup", {"backupid": "id-20990101-000000-000000"}),
            ("stepBackup", {}),
            ("getBackupInfo", {"backup_id": 999999}),
            ("noSuchMethod", {}),
        ):
            answers.append((await _v2(session, simulator, "s", method, **params))[2])
    assert [answer["status"] for answer in answers] == [500, 0, 404, 405]
    assert "problem while saving temporary data" in answers[0]["data"]
    assert "MANDATORY since May 2016" in answers[1]["data"]
    assert answers[2]["data"] == "Invalid backup record identifier"
    assert answers[3]["data"] == "Invalid method noSuchMethod"


async def test_v2_database_down_is_an_html_500_and_the_step_resumes_after() -> None:
    """With the database down a step gets Joomla's HTML 500 page; the retry continues the run."""
    spec = SiteSpec(name="s", secret=SECRET, steps=6, faults=Faults(db_down_at_step=2))
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        _, _, start = await _v2(session, simulator, "s", "startBackup")
        backupid = start["data"]["backupid"]
        _, _, one = await _v2(session, simulator, "s", "stepBackup", backupid=backupid)
        url = simulator.base_url("s") + "index.php"
        query = {
            "option": "com_akeebabackup",
            "view": "Api",
            "method": "stepBackup",
            "backupid": backupid,
        }
        async with session.get(url, params=query, headers={"X-Akeeba-Auth": SECRET}) as response:
            down = (response.status, response.headers["Content-Type"], await response.text())
        _, _, two = await _v2(session, simulator, "s", "stepBackup", backupid=backupid)
    captured = _capture(V2_DIR, "0111")
    assert down[:2] == (500, captured.content_type)
    assert down[2].startswith(captured.text[:400])
    assert two["data"]["stepNumber"] == one["data"]["stepNumber"] + 1


async def test_v1_errors_have_the_captured_statuses_and_bodies() -> None:
    """v1: wrong secret 401, API off 503, database down HTTP 500 with an empty body."""
    spec = SiteSpec(name="old", api="v1", platform="wordpress", secret=SECRET, steps=4)
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        client = _V1(session, simulator, "old")
        wrong = await client.raw("getVersion", {}, secret="nope")
        simulator.set_faults("old", api_disabled=True)
        disabled = await client.raw("getVersion", {})
        simulator.set_faults("old", api_disabled=False, db_down_at_step=2)
        await client.call("startBackup", {"backupid": "k"})
        await client.call("stepBackup", {"backupid": "k"})
        down = await client.raw("stepBackup", {"backupid": "k"})
        after = await client.call("stepBackup", {"backupid": "k"})
    assert wrong == (200, _capture(V1_DIR, "101").text)
    assert disabled == (200, _capture(V1_DIR, "315").text)
    assert down == (500, "")
    assert after["Domain"] != "init"  # the failed step had not run: the run goes on


async def test_v1_unknown_backupid_silently_starts_a_new_backup() -> None:
    """v1 steps an unknown backupid as a brand-new backup on profile 1: init, no warnings."""
    spec = SiteSpec(
        name="old",
        api="v1",
        platform="wordpress",
        secret=SECRET,
        steps=4,
        warnings=((1, V1_OLD_WARNING),),
    )
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        client = _V1(session, simulator, "old")
        await client.call("startBackup", {"profile": 1, "description": "mine", "backupid": "a"})
        for _ in range(2):
            await client.call("stepBackup", {"backupid": "a"})
        await client.call("startBackup", {"profile": 1, "description": "other"})
        restarted = await client.call("stepBackup", {"backupid": "a"})
        following = await client.call("stepBackup", {"backupid": "a"})
        listing = await client.call("listBackups", {"from": 0, "limit": 5})
    assert restarted == json.loads(json.loads(_capture(V1_DIR, "118").text[3:-3])["body"]["data"])
    assert following["Domain"] == "init"
    assert following["Warnings"] == [V1_OLD_WARNING]
    assert [(r["description"], r["profile_id"], r["status"]) for r in listing] == [
        ("", "1", "run"),
        ("other", "1", "run"),  # a silent restart kills nothing (fixture 205)
        ("mine", "1", "fail"),
    ]


async def test_list_backups_pages_newest_first() -> None:
    """listBackups pages from the newest record with from/limit, as the real server does."""
    spec = SiteSpec(name="s", secret=SECRET, steps=1)
    async with serving(spec) as simulator, aiohttp.ClientSession() as session:
        for number in range(5):
            await _v2(session, simulator, "s", "startBackup", description=f"b{number}")
        pages = [
            [
                r["description"]
                for r in (
                    await _v2(
                        session, simulator, "s", "listBackups", **{"from": start, "limit": limit}
                    )
                )[2]["data"]
            ]
            for start, limit in ((0, 2), (2, 2), (4, 2), (5, 2), (1, 50))
        ]
    assert pages == [["b4", "b3"], ["b2", "b1"], ["b0"], [], ["b3", "b2", "b1", "b0"]]


# --- 2. every fault through the real client and run engine ------------------------------------


@dataclass
class Ran:
    """One run's result and what the simulator saw."""

    result: RunResult
    observer: HookObserver
    summary: dict[str, Any]

    @property
    def retries(self) -> list[StepRetried]:
        return self.observer.of_type(StepRetried)


def _site(api: str, **changes: Any) -> SiteSpec:
    platform = "joomla" if api == "v2" else "wordpress"
    return SiteSpec(
        name="site", api=api, platform=platform, secret=SECRET, **{"steps": 6, **changes}
    )


async def _run(
    simulator: Simulator,
    *,
    clock: Clock | None = None,
    hook: Callable[[Simulator, RunEvent], None] | None = None,
    request_timeout: float = 5.0,
    stall: float = 600.0,
    retries: int = 3,
    profile_id: int = 1,
    run_timeout: float = 3600.0,
) -> Ran:
    clock = clock or QuickClock()
    observer = HookObserver(None if hook is None else (lambda event: hook(simulator, event)))
    settings = ClientSettings(request_timeout_seconds=request_timeout, connect_timeout_seconds=2.0)
    spec = RunSpec(
        site="site",
        schedule="nightly",
        run_id="run-1",
        profile_id=profile_id,
        description="test backup",
        stall_timeout_seconds=stall,
        run_timeout_seconds=run_timeout,
        step_retries=retries,
        retry_backoff_seconds=0.01,
        request_timeout_seconds=request_timeout,
    )
    async with aiohttp.ClientSession() as session:
        address = SiteAddress(simulator.base_url("site"), Platform.AUTO)
        remote = SiteRemote(session, address, Secret(SECRET), clock, settings)
        result = await BackupRun(remote, spec, clock, observer).execute()
    return Ran(result, observer, simulator.site("site").summary())


def _assert_failed(ran: Ran, reason: FailureReason) -> None:
    assert (ran.result.outcome, ran.result.reason) == (RunOutcome.FAILED, reason), ran.result
    assert ran.summary["concurrent_step_violations"] == 0


def _assert_succeeded(ran: Ran) -> None:
    assert (ran.result.outcome, ran.result.reason) == (RunOutcome.SUCCEEDED, None), ran.result
    assert ran.summary["start_count"] == 1
    assert ran.summary["concurrent_step_violations"] == 0
    assert ran.summary["completed_backups"] == 1


BOTH = pytest.mark.parametrize("api", ["v2", "v1"])


def _faults(**changes: Any) -> Faults:
    """Return Faults with the fields named at run time (by the parametrized tests) set."""
    faults = Faults()
    for name, value in changes.items():
        assert hasattr(faults, name), name
        setattr(faults, name, value)
    return faults


@BOTH
async def test_a_clean_site_backs_up(api: str) -> None:
    """Without faults the run succeeds, verified against its own record."""
    async with serving(_site(api)) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_succeeded(ran)
    assert ran.summary["step_count"] == 6
    assert ran.result.archive_size_bytes == 42_617_630
    numbers = [event.step_number for event in ran.observer.of_type(StepDone)]
    if api == "v2":
        # The server's own stepNumber: from 2, the final reply repeating the last one.
        assert numbers == [*range(2, 8), 7]
    else:
        # API 330 numbers only its start reply: the count of replies stands in.
        assert numbers == list(range(1, 8))


@BOTH
@pytest.mark.parametrize("fault", ["auth_failure", "api_disabled"])
async def test_refused_secret_fails_auth_before_any_backup(api: str, fault: str) -> None:
    """A refused secret or a switched-off API fails the run as auth; nothing is started."""
    async with serving(_site(api, faults=_faults(**{fault: True}))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.AUTH)
    assert ran.summary["start_count"] == 0


@BOTH
@pytest.mark.parametrize("junk", ["php_notice", "html", "bom"])
async def test_junk_around_the_json_is_survived(api: str, junk: str) -> None:
    """PHP notices, an HTML page or a BOM around every reply do not stop the backup."""
    async with serving(_site(api, faults=Faults(junk=junk))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_succeeded(ran)
    assert ran.retries == []


@BOTH
@pytest.mark.parametrize("fault", ["http500_empty_at_step", "db_down_at_step"])
async def test_transient_http_500_is_retried_to_success(api: str, fault: str) -> None:
    """Two failing attempts of a step, with three retries allowed, end in success."""
    faults = _faults(**{fault: 3, "fail_count": 2})
    async with serving(_site(api, faults=faults)) as simulator:
        ran = await _run(simulator, clock=FakeClock(), retries=3)
    _assert_succeeded(ran)
    assert [(r.attempt, r.reason) for r in ran.retries] == [
        (1, FailureReason.HTTP_ERROR),
        (2, FailureReason.HTTP_ERROR),
    ]
    assert ran.summary["step_count"] == 6 + 2


@BOTH
@pytest.mark.parametrize("fault", ["http500_empty_at_step", "db_down_at_step"])
async def test_persistent_http_500_fails_as_http_error(api: str, fault: str) -> None:
    """More failing attempts than retries: the record is still running, so http_error."""
    faults = _faults(**{fault: 3, "fail_count": 5})
    async with serving(_site(api, faults=faults)) as simulator:
        ran = await _run(simulator, clock=FakeClock(), retries=3)
    _assert_failed(ran, FailureReason.HTTP_ERROR)
    assert ran.summary["start_count"] == 1
    assert len(ran.retries) == 3
    assert ran.summary["step_count"] == 2 + 4


@pytest.mark.parametrize(
    ("stall", "reason"), [(1800.0, FailureReason.TIMEOUT), (30.0, FailureReason.STALLED)]
)
async def test_hung_step_ends_bounded_and_is_never_stepped_twice(
    stall: float, reason: FailureReason
) -> None:
    """A hung step times out; the engine waits for instep 0, never re-sends, and gives up."""
    async with serving(_site("v2", faults=Faults(hang_at_step=2))) as simulator:
        ran = await asyncio.wait_for(_run(simulator, request_timeout=0.3, stall=stall), timeout=10)
    _assert_failed(ran, reason)
    assert ran.summary["start_count"] == 1
    assert ran.summary["step_count"] == 2  # no second stepBackup while the first still runs
    assert [r.reason for r in ran.retries] == [FailureReason.TIMEOUT]
    assert ran.summary["calls_by_method"]["getBackupInfo"] >= 1


async def test_hung_step_released_later_lets_the_run_continue() -> None:
    """Once the hung step ends on the server (instep 0) the engine steps on and succeeds."""

    def release(simulator: Simulator, event: RunEvent) -> None:
        if isinstance(event, StepRetried):
            simulator.set_faults("site", hang_at_step=None)

    async with serving(_site("v2", faults=Faults(hang_at_step=2))) as simulator:
        ran = await _run(simulator, clock=QuickClock(0.01), request_timeout=0.3, hook=release)
    _assert_succeeded(ran)
    assert [r.reason for r in ran.retries] == [FailureReason.TIMEOUT]
    assert ran.summary["step_count"] == 6  # the hung call did step 2; its retry did step 3


async def test_slow_step_within_the_request_timeout_is_waited_for() -> None:
    """A step a little shorter than the request timeout is simply waited for."""
    faults = Faults(slow_step_at=2, slow_step_seconds=0.3)
    async with serving(_site("v2", faults=faults)) as simulator:
        ran = await _run(simulator, clock=SystemClock(), request_timeout=0.6)
    _assert_succeeded(ran)
    assert ran.retries == []


async def test_slow_step_beyond_the_request_timeout_is_retried_only_after_it_ends() -> None:
    """A step longer than the request timeout: timeout, wait for instep 0, then step on."""
    faults = Faults(slow_step_at=2, slow_step_seconds=0.6)
    async with serving(_site("v2", faults=faults)) as simulator:
        ran = await _run(simulator, clock=QuickClock(0.02), request_timeout=0.3)
    _assert_succeeded(ran)
    assert [r.reason for r in ran.retries] == [FailureReason.TIMEOUT]
    assert ran.summary["step_count"] == 6


@BOTH
@pytest.mark.parametrize("fault", ["engine_error_at_step", "error_with_hasrun_at_step"])
async def test_engine_errors_fail_as_remote_error(api: str, fault: str) -> None:
    """A status 500 engine error, or Error set with HasRun true, fails the run (remote_error)."""
    async with serving(_site(api, faults=_faults(**{fault: 3}))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.REMOTE_ERROR)
    assert ran.summary["start_count"] == 1
    assert ran.summary["step_count"] == 3
    assert ran.summary["records"][0]["status"] == "fail"


async def test_changed_backupid_fails_as_restarted() -> None:
    """A reply carrying another backupid means the server restarted the backup."""
    async with serving(_site("v2", faults=Faults(backupid_change_at_step=3))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.RESTARTED)
    assert ran.summary["start_count"] == 1
    assert ran.summary["step_count"] == 3


async def test_falling_stepnumber_fails_as_misbehaving_server() -> None:
    """A stepNumber lower than the previous one breaks the protocol: misbehaving_server."""
    async with serving(_site("v2", faults=Faults(stepnumber_back_at_step=3))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.MISBEHAVING_SERVER)
    assert ran.summary["start_count"] == 1
    assert ran.summary["step_count"] == 3


async def test_repeated_stepnumber_mid_run_is_misbehaving() -> None:
    """A stepNumber repeated while HasRun is true breaks the protocol (only the final reply may
    repeat it, as Akeeba Backup 9 does and every clean v2 run here shows)."""
    async with serving(_site("v2", faults=Faults(stepnumber_repeat_at_step=3))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.MISBEHAVING_SERVER)
    assert "mid-run" in ran.result.message
    assert ran.summary["step_count"] == 3


async def test_sleep_time_is_waited_between_steps() -> None:
    """The server's sleepTime (ms) is slept before every next step, and only then."""
    async with serving(_site("v2", sleep_time_ms=1500)) as simulator:
        clock = FakeClock()
        ran = await _run(simulator, clock=clock)
    _assert_succeeded(ran)
    assert clock.sleeps.count(1.5) == ran.summary["step_count"]


async def test_unknown_profile_fails_before_any_start() -> None:
    """A profile the site does not list fails as unknown_profile; nothing is started."""
    async with serving(_site("v2", profiles=(1, 2))) as simulator:
        ran = await _run(simulator, clock=FakeClock(), profile_id=7)
    _assert_failed(ran, FailureReason.UNKNOWN_PROFILE)
    assert "profiles: 1, 2" in ran.result.message
    assert ran.summary["start_count"] == 0


async def test_run_past_its_deadline_fails_as_deadline() -> None:
    """Steps that keep coming but never end the backup hit run_timeout: deadline."""
    async with serving(_site("v2", steps=50, step_seconds=0.05)) as simulator:
        ran = await _run(simulator, clock=QuickClock(scale=1.0), run_timeout=0.3)
    _assert_failed(ran, FailureReason.DEADLINE)
    assert ran.summary["completed_backups"] == 0


@pytest.mark.parametrize(
    ("api", "fault", "reason"),
    [
        ("v2", "lose_state_at_step", FailureReason.REMOTE_ERROR),
        ("v1", "lose_state_at_step", FailureReason.RESTARTED),
        ("v2", "foreign_start_at_step", FailureReason.REMOTE_ERROR),
        ("v1", "foreign_start_at_step", FailureReason.RESTARTED),
    ],
)
async def test_lost_run_state_fails_with_the_generations_reason(
    api: str, fault: str, reason: FailureReason
) -> None:
    """v2 reports a lost run (status 500: remote_error); v1 silently restarts it (restarted)."""
    async with serving(_site(api, faults=_faults(**{fault: 4}))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, reason)
    assert ran.summary["start_count"] == 1
    assert ran.summary["step_count"] == 4  # the engine stops at the first sign
    # the v1 engine forgets a lost run without failing its record (fixture 205)
    stuck = api == "v1" and fault == "lose_state_at_step"
    assert ran.summary["records"][0]["status"] == ("run" if stuck else "fail")


async def test_v1_start_that_silently_fails_is_caught_as_restarted() -> None:
    """A v1 start that creates nothing: the backup that runs is not ours, found by the tag."""
    async with serving(_site("v1", faults=Faults(start_silently_fails=True))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.RESTARTED)
    assert ran.summary["start_count"] == 1
    assert [(r["comment"], r["status"]) for r in ran.summary["records"]] == [("", "complete")]


@BOTH
async def test_ten_megabytes_of_garbage_is_a_bad_response_cut_at_the_body_cap(api: str) -> None:
    """Every reply 10 MB of junk: the client stops at its body cap and the run is bad_response."""
    faults = Faults(garbage_bytes=10_000_000)
    async with serving(_site(api, faults=faults)) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.BAD_RESPONSE)
    assert "byte cap" in ran.result.message
    assert ran.summary["start_count"] == 0


@BOTH
async def test_garbage_from_mid_run_on_fails_as_bad_response(api: str) -> None:
    """Garbage from step 3 on: retries exhausted, the record unreadable → bad_response."""

    def spoil(simulator: Simulator, event: RunEvent) -> None:
        if isinstance(event, StepDone) and event.checkpoint.replies == 3:
            simulator.set_faults("site", garbage_bytes=10_000_000)

    async with serving(_site(api)) as simulator:
        ran = await _run(simulator, clock=FakeClock(), hook=spoil)
    _assert_failed(ran, FailureReason.BAD_RESPONSE)
    assert ran.summary["start_count"] == 1
    assert len(ran.retries) == 3


@BOTH
@pytest.mark.parametrize("junk", ["php_notice", "html", "bom"])
async def test_junk_really_surrounds_the_reply(api: str, junk: str) -> None:
    """The junk fault makes the raw body unparseable as it is, so surviving it means something."""
    spec = _site(api, faults=Faults(junk=junk))
    path = "" if api == "v2" else "wp-content/plugins/akeebabackupwp/app/index.php"
    query = (
        {"option": "com_akeebabackup", "view": "Api", "format": "raw", "method": "getVersion"}
        if api == "v2"
        else {"view": "json", "json": "{}"}
    )
    async with (
        serving(spec) as simulator,
        aiohttp.ClientSession() as session,
        session.get(simulator.base_url("site") + path, params=query) as response,
    ):
        raw = await response.read()
    with pytest.raises(json.JSONDecodeError, match=r"Expecting value|Extra data|BOM"):
        json.loads(raw.decode("utf-8"))
    assert (b"\xef\xbb\xbf" in raw[:3]) == (junk == "bom")


@BOTH
async def test_a_redirect_to_a_login_page_fails_as_http_error_naming_it(api: str) -> None:
    """A same-host redirect is followed; the login page at its end is reported as such."""
    async with serving(_site(api, faults=Faults(redirect_to="login"))) as simulator:
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.HTTP_ERROR)
    assert "HTTP 302 redirect to" in ran.result.message
    assert "/site/login" in ran.result.message
    assert "Log in" in ran.result.message
    assert ran.summary["login_page_requests"] >= 1
    assert ran.summary["start_count"] == 0


@BOTH
async def test_a_redirect_to_another_host_is_not_followed_with_the_secret(api: str) -> None:
    """A redirect to another host name (here "localhost" for the same server) is refused, so
    the secret in the auth header never reaches it."""
    async with serving(_site(api)) as simulator:
        elsewhere = simulator.base_url("site").replace("127.0.0.1", "localhost") + "login"
        simulator.set_faults("site", redirect_to=elsewhere)
        ran = await _run(simulator, clock=FakeClock())
    _assert_failed(ran, FailureReason.HTTP_ERROR)
    assert "not followed" in ran.result.message
    assert ran.summary["login_page_requests"] == 0
    assert ran.summary["login_page_secrets"] == 0
