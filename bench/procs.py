"""The processes of a benchmark: simulator shards, the daemon, and how to measure them via /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.sim_server import SECRET, site_name

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of process ``pid`` (all its threads) so far."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM ``process``, then SIGKILL it if it has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Shard:
    process: subprocess.Popen[str]
    first: int
    count: int
    port: int
    control_port: int


class Simulator:
    """A fleet of ``sites`` simulated sites served by ``shards`` processes."""

    def __init__(
        self,
        sites: int,
        *,
        steps: int,
        step_seconds: float = 0.0,
        sleep_time_ms: int = 0,
        shards: int = 1,
        trace: bool = False,
        jitter: float = 0.0,
    ) -> None:
        self.sites = sites
        self.shards: list[Shard] = []
        per_shard = -(-sites // shards)
        first = 1
        while first <= sites:
            count = min(per_shard, sites - first + 1)
            command = [
                sys.executable,
                "-m",
                "bench.sim_server",
                "--first",
                str(first),
                "--count",
                str(count),
                "--steps",
                str(steps),
                "--step-seconds",
                str(step_seconds),
                "--sleep-time-ms",
                str(sleep_time_ms),
                "--jitter",
                str(jitter),
            ]
            if trace:
                command.append("--trace")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the simulator did not start")
            info = json.loads(line)
            self.shards.append(Shard(process, first, count, info["port"], info["control_port"]))
            first += count

    def url(self, number: int) -> str:
        """Return the base URL of site ``number``."""
        for shard in self.shards:
            if shard.first <= number < shard.first + shard.count:
                return f"http://127.0.0.1:{shard.port}/{site_name(number)}/"
        raise KeyError(number)

    def cpu(self) -> float:
        return sum(cpu_seconds(shard.process.pid) for shard in self.shards)

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Return calls by method (and ``completed`` backups) summed over the shards."""
        total: dict[str, int] = {}
        for shard in self.shards:
            async with session.get(f"http://127.0.0.1:{shard.control_port}/stats") as response:
                body = await response.json()
            for method, count in body["calls"].items():
                total[method] = total.get(method, 0) + count
            total["completed"] = total.get("completed", 0) + body["completed"]
        return total

    async def wait_calls(
        self, session: aiohttp.ClientSession, method: str, at_least: int, timeout: float
    ) -> dict[str, int]:
        """Poll the stats until ``method`` was called ``at_least`` times; return them."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats(session)
            if stats.get(method, 0) >= at_least:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: {stats.get(method, 0)} of {at_least} calls")
            await asyncio.sleep(0.1)

    async def trace(self, session: aiohttp.ClientSession) -> list[list[Any]]:
        records: list[list[Any]] = []
        for shard in self.shards:
            async with session.get(f"http://127.0.0.1:{shard.control_port}/trace") as response:
                records.extend(await response.json())
        return records

    def stop(self) -> None:
        for shard in self.shards:
            stop_process(shard.process)


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str


class Daemon:
    """``akeeba-backupd run`` on a generated configuration of ``sites`` sites."""

    def __init__(
        self,
        workdir: Path,
        simulator: Simulator,
        sites: int,
        schedules: list[Schedule],
        *,
        max_concurrent: int,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        secret = workdir / "secret"
        secret.write_text(SECRET + "\n", encoding="utf-8")
        secret.chmod(0o600)
        state = workdir / "state"
        state.mkdir(exist_ok=True)
        lines = [
            f'listen: "127.0.0.1:{self.port}"',
            f'state_dir: "{state}"',
            "defaults:",
            "  timezone: UTC",
            "  request_timeout: 120s",
            "  misfire: skip",
            "  retry_backoff: 1s",
            "limits:",
            f"  max_concurrent: {max_concurrent}",
            "sites:",
        ]
        for number in range(1, sites + 1):
            lines += [
                f"  - name: {site_name(number)}",
                f'    url: "{simulator.url(number)}"',
                "    platform: joomla",
                "    api: v2",
                f'    secret_file: "{secret}"',
                "    schedules:",
            ]
            for schedule in schedules:
                lines += [
                    f"      - name: {schedule.name}",
                    f'        cron: "{schedule.cron}"',
                ]
        self.config = workdir / "config.yaml"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.log = workdir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.started_at = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "akeeba_backupd", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 120.0) -> float:
        """Poll /readyz until it answers 200; return seconds since :meth:`start`."""
        assert self.process is not None
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {self.log}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base + "/readyz") as response:
                    if response.status == 200:
                        return time.monotonic() - self.started_at
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the daemon was not ready within {timeout} s; see {self.log}")

    async def trigger_all(
        self, session: aiohttp.ClientSession, targets: list[tuple[str, str]], parallel: int = 8
    ) -> dict[tuple[str, str], float]:
        """POST run-now for every (site, schedule); return when each request was sent."""
        sent: dict[tuple[str, str], float] = {}
        queue = list(reversed(targets))

        async def worker() -> None:
            while queue:
                site, schedule = queue.pop()
                sent[site, schedule] = time.time()
                url = f"{self.base}/api/v1/schedules/{site}/{schedule}/run"
                async with session.post(url) as response:
                    if response.status != 202:
                        raise RuntimeError(f"run-now {site}/{schedule}: HTTP {response.status}")
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(parallel)))
        return sent

    async def runs(self, session: aiohttp.ClientSession, limit: int = 1000) -> list[dict[str, Any]]:
        async with session.get(f"{self.base}/api/v1/runs?limit={limit}") as response:
            body: list[dict[str, Any]] = await response.json()
        return body

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
