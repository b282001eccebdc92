"""The whole service in-process against a real simulated fleet: lifecycle, metrics, API, reload."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from akeeba_backupd.config import load_config
from akeeba_backupd.service import Service
from akeeba_backupd.simulator import Faults, Simulator, SiteSpec

SECRET = "fleet-secret-123"
TOKEN = "api-token-abc"
ENVIRON = {"FLEET_SECRET": SECRET}


@dataclass
class FakeNotifier:
    """Records sd_notify messages in order."""

    messages: list[str] = field(default_factory=list)

    def ready(self, status: str) -> None:
        self.messages.append(f"READY=1 STATUS={status}")

    def reloading(self) -> None:
        self.messages.append("RELOADING=1")

    def stopping(self) -> None:
        self.messages.append("STOPPING=1")

    def status(self, text: str) -> None:
        self.messages.append(f"STATUS={text}")

    def watchdog(self) -> None:
        self.messages.append("WATCHDOG=1")

    def kinds(self) -> list[str]:
        """Return the message kinds without STATUS-only updates."""
        return [m.split(" ")[0] for m in self.messages if not m.startswith("STATUS=")]


@dataclass
class Harness:
    simulator: Simulator
    service: Service
    notifier: FakeNotifier
    config_path: Path
    base: str
    session: aiohttp.ClientSession

    def sample(self, name: str, **labels: str) -> float | None:
        return self.service.registry.get_sample_value(name, labels)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as response:
            return response.status, await response.json()

    async def post(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.session.post(self.base + path, headers=headers) as response:
            return response.status, await response.json()

    async def wait_for(self, name: str, value: float, **labels: str) -> None:
        async with asyncio.timeout(10):
            while self.sample(name, **labels) != value:
                await asyncio.sleep(0.01)


RUN_TIMEOUT_SECONDS = 5400.0


def config_text(tmp_path: Path, simulator: Simulator, sites: list[tuple[str, list[str]]]) -> str:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    document: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path),
        "api_token_file": str(token),
        "defaults": {
            "retry_backoff": "0s",
            "request_timeout": "5s",
            "run_timeout": f"{RUN_TIMEOUT_SECONDS:g}s",
        },
        "sites": [
            {
                "name": name,
                "url": simulator.base_url(name),
                "platform": "joomla",
                "secret_env": "FLEET_SECRET",
                "labels": {"customer": "acme"},
                "schedules": [{"name": schedule, "cron": "0 3 * * *"} for schedule in schedules],
            }
            for name, schedules in sites
        ],
    }
    return json.dumps(document)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    simulator = Simulator(
        [
            SiteSpec(name="good", secret=SECRET, steps=5, warnings=((2, "w-one"), (3, "w-two"))),
            SiteSpec(name="bad", secret=SECRET, steps=5, faults=Faults(engine_error_at_step=3)),
            SiteSpec(name="extra", secret=SECRET, steps=3),
        ]
    )
    await simulator.start()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, simulator, [("good", ["nightly"]), ("bad", ["nightly"])]))
    notifier = FakeNotifier()
    service = Service(
        load_config(path, ENVIRON),
        notifier=notifier,
        environ=ENVIRON,
        handle_signals=False,
        shutdown_grace_seconds=5.0,
    )
    task = asyncio.create_task(service.serve())
    async with asyncio.timeout(10):
        await service.ready.wait()
    async with aiohttp.ClientSession() as session:
        yield Harness(
            simulator, service, notifier, path, f"http://127.0.0.1:{service.bound_port}", session
        )
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    await simulator.stop()


async def test_ready_after_listener_and_scheduler(harness: Harness) -> None:
    """READY=1 comes once, with a status line, and /readyz and /healthz agree."""
    assert harness.notifier.kinds() == ["READY=1"]
    assert "2 schedules, 0 running, 0 queued, next " in harness.notifier.messages[0]
    status, body = await harness.get("/readyz")
    assert (status, body["ready"]) == (200, True)
    async with harness.session.get(harness.base + "/healthz") as response:
        assert response.status == 200


async def test_counters_exist_from_the_start(harness: Harness) -> None:
    """Before any run, counters are 0, next-run and interval are set, last_status is absent."""
    labels = {"site": "good", "schedule": "nightly"}
    assert harness.sample("akeeba_backup_runs_total", **labels) == 0
    assert harness.sample("akeeba_backup_warnings_total", **labels) == 0
    assert harness.sample("akeeba_backup_running", **labels) == 0
    assert harness.sample("akeeba_backup_expected_interval_seconds", **labels) == 86400
    assert harness.sample("akeeba_backup_run_timeout_seconds", **labels) == RUN_TIMEOUT_SECONDS
    assert (harness.sample("akeeba_backup_next_run_timestamp_seconds", **labels) or 0) > 0
    assert harness.sample("akeeba_backup_last_status", **labels) is None
    assert harness.sample("akeeba_backupd_config_last_reload_successful") == 1
    assert harness.sample("akeeba_backupd_build_info", version="0.1.0") == 1


async def test_successful_run_metrics_and_api(harness: Harness) -> None:
    """A run-now backup ends in the metrics, the schedule view and the run history."""
    status, body = await harness.post("/api/v1/schedules/good/nightly/run")
    assert status == 202
    assert body["state"] in ("queued", "running")
    labels = {"site": "good", "schedule": "nightly"}
    await harness.wait_for("akeeba_backup_runs_total", 1, **labels)
    assert harness.sample("akeeba_backup_last_status", **labels) == 1
    assert harness.sample("akeeba_backup_progress_ratio", **labels) == 1
    assert harness.sample("akeeba_backup_last_warnings", **labels) == 2
    assert harness.sample("akeeba_backup_warnings_total", **labels) == 2
    assert harness.sample("akeeba_backup_archive_size_bytes", **labels) == 42_617_630
    assert harness.sample("akeeba_backup_consecutive_failures", **labels) == 0
    assert harness.sample("akeeba_backup_duration_seconds_count", **labels) == 1
    assert (harness.sample("akeeba_backup_last_success_timestamp_seconds", **labels) or 0) > 0
    assert (
        harness.sample("akeeba_api_requests_total", site="good", method="stepBackup", outcome="ok")
        == 5
    )
    info = harness.sample(
        "akeeba_site_info",
        site="good",
        api_level="600",
        version="9.9.3",
        edition="pro",
        platform="joomla",
        customer="acme",
    )
    assert info == 1
    _, schedules = await harness.get("/api/v1/schedules")
    good = next(item for item in schedules if item["site"] == "good")
    assert good["last"]["outcome"] == "succeeded"
    assert good["last"]["warnings"] == ["w-one", "w-two"]
    _, runs = await harness.get("/api/v1/runs?site=good")
    assert [run["outcome"] for run in runs] == ["succeeded"]
    assert harness.simulator.site("good").start_count == 1


async def test_failed_run_has_its_reason(harness: Harness) -> None:
    """An engine error at step 3 fails the run as remote_error, once, in every view."""
    await harness.post("/api/v1/schedules/bad/nightly/run")
    labels = {"site": "bad", "schedule": "nightly"}
    await harness.wait_for("akeeba_backup_runs_total", 1, **labels)
    assert harness.sample("akeeba_backup_last_status", **labels) == 0
    assert harness.sample("akeeba_backup_consecutive_failures", **labels) == 1
    assert harness.sample("akeeba_backup_failures_total", reason="remote_error", **labels) == 1
    assert harness.sample("akeeba_backup_last_failure_reason", reason="remote_error", **labels) == 1
    assert harness.sample("akeeba_backup_last_success_timestamp_seconds", **labels) is None
    _, runs = await harness.get("/api/v1/runs?site=bad&limit=5")
    assert runs[0]["reason"] == "remote_error"
    async with harness.session.get(harness.base + "/") as response:
        page = await response.text()
    assert "remote_error" in page
    assert "bad" in page


async def test_write_api_needs_the_token(harness: Harness) -> None:
    """POST without or with a wrong bearer token is refused; pause and resume work with it."""
    assert (await harness.post("/api/v1/schedules/good/nightly/run", token=None))[0] == 401
    assert (await harness.post("/api/v1/schedules/good/nightly/run", token="nope"))[0] == 401
    assert (await harness.post("/api/v1/schedules/good/nope/run"))[0] == 404
    status, body = await harness.post("/api/v1/schedules/good/nightly/pause")
    assert (status, body["paused"]) == (200, True)
    assert harness.sample("akeeba_backup_paused", site="good", schedule="nightly") == 1
    status, body = await harness.post("/api/v1/sites/good/resume")
    assert status == 200
    assert [item["paused"] for item in body] == [False]
    assert (await harness.post("/api/v1/schedules/good/nightly/cancel"))[0] == 409


async def test_reload_applies_the_difference(harness: Harness, tmp_path: Path) -> None:
    """A valid reload adds and removes schedules; their series appear and vanish."""
    harness.config_path.write_text(
        config_text(
            tmp_path, harness.simulator, [("good", ["nightly", "hourly"]), ("extra", ["nightly"])]
        )
    )
    assert harness.service.reload()
    assert harness.notifier.kinds() == ["READY=1", "RELOADING=1", "READY=1"]
    assert harness.sample("akeeba_backup_runs_total", site="good", schedule="hourly") == 0
    assert harness.sample("akeeba_backup_runs_total", site="extra", schedule="nightly") == 0
    assert harness.sample("akeeba_backup_runs_total", site="bad", schedule="nightly") is None
    assert (
        harness.sample(
            "akeeba_site_info",
            site="bad",
            api_level="",
            version="",
            edition="",
            platform="joomla",
            customer="acme",
        )
        is None
    )
    assert harness.sample("akeeba_backupd_config_last_reload_successful") == 1
    _, schedules = await harness.get("/api/v1/schedules")
    assert sorted((item["site"], item["schedule"]) for item in schedules) == [
        ("extra", "nightly"),
        ("good", "hourly"),
        ("good", "nightly"),
    ]


async def test_invalid_reload_keeps_the_old_config(harness: Harness) -> None:
    """A broken file is reported and changes nothing; the failure shows in metrics and STATUS."""
    harness.config_path.write_text("sites:\n  - name: [unterminated\n")
    assert not harness.service.reload()
    assert harness.sample("akeeba_backupd_config_last_reload_successful") == 0
    assert harness.sample("akeeba_backup_runs_total", site="bad", schedule="nightly") == 0
    assert harness.notifier.kinds() == ["READY=1", "RELOADING=1", "READY=1"]
    assert "reload failed" in harness.notifier.messages[-1]
    assert "last reload FAILED" in harness.service.status_line()


async def test_stop_during_a_run_suspends_it(tmp_path: Path) -> None:
    """A stop request mid-run sends STOPPING=1 and ends serve() with 0 within the grace."""
    simulator = Simulator([SiteSpec(name="slow", secret=SECRET, steps=50, step_seconds=0.05)])
    await simulator.start()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, simulator, [("slow", ["nightly"])]))
    notifier = FakeNotifier()
    service = Service(
        load_config(path, ENVIRON), notifier=notifier, environ=ENVIRON, handle_signals=False
    )
    task = asyncio.create_task(service.serve())
    await asyncio.wait_for(service.ready.wait(), 10)
    service.trigger("slow", "nightly")
    async with asyncio.timeout(10):
        while (
            service.registry.get_sample_value(
                "akeeba_backup_step_number", {"site": "slow", "schedule": "nightly"}
            )
            or 0
        ) < 4:
            await asyncio.sleep(0.01)
    service.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert notifier.kinds()[-1] == "STOPPING=1"
    site = simulator.site("slow")
    assert site.start_count == 1
    assert site.running  # suspended, not abandoned: the server still holds the run's state
    await simulator.stop()


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("text/plain", "text/plain; version=0.0.4; charset=utf-8"),
        (
            "application/openmetrics-text; version=1.0.0",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    ],
)
async def test_metrics_formats_gzip_and_no_created(
    harness: Harness, accept: str, content_type: str
) -> None:
    """/metrics speaks the classic text and OpenMetrics formats, gzips on request, and exports
    no ``_created`` series (they would double the series count for nothing)."""
    headers = {"Accept": accept, "Accept-Encoding": "gzip"}
    async with harness.session.get(
        harness.base + "/metrics", headers=headers, auto_decompress=False
    ) as response:
        assert response.status == 200
        # Newer prometheus-client versions append parameters (escaping=...).
        assert response.headers["Content-Type"].startswith(content_type)
        assert response.headers.get("Content-Encoding") == "gzip"
        raw = await response.read()
    text = gzip.decompress(raw).decode()
    assert "akeeba_backup_runs_total{" in text
    assert "_created" not in text
    if "openmetrics" in accept:
        assert text.rstrip().endswith("# EOF")
