"""The status page (GET /) and the control API around it (DESIGN.md §7, issue 5).

Three layers: :mod:`akeeba_backupd.status_page` rendered from hand-made schedule entries (order,
colours, escaping, no external resources); the control API of an in-process service against
the simulator (token, JSON errors, 404, 409, cancel); and the installed daemon's page loaded in
headless Chromium while a slow backup runs, whose screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.config import ScheduleConfig, SiteConfig, load_config
from akeeba_backupd.scheduler import ScheduleEntry, ScheduleState
from akeeba_backupd.service import Service
from akeeba_backupd.simulator import Simulator, SiteSpec
from akeeba_backupd.status import FinishedRun, LiveRun, ScheduleStats
from akeeba_backupd.status_page import (
    FAILURES_SHOWN,
    Health,
    fleet_order,
    format_duration,
    health,
    recent_failures,
    render_status_page,
)
from tests.daemon_harness import (
    SIM_SECRET,
    DaemonProcess,
    SimulatorProcess,
    SiteEntry,
    config_document,
    free_port,
    running_daemon,
    wait_until,
    write_config,
)
from tests.tools import require_tool

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86400.0
HOSTILE = "<script>alert('x')</script>"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


# --- reading a page back -----------------------------------------------------------------------


@dataclass
class Row:
    """One body row of a table: its attributes and the text of each cell."""

    attrs: dict[str, str]
    cells: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """Every element of a page (tag, attributes) and the body rows of each table by id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[Row]] = {}
        self.title = ""
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self._in_title = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.elements.append((tag, values))
        if tag == "table":
            self._table = values.get("id", "")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append(Row(values))
        elif tag == "td" and self._in_body and self._table is not None:
            self._cell = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data

    def find(self, tag: str) -> list[dict[str, str]]:
        """Return the attributes of every ``tag`` element, in document order."""
        return [attrs for name, attrs in self.elements if name == tag]


# --- hand-made schedule entries ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteConfig, ScheduleConfig]:
    """A real, validated site and schedule to copy under other names."""
    directory = tmp_path_factory.mktemp("config")
    document = {
        "state_dir": str(directory),
        "sites": [
            {
                "name": "base",
                "url": "https://www.example.org/",
                "platform": "joomla",
                "secret_env": "BASE_SECRET",
                "schedules": [{"name": "nightly", "cron": "0 3 * * *"}],
            }
        ],
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(document))
    site = load_config(path, {"BASE_SECRET": "a-long-random-secret"}).sites[0]
    return site, site.schedules[0]


def make_entry(
    base: tuple[SiteConfig, ScheduleConfig],
    site: str,
    schedule: str = "nightly",
    *,
    age: float | None = HOUR,
    interval: float = DAY,
    failures: int = 0,
    state: ScheduleState = ScheduleState.IDLE,
    paused: bool = False,
    next_in: float = HOUR,
    live: LiveRun | None = None,
    message: str = "",
) -> ScheduleEntry:
    """Return an entry for ``site``/``schedule`` whose last success ended ``age`` seconds before
    NOW (None: never), after which ``failures`` runs failed in a row."""
    site_config, schedule_config = base
    stats = ScheduleStats(site, schedule, live=live)
    if age is not None:
        stats.last_success_at = NOW - timedelta(seconds=age)
        stats.last_status = True
    if failures:
        stats.consecutive_failures = failures
        stats.last_status = False
        stats.last_failure_reason = FailureReason.REMOTE_ERROR
        stats.last_message = message
    return ScheduleEntry(
        replace(site_config, name=site),
        replace(schedule_config, name=schedule),
        stats,
        state=state,
        paused=paused,
        next_due_at=NOW + timedelta(seconds=next_in),
        expected_interval_seconds=interval,
    )


def failed_run(
    site: str,
    minutes_ago: float,
    message: str = "engine error",
    *,
    outcome: str = "failed",
    reason: str | None = "remote_error",
) -> FinishedRun:
    """Return a run of ``site``/nightly (failed unless told) that ended ``minutes_ago`` before
    NOW."""
    finished = NOW - timedelta(minutes=minutes_ago)
    return FinishedRun(
        site=site,
        schedule="nightly",
        run_id=f"run-{site}-{minutes_ago}",
        outcome=outcome,
        reason=reason,
        message=message,
        started_at=finished - timedelta(minutes=3),
        finished_at=finished,
        duration_seconds=180.0,
    )


def render(entries: list[ScheduleEntry], runs: list[FinishedRun] | None = None) -> str:
    """Return the page for ``entries`` and ``runs`` at NOW."""
    return render_status_page(entries, runs or [], NOW, version="1.2.3")


# --- rendering ---------------------------------------------------------------------------------


def test_fleet_is_sorted_oldest_backup_first(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """Never-succeeded schedules come first, then by descending age; equal ages by name."""
    entries = [
        make_entry(base, "fresh", age=HOUR),
        make_entry(base, "never", age=None),
        make_entry(base, "old", age=3 * DAY),
        make_entry(base, "b-mid", age=5 * HOUR),
        make_entry(base, "a-mid", age=5 * HOUR),
    ]
    expected = ["never", "old", "a-mid", "b-mid", "fresh"]
    assert [entry.site.name for entry in fleet_order(entries, NOW)] == expected
    page = Page(render(entries))
    assert [row.cells[1] for row in page.tables["fleet"]] == expected
    assert page.tables["fleet"][0].cells[3] == "never"
    assert page.tables["fleet"][1].cells[3] == "3d ago"


@pytest.mark.parametrize(
    ("age", "interval", "failures", "state", "expected"),
    [
        (HOUR, DAY, 0, ScheduleState.IDLE, Health.GREEN),
        (DAY, DAY, 0, ScheduleState.IDLE, Health.GREEN),  # exactly one interval: still fine
        (1.1 * DAY, DAY, 0, ScheduleState.IDLE, Health.AMBER),  # a little overdue
        (1.1 * DAY, DAY, 0, ScheduleState.RUNNING, Health.GREEN),  # ...but its run is under way
        (1.1 * DAY, DAY, 0, ScheduleState.QUEUED, Health.GREEN),
        (1.25 * DAY, DAY, 0, ScheduleState.IDLE, Health.AMBER),
        (1.3 * DAY, DAY, 0, ScheduleState.IDLE, Health.RED),  # stale
        (1.3 * DAY, DAY, 0, ScheduleState.RUNNING, Health.RED),  # stale even while running
        (HOUR, DAY, 1, ScheduleState.IDLE, Health.AMBER),  # failing once
        (HOUR, DAY, 2, ScheduleState.IDLE, Health.RED),  # failing repeatedly
        (None, DAY, 0, ScheduleState.IDLE, Health.RED),  # never succeeded
        (None, DAY, 0, ScheduleState.RUNNING, Health.RED),  # first run under way: no backup yet
        (400 * DAY, 0.0, 0, ScheduleState.IDLE, Health.GREEN),  # no interval: never stale
        (2 * HOUR, HOUR, 0, ScheduleState.IDLE, Health.RED),  # hourly, 2 h old
        (6 * DAY, 7 * DAY, 0, ScheduleState.IDLE, Health.GREEN),  # weekly, 6 days old
    ],
)
def test_health_rule(
    base: tuple[SiteConfig, ScheduleConfig],
    age: float | None,
    interval: float,
    failures: int,
    state: ScheduleState,
    expected: Health,
) -> None:
    """Green within the interval, amber overdue up to 1.25x or failing once, red beyond."""
    entry = make_entry(base, "shop", age=age, interval=interval, failures=failures, state=state)
    assert health(entry, NOW) is expected


def test_rows_carry_their_colour(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """Each fleet row has its colour as class and as a word (not colour alone), and the summary
    counts them."""
    entries = [
        make_entry(base, "ok", age=HOUR),
        make_entry(base, "late", age=1.2 * DAY),
        make_entry(base, "failing", failures=2),
        make_entry(base, "paused", age=HOUR, paused=True),
    ]
    text = render(entries)
    rows = {row.cells[1]: row for row in Page(text).tables["fleet"]}
    assert {name: row.attrs["class"] for name, row in rows.items()} == {
        "ok": "green",
        "late": "amber",
        "failing": "red",
        "paused": "green",
    }
    assert rows["failing"].cells[0] == "red"
    assert rows["failing"].cells[5] == "failed: remote_error (2 in a row)"
    assert rows["paused"].cells[6] == "idle paused"
    assert "2 green" in text
    assert "1 amber" in text
    assert "1 red" in text


def test_running_backup_has_a_progress_bar(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """A running schedule shows a <progress> with its percentage, step number, phase and
    current step; a finished run's leftover live view does not."""
    live = LiveRun("run-1", NOW - timedelta(minutes=4, seconds=5), step_number=7)
    live.progress_percent, live.domain, live.step = 37, "PackDB", "Backing up table #__users"
    entries = [
        make_entry(base, "busy", state=ScheduleState.RUNNING, live=live),
        make_entry(base, "done", live=LiveRun("run-0", NOW - timedelta(hours=2))),
        make_entry(base, "waiting", state=ScheduleState.QUEUED),
    ]
    text = render(entries)
    page = Page(text)
    bars = page.find("progress")
    assert len(bars) == 1
    assert (bars[0]["data-site"], bars[0]["value"], bars[0]["max"]) == ("busy", "37", "100")
    (row,) = page.tables["running"]
    assert row.cells[0] == "busy/nightly"
    assert row.cells[1].endswith("37 %")
    assert row.cells[2:6] == ["7", "PackDB", "Backing up table #__users", "4m 5s"]
    assert "Queued, waiting for a free slot or site: waiting/nightly" in text


def test_hostile_text_is_escaped(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """Markup in names, server messages, phases and steps shows as text, never as elements."""
    live = LiveRun("run-1", NOW - timedelta(minutes=1), step_number=2)
    live.domain, live.step = '"><img src=x onerror=alert(1)>', HOSTILE
    entries = [
        make_entry(base, HOSTILE, '"><b onmouseover=x>', failures=1, message=HOSTILE),
        make_entry(base, "busy", state=ScheduleState.RUNNING, live=live),
    ]
    runs = [failed_run(HOSTILE, 5, message=f"{HOSTILE} & \"quoted\" <iframe src='//evil'>")]
    text = render(entries, runs)
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "<iframe" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    page = Page(text)
    allowed = {
        "html", "head", "meta", "link", "title", "style", "body", "h1", "h2", "small", "p",
        "a", "time", "table", "thead", "tbody", "tr", "th", "td", "span", "progress", "code",
    }  # fmt: skip
    assert {tag for tag, _ in page.elements} <= allowed
    assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
    (failure,) = page.tables["failures"]
    assert failure.cells[1] == f"{HOSTILE}/nightly"
    assert failure.cells[3] == f"{HOSTILE} & \"quoted\" <iframe src='//evil'>"
    assert page.tables["running"][0].cells[3:5] == ['"><img src=x onerror=alert(1)>', HOSTILE]


def test_no_script_and_no_external_resources(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """The page is self-contained: no script at all, no stylesheet or image from elsewhere,
    links only to the daemon's own paths, and a meta refresh."""
    entries = [make_entry(base, "shop"), make_entry(base, "blog", failures=1)]
    page = Page(render(entries, [failed_run("blog", 3)]))
    assert not page.find("script")
    for tag, attrs in page.elements:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            assert value.startswith("/") or value == "data:,", (tag, name, value)
            assert not value.startswith("//"), (tag, name, value)
    assert [link["rel"] for link in page.find("link")] == ["icon"]
    refresh = [meta for meta in page.find("meta") if meta.get("http-equiv") == "refresh"]
    assert [meta["content"] for meta in refresh] == ["10"]
    assert page.title == "akeeba-backupd status"


def test_recent_failures_newest_first(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """Failures are listed newest first with reason and message, skipped and succeeded runs are
    not, and the list is capped."""
    runs = [
        failed_run("older", 90, "could not connect", reason="unreachable"),
        failed_run("newer", 5, "A backup error has occurred: disk full"),
        failed_run("fine", 1, outcome="succeeded", reason=None),
        failed_run("skip", 2, outcome="skipped", reason="overlap"),
    ]
    rows = Page(render([make_entry(base, "shop")], runs)).tables["failures"]
    assert [row.cells[1:] for row in rows] == [
        ["newer/nightly", "remote_error", "A backup error has occurred: disk full"],
        ["older/nightly", "unreachable", "could not connect"],
    ]
    assert [row.cells[0] for row in rows] == ["5m ago", "1h 30m ago"]
    many = [failed_run(f"s{index}", index) for index in range(FAILURES_SHOWN + 5)]
    assert [run.site for run in recent_failures(many)] == [
        f"s{index}" for index in range(FAILURES_SHOWN)
    ]


def test_next_runs_soonest_first_without_paused(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """Next runs lists unpaused schedules soonest first with cron and zone; the fleet table
    still shows a paused schedule's next fire, marked paused."""
    entries = [
        make_entry(base, "later", next_in=5 * HOUR),
        make_entry(base, "soon", next_in=90),
        make_entry(base, "held", next_in=60, paused=True),
    ]
    page = Page(render(entries))
    assert [row.cells[:2] for row in page.tables["next"]] == [
        ["in 1m 30s", "soon/nightly"],
        ["in 5h", "later/nightly"],
    ]
    assert page.tables["next"][0].cells[2] == "0 3 * * *"
    fleet = {row.cells[1]: row.cells[7] for row in page.tables["fleet"]}
    assert fleet["held"] == "in 1m (paused)"


def test_empty_fleet_renders(base: tuple[SiteConfig, ScheduleConfig]) -> None:
    """With no schedules every section says so instead of showing an empty table."""
    page = Page(render([]))
    assert page.tables["fleet"][0].cells == ["no schedules configured"]
    assert page.tables["running"][0].cells == ["no backup is running"]
    assert page.tables["failures"][0].cells == ["no failed run kept in the history"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (42.4, "42s"),
        (59.6, "1m"),
        (725, "12m 5s"),
        (3600, "1h"),
        (3 * 3600 + 12 * 60 + 59, "3h 12m"),
        (2 * 86400 + 3 * 3600, "2d 3h"),
        (400 * 86400, "400d"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations show their two largest units, a zero second unit left out."""
    assert format_duration(seconds) == text


# --- the control API, in process ---------------------------------------------------------------

TOKEN = "status-token-9f3c"
SECRET = "status-secret-51b7"
WRITE_ROUTES = [
    "/api/v1/schedules/shop/nightly/run",
    "/api/v1/schedules/shop/nightly/pause",
    "/api/v1/schedules/shop/nightly/resume",
    "/api/v1/schedules/shop/nightly/cancel",
    "/api/v1/sites/shop/pause",
    "/api/v1/sites/shop/resume",
]


@dataclass
class Api:
    """A running in-process service with two slow sites and one backup slot."""

    service: Service
    simulator: Simulator
    base: str
    session: aiohttp.ClientSession

    async def post(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.session.post(self.base + path, headers=headers) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def schedule(self, site: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/api/v1/schedules?site={site}") as response:
            (entry,) = await response.json()
            result: dict[str, Any] = entry
            return result


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """Serve ``shop`` and ``blog`` (slow sites, 200 steps of 50 ms) with max_concurrent 1."""
    simulator = Simulator(
        [
            SiteSpec(name=name, secret=SECRET, steps=200, step_seconds=0.05)
            for name in ("shop", "blog")
        ]
    )
    await simulator.start()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    document = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path),
        "api_token_file": str(token_file),
        "limits": {"max_concurrent": 1},
        "sites": [
            {
                "name": name,
                "url": simulator.base_url(name),
                "platform": "joomla",
                "secret_env": "STATUS_SECRET",
                "schedules": [{"name": "nightly", "cron": "0 3 * * *"}],
            }
            for name in ("shop", "blog")
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(document))
    environ = {"STATUS_SECRET": SECRET}
    service = Service(load_config(path, environ), environ=environ, handle_signals=False)
    task = asyncio.create_task(service.serve())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
        async with aiohttp.ClientSession() as session:
            yield Api(service, simulator, f"http://127.0.0.1:{service.bound_port}", session)
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 15)
        await simulator.stop()


async def test_every_write_route_needs_the_token(api: Api) -> None:
    """Every POST route answers 401 in JSON with a WWW-Authenticate challenge without the
    token, with a wrong one, with another scheme, and before revealing whether a schedule
    exists; nothing changed."""
    for path in [*WRITE_ROUTES, "/api/v1/schedules/nope/nope/run", "/api/v1/sites/nope/pause"]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            async with api.session.post(api.base + path, headers=headers) as response:
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "Bearer" in (await response.json())["error"]
    assert api.simulator.site("shop").start_count == 0
    assert (await api.schedule("shop"))["paused"] is False


async def test_undecodable_authorization_header_is_a_401(api: Api) -> None:
    """A bearer token of bytes that are not UTF-8 is refused with 401, not a server error."""
    port = api.service.bound_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/schedules/shop/nightly/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe\x80\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert api.simulator.site("shop").start_count == 0


async def test_api_errors_are_json(api: Api) -> None:
    """Unknown schedules and sites are 404, unknown endpoints 404 and wrong methods 405, all
    with a JSON message."""
    assert await api.post("/api/v1/schedules/shop/weekly/run") == (
        404,
        {"error": "no schedule shop/weekly"},
    )
    assert await api.post("/api/v1/sites/nowhere/pause") == (404, {"error": "no site nowhere"})
    assert await api.post("/api/v1/schedules/nowhere/nightly/cancel") == (
        404,
        {"error": "no schedule nowhere/nightly"},
    )
    assert await api.post("/api/v1/schedules/shop/nightly/explode") == (
        404,
        {"error": "no such endpoint: POST /api/v1/schedules/shop/nightly/explode"},
    )
    async with api.session.get(api.base + "/api/v1/schedules/shop/nightly/run") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert await response.json() == {
            "error": "GET is not allowed on /api/v1/schedules/shop/nightly/run"
        }


async def test_run_and_cancel_answer_409_when_they_do_not_apply(api: Api) -> None:
    """Run-now is 409 while running or queued; cancel drops a queued run (it never starts),
    stops a running one (failed `interrupted`), and is 409 when nothing runs or waits."""
    assert (await api.post("/api/v1/schedules/shop/nightly/run"))[0] == 202
    async with asyncio.timeout(10):
        while (await api.schedule("shop"))["state"] != "running":
            await asyncio.sleep(0.02)
    status, body = await api.post("/api/v1/schedules/shop/nightly/run")
    assert (status, body) == (409, {"error": "shop/nightly is already running"})

    status, body = await api.post("/api/v1/schedules/blog/nightly/run")
    assert (status, body["state"]) == (202, "queued")  # the one slot is shop's
    status, body = await api.post("/api/v1/schedules/blog/nightly/run")
    assert (status, body) == (409, {"error": "blog/nightly is already queued"})
    status, body = await api.post("/api/v1/schedules/blog/nightly/cancel")
    assert (status, body["state"]) == (202, "idle")
    assert (await api.post("/api/v1/schedules/blog/nightly/cancel"))[0] == 409

    assert (await api.post("/api/v1/schedules/shop/nightly/cancel"))[0] == 202
    async with asyncio.timeout(10):
        while (last := (await api.schedule("shop"))["last"]) is None:
            await asyncio.sleep(0.02)
    assert (last["outcome"], last["reason"]) == ("failed", "interrupted")
    status, body = await api.post("/api/v1/schedules/shop/nightly/cancel")
    assert (status, body) == (409, {"error": "shop/nightly is not running or queued"})
    assert api.simulator.site("blog").start_count == 0
    assert api.simulator.site("shop").start_count == 1


async def test_pause_and_resume_are_idempotent(api: Api) -> None:
    """Pausing a paused schedule (or resuming a running one) is not an error: the answer is the
    schedule as it now is."""
    for _ in range(2):
        status, body = await api.post("/api/v1/schedules/shop/nightly/pause")
        assert (status, body["paused"]) == (200, True)
    status, body = await api.post("/api/v1/sites/shop/resume")
    assert (status, [item["paused"] for item in body]) == (200, [False])
    status, body = await api.post("/api/v1/schedules/shop/nightly/resume")
    assert (status, body["paused"]) == (200, False)


async def test_status_page_needs_no_token_and_forbids_scripts(api: Api) -> None:
    """GET / answers HTML without a token, with a Content-Security-Policy allowing no script
    and nothing from elsewhere."""
    async with api.session.get(api.base + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        policy = response.headers["Content-Security-Policy"]
        text = await response.text()
    assert "default-src 'none'" in policy
    assert "script-src" not in policy  # falls back to default-src 'none'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    rows = {row.cells[1]: row for row in Page(text).tables["fleet"]}
    assert sorted(rows) == ["blog", "shop"]
    assert {row.attrs["class"] for row in rows.values()} == {"red"}  # no backup yet


# --- headless Chromium against the installed daemon ---------------------------------------------


def chromium_binary() -> str:
    """Return the chromium executable; skip without it, but fail under CI, which installs it."""
    return require_tool("chromium", "./scripts/test installs Debian's chromium package")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a throw-away profile and no network beyond the page."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # root in containers and CI; the page is our own
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    environ = {**os.environ, "HOME": str(profile)}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=environ
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}\n{result.stderr[-3000:]}"
    return result


def png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) from a PNG's header; raise AssertionError when it is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, list[str]]]:
    """A simulator process with four fresh sites (3 quick steps each)."""
    simulator = SimulatorProcess.start(tmp_path / "simulator", sites=4, steps=3)
    try:
        yield simulator, [simulator.take() for _ in range(4)]
    finally:
        simulator.stop()


def _wait_for_run(daemon: DaemonProcess, site: str, runs: int) -> None:
    daemon.wait_for_sample("akeeba_backup_runs_total", runs, site=site, schedule="nightly")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chromium_renders_a_running_backup(
    fleet: tuple[SimulatorProcess, list[str]], tmp_path: Path
) -> None:
    """The real daemon's page, loaded in headless Chromium while a slow backup runs, shows its
    progress bar and each colour; a screenshot is kept as test-artifacts/status-page.png."""
    binary = chromium_binary()
    simulator, (slow, quick, broken, fresh) = fleet
    port = free_port()
    sites = [
        SiteEntry("slow", simulator.site_url(slow)),
        SiteEntry("quick", simulator.site_url(quick), [("nightly", "H * * * *")]),
        SiteEntry("broken", simulator.site_url(broken)),
        SiteEntry("fresh", simulator.site_url(fresh)),
    ]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    path = write_config(
        tmp_path / "config.yaml", config_document(port, sites, token_file=token_file)
    )
    with running_daemon(path, port, tmp_path) as daemon:
        # One success each for slow, quick and broken; then broken fails once (amber).
        for site in ("slow", "quick", "broken"):
            daemon.trigger(site, "nightly", token=TOKEN)
        for site in ("slow", "quick", "broken"):
            _wait_for_run(daemon, site, 1)
        simulator.set_faults(broken, engine_error_at_step=2)
        daemon.trigger("broken", "nightly", token=TOKEN)
        _wait_for_run(daemon, "broken", 2)
        # Now a long run of slow (200 steps of 0.25 s), a few percent in.
        simulator.set_settings(slow, steps=200, step_seconds=0.25)
        daemon.trigger("slow", "nightly", token=TOKEN)

        def progress() -> int | None:
            (entry,) = daemon.get_json("/api/v1/schedules?site=slow")
            live = entry["live"]
            return None if live is None or live["progress_percent"] < 3 else 1

        wait_until(progress, "the slow run to be a few percent in", context=daemon.logs)

        dom = run_chromium(binary, tmp_path / "chromium-dom", "--dump-dom", daemon.base + "/")
        page = Page(dom.stdout)
        assert page.title == "akeeba-backupd status"
        bars = [bar for bar in page.find("progress") if bar.get("data-site") == "slow"]
        assert len(bars) == 1, dom.stdout[:2000]
        assert bars[0]["data-schedule"] == "nightly"
        assert 3 <= int(bars[0]["value"]) < 100
        (running,) = page.tables["running"]
        assert running.cells[0] == "slow/nightly"
        assert int(running.cells[2]) >= 2  # the step number
        colours = {row.cells[1]: row.attrs["class"] for row in page.tables["fleet"]}
        assert colours == {"slow": "green", "quick": "green", "broken": "amber", "fresh": "red"}
        assert page.tables["fleet"][0].cells[:2] == ["red", "fresh"]  # never backed up: first
        (failure,) = page.tables["failures"]
        assert (failure.cells[1], failure.cells[2]) == ("broken/nightly", "remote_error")
        crons = {row.cells[1]: row.cells[2] for row in page.tables["next"]}
        assert crons["quick/nightly"].startswith("H * * * * = ")  # H shown resolved too
        assert SIM_SECRET not in dom.stdout

        shot = tmp_path / "status-page.png"
        run_chromium(
            binary,
            tmp_path / "chromium-shot",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            daemon.base + "/",
        )
    assert shot.is_file()
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank canvas
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "status-page.png")
