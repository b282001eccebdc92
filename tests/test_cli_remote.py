"""The CLI's status/trigger/pause/resume/cancel verbs, run as processes against a live daemon."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from akeeba_backupd.config import load_config
from akeeba_backupd.service import Service
from akeeba_backupd.simulator import Simulator, SiteSpec

SECRET = "cli-secret-1"
TOKEN = "cli-token-2"
CLI = [sys.executable, "-m", "akeeba_backupd"]


@dataclass
class Daemon:
    service: Service
    simulator: Simulator
    url: str
    token_file: Path


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    simulator = Simulator([SiteSpec(name="shop", secret=SECRET, steps=40, step_seconds=0.05)])
    await simulator.start()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    config = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path),
        "api_token_file": str(token_file),
        "sites": [
            {
                "name": "shop",
                "url": simulator.base_url("shop"),
                "secret_env": "SHOP_SECRET",
                "schedules": [{"name": "nightly", "cron": "0 3 * * *"}],
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    environ = {"SHOP_SECRET": SECRET}
    service = Service(load_config(path, environ), environ=environ, handle_signals=False)
    task = asyncio.create_task(service.serve())
    await asyncio.wait_for(service.ready.wait(), 10)
    yield Daemon(service, simulator, f"http://127.0.0.1:{service.bound_port}", token_file)
    service.request_stop()
    await asyncio.wait_for(task, 15)
    await simulator.stop()


async def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI as a process; return (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_status_lists_schedules(daemon: Daemon) -> None:
    """`status` prints one line per schedule with its state and next run."""
    code, out, err = await cli("status", "--url", daemon.url)
    assert (code, err) == (0, "")
    assert "shop/nightly" in out
    assert "idle" in out


async def test_trigger_needs_the_token(daemon: Daemon) -> None:
    """`trigger` without the token is refused (exit 1, one line); with it, the run starts."""
    code, out, err = await cli("trigger", "shop/nightly", "--url", daemon.url)
    assert code == 1
    assert "401" in err
    assert "Traceback" not in err
    code, out, err = await cli(
        "trigger", "shop/nightly", "--url", daemon.url, "--token-file", str(daemon.token_file)
    )
    assert (code, err) == (0, "")
    assert out.startswith("shop/nightly: ")
    async with asyncio.timeout(10):
        while daemon.simulator.site("shop").start_count == 0:
            await asyncio.sleep(0.02)
    code, out, err = await cli(
        "cancel", "shop/nightly", "--url", daemon.url, "--token-file", str(daemon.token_file)
    )
    assert code == 0, err
    labels = {"site": "shop", "schedule": "nightly"}
    async with asyncio.timeout(10):
        while daemon.service.registry.get_sample_value("akeeba_backup_runs_total", labels) != 1:
            await asyncio.sleep(0.02)
    reason = daemon.service.registry.get_sample_value(
        "akeeba_backup_last_failure_reason", {**labels, "reason": "interrupted"}
    )
    assert reason == 1


async def test_pause_and_resume_a_site(daemon: Daemon) -> None:
    """`pause SITE` pauses every schedule of the site; `resume` undoes it."""
    token = ["--url", daemon.url, "--token-file", str(daemon.token_file)]
    code, out, _ = await cli("pause", "shop", *token)
    assert (code, out.strip()) == (0, "shop/nightly: idle (paused)")
    code, out, _ = await cli("resume", "shop/nightly", *token)
    assert (code, out.strip()) == (0, "shop/nightly: idle")


async def test_unreachable_daemon_exits_3() -> None:
    """Nothing listening: exit 3 with one line naming the URL."""
    code, _, err = await cli("status", "--url", "http://127.0.0.1:9")
    assert code == 3
    assert "http://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1


async def test_unknown_schedule_is_one_line(daemon: Daemon) -> None:
    """An unknown schedule is the daemon's 404, said in one line, exit 1."""
    code, _, err = await cli(
        "trigger", "shop/nope", "--url", daemon.url, "--token-file", str(daemon.token_file)
    )
    assert code == 1
    assert "404" in err
    assert "no schedule shop/nope" in err
