"""Measure DESIGN.md §11: ``python -m bench.run [steps|idle|burst|scrape ...] [--quick]``.

Every scenario starts its own simulator (``bench.sim_server``, one or more processes) and daemon
(``python -m akeeba_backupd run`` on a generated configuration in a temporary directory), drives
it, and prints one table; CPU time and memory come from /proc. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Daemon, Schedule, Simulator, cpu_seconds, rss_bytes
from bench.sim_server import SECRET, site_name


@dataclass
class Row:
    scenario: str
    figure: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None

    def show(self) -> str:
        value = f"{self.value:,.3f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        met = "" if self.met is None else ("met" if self.met else "MISSED")
        return f"| {self.scenario} | {self.figure} | {value} {self.unit} | {self.target} | {met} |"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Return the ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def far_cron(now: datetime) -> Iterator[str]:
    """Yield crons that fire 12 hours from now at the earliest: never during a benchmark."""
    hour = (now.hour + 12) % 24
    yield f"H {hour} * * *"
    yield f"H {hour} * * H"
    yield f"H {hour} H * *"
    yield f"H/15 {hour} * * *"


@contextlib.asynccontextmanager
async def http() -> Any:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        yield session


# --- 1. steps: daemon CPU per step against a bare aiohttp client ------------------------------


async def scenario_steps(args: argparse.Namespace, workdir: Path) -> list[Row]:
    sites, steps = (50, 10) if args.quick else (args.backups, args.steps)
    simulator = Simulator(sites, steps=steps, shards=args.sim_shards)
    daemon = Daemon(
        workdir / "steps",
        simulator,
        sites,
        [Schedule("s1", next(far_cron(datetime.now(UTC))))],
        max_concurrent=sites,
    )
    urls = workdir / "steps-sites.json"
    urls.write_text(json.dumps([simulator.url(n) for n in range(1, sites + 1)]), "utf-8")
    daemon_per_step: list[float] = []
    bare_per_step: list[float] = []
    ratios: list[float] = []
    sim_daemon: list[float] = []
    sim_bare: list[float] = []
    walls: list[tuple[float, float]] = []
    try:
        async with http() as session:
            daemon.start()
            await daemon.wait_ready(session)
            await simulator.wait_calls(session, "listBackups", sites, 120)  # startup seeding
            targets = [(site_name(n), "s1") for n in range(1, sites + 1)]
            for repetition in range(args.repeat or 3):
                before = await simulator.stats(session)
                cpu0, sim0, wall0 = cpu_seconds(daemon.pid), simulator.cpu(), time.monotonic()
                await daemon.trigger_all(session, targets)
                after = await simulator.wait_calls(
                    session, "getBackupInfo", before.get("getBackupInfo", 0) + sites, 900
                )
                wall = time.monotonic() - wall0
                await asyncio.sleep(1.0)  # the daemon records the outcomes
                cpu1, sim1 = cpu_seconds(daemon.pid), simulator.cpu()
                done = after["stepBackup"] - before.get("stepBackup", 0)
                runs = (await daemon.runs(session, sites))[:sites]
                failed = [run for run in runs if run["outcome"] != "succeeded"]
                if failed:
                    raise RuntimeError(f"{len(failed)} daemon runs failed: {failed[0]}")
                bare = await bare_client(
                    urls, simulator, skip_version=repetition > 0, step_count=done
                )
                daemon_step = (cpu1 - cpu0) / done
                daemon_per_step.append(daemon_step * 1e6)
                bare_per_step.append(bare["cpu_per_step"] * 1e6)
                ratios.append(daemon_step / bare["cpu_per_step"])
                sim_daemon.append((sim1 - sim0) / done * 1e6)
                sim_bare.append(bare["sim_per_step"] * 1e6)
                walls.append((wall, bare["wall"]))
                print(
                    f"  steps #{repetition + 1}: {done} steps; daemon {daemon_step * 1e6:.0f} µs"
                    f"/step in {wall:.1f} s, bare {bare['cpu_per_step'] * 1e6:.0f} µs/step in "
                    f"{bare['wall']:.1f} s, ratio {ratios[-1]:.2f}; simulator "
                    f"{sim_daemon[-1]:.0f} / {sim_bare[-1]:.0f} µs/step",
                    file=sys.stderr,
                )
    finally:
        daemon.stop()
        simulator.stop()
    ratio = median(ratios)
    name = f"steps ({sites}×{steps})"
    return [
        Row(name, "daemon CPU per step", median(daemon_per_step), "µs"),
        Row(name, "bare aiohttp CPU per step", median(bare_per_step), "µs"),
        Row(name, "ratio daemon / bare", ratio, "×", "≤ 1.5", ratio <= 1.5),
        Row(name, "simulator CPU per step (daemon run)", median(sim_daemon), "µs"),
        Row(name, "simulator CPU per step (bare run)", median(sim_bare), "µs"),
        Row(name, "wall time daemon run", median([w[0] for w in walls]), "s"),
        Row(name, "wall time bare run", median([w[1] for w in walls]), "s"),
    ]


async def bare_client(
    urls: Path, simulator: Simulator, *, skip_version: bool, step_count: int
) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bare_client", str(urls), "--secret", SECRET]
    if skip_version:
        command.append("--skip-version")
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        if (await loop.run_in_executor(None, process.stdout.readline)).strip() != "ready":
            raise RuntimeError("the bare client did not start")
        cpu0, sim0, wall0 = cpu_seconds(process.pid), simulator.cpu(), time.monotonic()
        process.stdin.write("go\n")
        process.stdin.flush()
        line = await loop.run_in_executor(None, process.stdout.readline)
        wall = time.monotonic() - wall0
        cpu1, sim1 = cpu_seconds(process.pid), simulator.cpu()
        process.stdin.write("exit\n")
        process.stdin.flush()
    finally:
        process.wait(30)
    summary = json.loads(line.removeprefix("done "))
    if summary["failures"] or summary["steps"] != step_count:
        raise RuntimeError(f"bare client: {summary}")
    steps = summary["steps"]
    return {
        "cpu_per_step": (cpu1 - cpu0) / steps,
        "sim_per_step": (sim1 - sim0) / steps,
        "wall": wall,
    }


# --- 2. idle: 10,000 schedules, nothing due -------------------------------------------------


async def scenario_idle(args: argparse.Namespace, workdir: Path) -> list[Row]:
    sites = 100 if args.quick else args.idle_sites
    idle = 3.0 if args.quick else args.idle_seconds
    schedules = [Schedule(f"s{i}", cron) for i, cron in enumerate(far_cron(datetime.now(UTC)))]
    simulator = Simulator(sites, steps=10, shards=args.sim_shards)
    startups: list[float] = []
    seedings: list[float] = []
    rss: list[float] = []
    cpu: list[float] = []
    try:
        async with http() as session:
            for repetition in range(args.repeat or (1 if args.quick else 3)):
                daemon = Daemon(
                    workdir / f"idle-{repetition}",
                    simulator,
                    sites,
                    schedules,
                    max_concurrent=10,
                )
                try:
                    before = await simulator.stats(session)
                    daemon.start()
                    startups.append(await daemon.wait_ready(session))
                    await simulator.wait_calls(
                        session, "listBackups", before.get("listBackups", 0) + sites, 300
                    )
                    seedings.append(time.monotonic() - daemon.started_at)
                    await asyncio.sleep(2.0)
                    cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
                    await asyncio.sleep(idle)
                    cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
                    cpu.append((cpu1 - cpu0) / (wall1 - wall0) * 100)
                    rss.append(rss_bytes(daemon.pid) / 2**20)
                    print(
                        f"  idle #{repetition + 1}: ready in {startups[-1]:.2f} s, seeded in "
                        f"{seedings[-1]:.2f} s, RSS {rss[-1]:.0f} MiB, CPU {cpu[-1]:.2f} % "
                        f"over {wall1 - wall0:.0f} s",
                        file=sys.stderr,
                    )
                finally:
                    daemon.stop()
    finally:
        simulator.stop()
    name = f"idle ({sites * len(schedules):,} schedules)"
    startup, memory, load = median(startups), median(rss), median(cpu)
    return [
        Row(name, "startup (exec → /readyz 200)", startup, "s", "< 3 s", startup < 3),
        Row(name, "startup seeding done (listBackups of every site)", median(seedings), "s"),
        Row(name, "RSS after startup", memory, "MiB", "< 200 MB", memory * 2**20 < 200e6),
        Row(name, f"CPU over {idle:.0f} s idle", load, "%", "< 1 %", load < 1),
    ]


# --- 3. burst: 1,000 schedules due in the same minute ---------------------------------------


def step_delays(trace: list[list[Any]], sleep_seconds: float) -> list[float]:
    """Return, per step request, the time since the site's previous reply minus sleepTime."""
    by_site: dict[str, list[list[Any]]] = {}
    for record in trace:
        by_site.setdefault(record[0], []).append(record)
    delays = []
    for records in by_site.values():
        records.sort(key=lambda record: record[3])
        for previous, current in itertools.pairwise(records):
            if current[1] == "stepBackup" and previous[1] in ("startBackup", "stepBackup"):
                delays.append(current[3] - previous[4] - sleep_seconds)
    return delays


async def scenario_burst(args: argparse.Namespace, workdir: Path) -> list[Row]:
    sites = 50 if args.quick else args.backups
    steps, step_seconds = (5, 0.2) if args.quick else (args.burst_steps, args.burst_step_seconds)
    repeat = args.repeat or 1
    simulator = Simulator(
        sites,
        steps=steps,
        step_seconds=step_seconds,
        sleep_time_ms=args.sleep_time_ms,
        shards=args.sim_shards,
        trace=True,
        jitter=args.step_jitter,
    )
    # Quick mode cannot wait for a minute boundary: run-now triggers stand in for due times.
    cron = next(far_cron(datetime.now(UTC))) if args.quick else "* * * * *"
    daemon = Daemon(
        workdir / "burst", simulator, sites, [Schedule("s1", cron)], max_concurrent=sites
    )
    start_lags: list[float] = []
    arrival_lags: list[float] = []
    delays: list[float] = []
    cpu_daemon: list[float] = []
    cpu_sim: list[float] = []
    try:
        async with http() as session:
            daemon.start()
            await daemon.wait_ready(session)
            await simulator.wait_calls(session, "listBackups", sites, 120)
            await simulator.trace(session)  # forget the seeding calls
            for repetition in range(repeat):
                before = await simulator.stats(session)
                cpu0, sim0, wall0 = cpu_seconds(daemon.pid), simulator.cpu(), time.monotonic()
                due: dict[str, float] = {}
                if args.quick:
                    sent = await daemon.trigger_all(
                        session, [(site_name(n), "s1") for n in range(1, sites + 1)]
                    )
                    due = {site: moment for (site, _), moment in sent.items()}
                else:
                    fire = (datetime.now(UTC) + timedelta(minutes=1)).replace(
                        second=0, microsecond=0
                    )
                    due = dict.fromkeys(
                        (site_name(n) for n in range(1, sites + 1)), fire.timestamp()
                    )
                    print(f"  burst #{repetition + 1}: due at {fire:%H:%M:%S}", file=sys.stderr)
                    await asyncio.sleep(max(0.0, fire.timestamp() - time.time()))
                    cpu0, sim0, wall0 = cpu_seconds(daemon.pid), simulator.cpu(), time.monotonic()
                await simulator.wait_calls(
                    session, "getBackupInfo", before.get("getBackupInfo", 0) + sites, 900
                )
                wall = time.monotonic() - wall0
                await asyncio.sleep(1.0)
                cpu_daemon.append((cpu_seconds(daemon.pid) - cpu0) / wall * 100)
                cpu_sim.append((simulator.cpu() - sim0) / wall * 100)
                trace = await simulator.trace(session)
                runs = (await daemon.runs(session, sites))[:sites]
                bad = [run for run in runs if run["outcome"] != "succeeded"]
                if bad:
                    raise RuntimeError(f"{len(bad)} runs did not succeed: {bad[0]}")
                for run in runs:
                    started = datetime.fromisoformat(run["started_at"]).timestamp()
                    start_lags.append(started - due[run["site"]])
                arrival_lags += [
                    record[3] - due[record[0]] for record in trace if record[1] == "startBackup"
                ]
                delays += step_delays(trace, args.sleep_time_ms / 1000)
                for method in ("getVersion", "getProfiles", "startBackup"):
                    lags = [record[3] - due[record[0]] for record in trace if record[1] == method]
                    if lags:
                        print(
                            f"  burst #{repetition + 1}: {method} arrival lag p50/p99 "
                            f"{median(lags) * 1000:.0f}/{percentile(lags, 99) * 1000:.0f} ms",
                            file=sys.stderr,
                        )
                print(
                    f"  burst #{repetition + 1}: {len(runs)} runs in {wall:.1f} s, daemon CPU "
                    f"{cpu_daemon[-1]:.0f} %, simulator CPU {cpu_sim[-1]:.0f} %",
                    file=sys.stderr,
                )
    finally:
        daemon.stop()
        simulator.stop()
    name = (
        f"burst ({sites} due{' (run-now)' if args.quick else ''}, "
        f"{steps}×{step_seconds:g}±{args.step_jitter * 100:.0f}% s)"
    )
    ms = 1000.0
    return [
        Row(name, "start lag p50 (run started_at − due)", median(start_lags) * ms, "ms"),
        Row(
            name,
            "start lag p99",
            percentile(start_lags, 99) * ms,
            "ms",
            "< 1000 ms",
            percentile(start_lags, 99) < 1,
        ),
        Row(name, "start lag max", max(start_lags) * ms, "ms"),
        Row(
            name, "startBackup arrival lag p99 (simulator)", percentile(arrival_lags, 99) * ms, "ms"
        ),
        Row(name, "daemon delay per step p50", median(delays) * ms, "ms"),
        Row(
            name,
            "daemon delay per step p99",
            percentile(delays, 99) * ms,
            "ms",
            "< 100 ms",
            percentile(delays, 99) < 0.1,
        ),
        Row(name, "daemon delay per step max", max(delays) * ms, "ms"),
        Row(name, "daemon CPU during burst", median(cpu_daemon), "%"),
        Row(name, "simulator CPU during burst", median(cpu_sim), "%"),
    ]


# --- 4. scrape: /metrics with 10,000 schedules while 1,000 backups run -----------------------


async def scenario_scrape(args: argparse.Namespace, workdir: Path) -> list[Row]:
    sites = 100 if args.quick else args.idle_sites
    running = 50 if args.quick else args.backups
    scrapes = 5 if args.quick else args.scrapes
    schedules = [Schedule(f"s{i}", cron) for i, cron in enumerate(far_cron(datetime.now(UTC)))]
    simulator = Simulator(sites, steps=100_000, step_seconds=2.0, shards=args.sim_shards)
    daemon = Daemon(workdir / "scrape", simulator, sites, schedules, max_concurrent=running)
    latencies: list[float] = []
    sizes: list[int] = []
    gzip_sizes: list[int] = []
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    try:
        async with http() as session, aiohttp.ClientSession(auto_decompress=False) as raw:
            daemon.start()
            await daemon.wait_ready(session)
            await simulator.wait_calls(session, "listBackups", sites, 300)
            await daemon.trigger_all(session, [(site_name(n), "s0") for n in range(1, running + 1)])
            await simulator.wait_calls(session, "stepBackup", running, 300)
            # The first scrape renders every line; later ones only what changed since.
            began = time.perf_counter()
            async with raw.get(
                daemon.base + "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"}
            ) as response:
                await response.read()
            first_scrape = time.perf_counter() - began
            for _ in range(scrapes):
                await asyncio.sleep(0.5)
                began = time.perf_counter()
                async with raw.get(
                    daemon.base + "/metrics",
                    headers={"Accept": accept, "Accept-Encoding": "gzip"},
                ) as response:
                    body = await response.read()
                    encoding = response.headers.get("Content-Encoding", "")
                latencies.append(time.perf_counter() - began)
                print(f"  scrape {len(latencies)}: {latencies[-1] * 1000:.0f} ms", file=sys.stderr)
                gzip_sizes.append(len(body))
                sizes.append(len(gzip.decompress(body) if encoding == "gzip" else body))
            stats = await simulator.stats(session)
            print(
                f"  scrape: {scrapes} scrapes, {stats.get('startBackup', 0)} backups started, "
                f"{sizes[-1]:,} bytes ({gzip_sizes[-1]:,} gzipped)",
                file=sys.stderr,
            )
    finally:
        daemon.stop()
        simulator.stop()
    name = f"scrape ({sites * len(schedules):,} schedules, {running} running)"
    ms = 1000.0
    p99 = percentile(latencies, 99)
    return [
        Row(name, "/metrics first scrape (renders every line)", first_scrape * ms, "ms"),
        Row(name, "/metrics latency p50", median(latencies) * ms, "ms"),
        Row(name, "/metrics latency p99", p99 * ms, "ms", "< 300 ms", p99 < 0.3),
        Row(name, "/metrics size", median(sizes) / 1e6, "MB"),
        Row(name, "/metrics size gzipped", median(gzip_sizes) / 1e6, "MB"),
    ]


SCENARIOS: dict[str, Callable[[argparse.Namespace, Path], Any]] = {
    "steps": scenario_steps,
    "idle": scenario_idle,
    "burst": scenario_burst,
    "scrape": scenario_scrape,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], metavar="SCENARIO")
    parser.add_argument("--quick", action="store_true", help="small N, short: under a minute")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3 steps/idle, 1 others)")
    parser.add_argument("--backups", type=int, default=1000, help="backups at once (1000)")
    parser.add_argument("--steps", type=int, default=50, help="steps per backup in 'steps' (50)")
    parser.add_argument("--idle-sites", type=int, default=2500, help="sites × 4 schedules (2500)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--burst-steps", type=int, default=10)
    parser.add_argument("--burst-step-seconds", type=float, default=1.0)
    parser.add_argument(
        "--step-jitter", type=float, default=0.5, help="burst: site step time × U(1±j) (0.5)"
    )
    parser.add_argument("--sleep-time-ms", type=int, default=0, help="the sites' sleepTime")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--sim-shards", type=int, default=1, help="simulator processes")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if not args.scenarios:
        args.scenarios = list(SCENARIOS)
    return args


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="akeeba-bench-") as workdir:
        for name in args.scenarios:
            began = time.monotonic()
            print(f"{name}…", file=sys.stderr)
            rows += await SCENARIOS[name](args, Path(workdir))
            print(f"{name}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(main_async(args))
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}"
        f"{' (--quick)' if args.quick else ''}\n"
    )
    print("| scenario | figure | value | target | |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row.show())
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1), "utf-8")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
