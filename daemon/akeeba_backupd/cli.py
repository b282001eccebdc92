"""The ``akeeba-backupd`` command line (DESIGN.md §8).

Exit codes (also in the README):

- 0: success;
- 1: a runtime failure (the listener could not bind, a probe or backup failed, the daemon's API
  answered with an error);
- 2: a usage or configuration error (every problem is printed first, one per line);
- 3: the running daemon could not be reached (``status``, ``trigger``, ``pause``, ``resume``,
  ``cancel``).

Operator mistakes get one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

from akeeba_backupd import __version__
from akeeba_backupd.akeeba import AkeebaError, SiteAddress, SiteRemote
from akeeba_backupd.clock import SystemClock
from akeeba_backupd.config import Config, ConfigError, load_config
from akeeba_backupd.logsetup import configure_logging
from akeeba_backupd.run import (
    BackupRun,
    RunBegan,
    RunEvent,
    RunFinished,
    RunOutcome,
    RunSpec,
    StepDone,
    StepRetried,
    WarningRaised,
)
from akeeba_backupd.scheduler import make_run_id
from akeeba_backupd.service import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    Service,
    client_settings,
    render_description,
)
from akeeba_backupd.simulator import Faults, Simulator, SiteSpec

EXIT_UNREACHABLE = 3
DEFAULT_URL = "http://127.0.0.1:9489"
DEMO_SIMULATOR_PORT = 8730
DEMO_SECRET_VARIABLE = "AKEEBA_DEMO_SECRET"  # noqa: S105 - a variable name, not a secret
DEMO_SECRET = "demo-secret"  # noqa: S105 - the simulated fleet's published demo secret

log = logging.getLogger("akeeba_backupd")


class _Fail(Exception):
    """An operator-facing failure: one line, then the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level)
    except ValueError as error:
        parser.error(str(error))
    try:
        code: int = args.handler(args)
    except _Fail as failure:
        print(f"akeeba-backupd: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akeeba-backupd",
        description="Scheduled Akeeba Backup runs for many sites, watched by Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("AKEEBA_BACKUPD_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default info, or $AKEEBA_BACKUPD_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub

    run = command("run", "run the daemon")
    _add_config(run)
    run.add_argument(
        "--shutdown-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long runs get to finish their current step at shutdown (default 60)",
    )
    run.set_defaults(handler=_run)

    check = command("check", "validate a configuration file (exit 0, or 2 with every problem)")
    _add_config(check)
    check.set_defaults(handler=_check)

    probe = command("probe", "contact one site: reachable? secret right? API level, profiles")
    _add_config(probe)
    probe.add_argument("site", help="the site's name in the configuration")
    probe.set_defaults(handler=_probe)

    backup = command(
        "backup", "run one backup of a site now, in the foreground, printing each step"
    )
    _add_config(backup)
    backup.add_argument("target", metavar="SITE[/SCHEDULE]", help="default: the first schedule")
    backup.set_defaults(handler=_backup)

    simulate = command("simulate", "serve a simulated fleet of Akeeba sites")
    simulate.add_argument("--sites", type=int, default=10, help="how many sites (default 10)")
    simulate.add_argument("--port", type=int, default=DEMO_SIMULATOR_PORT)
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--api", choices=("v2", "v1"), default="v2")
    simulate.add_argument("--steps", type=int, default=19, help="steps per backup (default 19)")
    simulate.add_argument(
        "--step-seconds", type=float, default=0.0, help="server time per step (default 0)"
    )
    simulate.add_argument("--secret", default=DEMO_SECRET)
    simulate.set_defaults(handler=_simulate)

    demo = command("demo", "run a simulated fleet and the daemon backing it up")
    demo.add_argument("--port", type=int, default=9489, help="the daemon's HTTP port (9489)")
    demo.add_argument(
        "--simulator-port", type=int, default=DEMO_SIMULATOR_PORT, help="the fleet's port (8730)"
    )
    demo.set_defaults(handler=_demo)

    for name, help_text in (
        ("status", "show the schedules of a running daemon"),
        ("trigger", "run a schedule now: SITE/SCHEDULE"),
        ("pause", "pause SITE or SITE/SCHEDULE"),
        ("resume", "resume SITE or SITE/SCHEDULE"),
        ("cancel", "cancel the running or queued run of SITE/SCHEDULE"),
    ):
        sub = command(name, help_text)
        if name != "status":
            sub.add_argument(
                "target",
                metavar="SITE/SCHEDULE" if name in ("trigger", "cancel") else "SITE[/SCHEDULE]",
            )
        sub.add_argument("--url", default=os.environ.get("AKEEBA_BACKUPD_URL", DEFAULT_URL))
        sub.add_argument("--token-file", type=Path, help="file holding the API bearer token")
        sub.set_defaults(handler=_remote_command, action=name)
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("AKEEBA_BACKUPD_CONFIG", "/etc/akeeba-backupd/config.yaml")),
        help="the YAML configuration (default /etc/akeeba-backupd/config.yaml)",
    )


def _load(path: Path, environ: dict[str, str] | None = None) -> Config:
    try:
        return load_config(path, environ if environ is not None else dict(os.environ))
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        raise _Fail(
            f"{path}: {len(error.issues)} problem(s) in the configuration", EXIT_CONFIG
        ) from None
    except OSError as error:
        raise _Fail(f"cannot read {path}: {error.strerror or error}", EXIT_CONFIG) from None


# --- run, check ----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    service = Service(config, shutdown_grace_seconds=args.shutdown_grace)
    return asyncio.run(service.serve())


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    schedules = sum(len(site.schedules) for site in config.sites)
    print(f"{args.config}: OK: {len(config.sites)} site(s), {schedules} schedule(s)")
    return EXIT_OK


# --- probe, backup ---------------------------------------------------------------------------


def _site(config: Config, name: str) -> Any:
    for site in config.sites:
        if site.name == name:
            return site
    known = ", ".join(site.name for site in config.sites) or "none"
    raise _Fail(f"no site {name!r} in {config.source_path} (sites: {known})", EXIT_CONFIG)


def _probe(args: argparse.Namespace) -> int:
    config = _load(args.config)
    site = _site(config, args.site)
    return asyncio.run(_probe_site(site))


async def _probe_site(site: Any) -> int:
    clock = SystemClock()
    async with aiohttp.ClientSession() as session:
        remote = SiteRemote(
            session,
            SiteAddress(site.url, site.platform, site.api, site.endpoint),
            site.secret,
            clock,
            client_settings(site),
        )
        try:
            detection = await remote.connect()
            profiles = await remote.get_profiles()
        except AkeebaError as error:
            print(f"{site.name}: FAILED ({error.reason}): {error.message}")
            return EXIT_FAILURE
    from akeeba_backupd.akeeba import redact_url

    print(f"{site.name}: OK")
    print(f"  endpoint: {redact_url(detection.endpoint.url)} (API {detection.endpoint.generation})")
    print(f"  server:   {detection.version.describe()}")
    print("  profiles: " + ", ".join(f"{p.id} {p.name!r}" for p in profiles))
    wanted = {schedule.profile for schedule in site.schedules}
    missing = sorted(wanted - {profile.id for profile in profiles})
    if missing:
        print(f"  WARNING: profile(s) {missing} used by schedules do not exist on the site")
        return EXIT_FAILURE
    return EXIT_OK


def _backup(args: argparse.Namespace) -> int:
    config = _load(args.config)
    site_name, _, schedule_name = args.target.partition("/")
    site = _site(config, site_name)
    schedules = {schedule.name: schedule for schedule in site.schedules}
    schedule = schedules.get(schedule_name) if schedule_name else site.schedules[0]
    if schedule is None:
        raise _Fail(f"site {site_name!r} has no schedule {schedule_name!r}", EXIT_CONFIG)
    return asyncio.run(_backup_once(site, schedule))


class _Printer:
    """Prints a run's events as they happen."""

    def on_run_event(self, event: RunEvent) -> None:
        if isinstance(event, RunBegan):
            print(f"{event.site}/{event.schedule}: run {event.run_id} started")
        elif isinstance(event, StepDone):
            print(
                f"  step {event.step_number:>3}  {event.progress_percent:>3}%  "
                f"{event.domain:<10} {event.step[:60]}"
            )
        elif isinstance(event, WarningRaised):
            print(f"  warning: {event.message}")
        elif isinstance(event, StepRetried):
            print(f"  retry {event.attempt} ({event.reason}): {event.message}")
        elif isinstance(event, RunFinished):
            result = event.result
            outcome = str(result.outcome) + (f" ({result.reason})" if result.reason else "")
            print(
                f"{event.site}/{event.schedule}: {outcome} "
                f"in {result.duration_seconds:.1f} s: {result.message}"
            )
            if result.archive_size_bytes is not None:
                print(f"  archive {result.archive} ({result.archive_size_bytes} bytes)")


async def _backup_once(site: Any, schedule: Any) -> int:
    clock = SystemClock()
    settings = schedule.settings
    run_id = make_run_id(clock.now())
    async with aiohttp.ClientSession() as session:
        remote = SiteRemote(
            session,
            SiteAddress(site.url, site.platform, site.api, site.endpoint),
            site.secret,
            clock,
            client_settings(site),
        )
        spec = RunSpec(
            site=site.name,
            schedule=schedule.name,
            run_id=run_id,
            profile_id=schedule.profile,
            description=render_description(
                schedule.description, site.name, schedule.name, run_id, clock.now()
            ),
            stall_timeout_seconds=settings.stall_timeout_seconds,
            run_timeout_seconds=settings.run_timeout_seconds,
            step_retries=settings.step_retries,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            request_timeout_seconds=settings.request_timeout_seconds,
            verify=settings.verify,
        )
        run = BackupRun(remote, spec, clock, _Printer())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, run.request_cancel)
        result = await run.execute()
    return EXIT_OK if result.outcome is RunOutcome.SUCCEEDED else EXIT_FAILURE


# --- simulate, demo ------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    if args.sites < 1:
        raise _Fail("--sites must be at least 1", EXIT_CONFIG)
    simulator = Simulator.fleet(
        args.sites,
        secret=args.secret,
        api=args.api,
        platform="wordpress" if args.api == "v1" else "joomla",
        steps=args.steps,
        step_seconds=args.step_seconds,
    )
    return asyncio.run(_serve_simulator(simulator, args.host, args.port))


async def _serve_simulator(simulator: Simulator, host: str, port: int) -> int:
    try:
        await simulator.start(host, port)
    except OSError as error:
        raise _Fail(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    first = next(iter(simulator.sites))
    print(
        f"simulating {len(simulator.sites)} site(s) on http://{host}:{simulator.port}/ "
        f"(e.g. {simulator.base_url(first)}); Ctrl-C stops",
        flush=True,
    )
    await _wait_for_signal()
    await simulator.stop()
    return EXIT_OK


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


DEMO_SITES = (
    SiteSpec(
        name="demo-joomla",
        api="v2",
        platform="joomla",
        steps=19,
        step_seconds=0.5,
        warnings=((6, "Your database has 1 table with a crashed index"),),
    ),
    SiteSpec(name="demo-wordpress", api="v1", platform="wordpress", steps=11, step_seconds=0.7),
    SiteSpec(
        name="demo-solo", api="v2", platform="solo", steps=12, step_seconds=0.4, profiles=(1, 2)
    ),
    SiteSpec(
        name="demo-broken",
        api="v2",
        platform="joomla",
        steps=15,
        step_seconds=0.5,
        faults=Faults(engine_error_at_step=5),
    ),
)


def demo_config_text() -> str:
    """Return the packaged demo configuration (the same text as ``config/demo.yaml``)."""
    return resources.files("akeeba_backupd").joinpath("demo.yaml").read_text(encoding="utf-8")


def _demo(args: argparse.Namespace) -> int:
    return asyncio.run(_run_demo(args.port, args.simulator_port))


async def _run_demo(port: int, simulator_port: int) -> int:
    import tempfile

    simulator = Simulator([*DEMO_SITES])
    try:
        await simulator.start("127.0.0.1", simulator_port)
    except OSError as error:
        raise _Fail(
            f"cannot start the simulated fleet on 127.0.0.1:{simulator_port}: "
            f"{error.strerror or error} (choose another with --simulator-port)"
        ) from None
    try:
        with tempfile.TemporaryDirectory(prefix="akeeba-backupd-demo-") as workdir:
            return await _serve_demo(port, simulator, Path(workdir))
    finally:
        await simulator.stop()


async def _serve_demo(port: int, simulator: Simulator, workdir: Path) -> int:
    """Run the daemon on the demo configuration against ``simulator`` until it stops."""
    text = demo_config_text()
    text = text.replace("127.0.0.1:8730", f"127.0.0.1:{simulator.port}")
    text = text.replace('listen: "127.0.0.1:9489"', f'listen: "127.0.0.1:{port}"')
    path = workdir / "demo.yaml"
    path.write_text(text, encoding="utf-8")
    environ = {
        **os.environ,
        DEMO_SECRET_VARIABLE: DEMO_SECRET,
        "STATE_DIRECTORY": str(workdir),
    }
    environ.pop("NOTIFY_SOCKET", None)
    config = _load(path, environ)
    service = Service(config, environ=environ, shutdown_grace_seconds=5.0)
    task = asyncio.create_task(service.serve())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(service.ready.wait(), timeout=10)
    if service.ready.is_set():
        base = f"http://127.0.0.1:{service.bound_port}"
        print(
            "\nakeeba-backupd demo: a simulated fleet of "
            f"{len(DEMO_SITES)} sites on http://127.0.0.1:{simulator.port}/, "
            "backed up every minute.\n"
            f"  status page   {base}/\n"
            f"  metrics       {base}/metrics\n"
            f"  schedules     {base}/api/v1/schedules\n"
            f"  run history   {base}/api/v1/runs\n"
            "The first backups start within a minute; demo-broken fails with reason "
            "remote_error.\nCtrl-C stops.\n",
            flush=True,
        )
    return await task


# --- talking to a running daemon -------------------------------------------------------------


def _remote_command(args: argparse.Namespace) -> int:
    return asyncio.run(_remote(args))


async def _remote(args: argparse.Namespace) -> int:
    headers = {"Accept": "application/json"}
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise _Fail(
                f"cannot read {args.token_file}: {error.strerror or error}", EXIT_CONFIG
            ) from None
        headers["Authorization"] = f"Bearer {token}"
    base = args.url.rstrip("/")
    if args.action == "status":
        method, path = "GET", "/api/v1/schedules"
    else:
        site, _, schedule = args.target.partition("/")
        if not site or (args.action in ("trigger", "cancel") and not schedule):
            raise _Fail(f"{args.action} needs SITE/SCHEDULE, not {args.target!r}", EXIT_CONFIG)
        action = "run" if args.action == "trigger" else args.action
        method = "POST"
        path = (
            f"/api/v1/schedules/{site}/{schedule}/{action}"
            if schedule
            else f"/api/v1/sites/{site}/{action}"
        )
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, base + path, headers=headers) as response,
        ):
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        raise _Fail(f"cannot reach the daemon at {base}: {error}", EXIT_UNREACHABLE) from None
    try:
        body = json.loads(text)
    except ValueError:
        raise _Fail(f"{base}{path}: HTTP {status}: not a JSON answer") from None
    if status >= 400:
        message = body.get("error") if isinstance(body, dict) else text
        raise _Fail(f"{method} {path}: HTTP {status}: {message}")
    if args.action == "status":
        _print_schedules(body)
    else:
        items = body if isinstance(body, list) else [body]
        for item in items:
            paused = " (paused)" if item.get("paused") else ""
            print(f"{item['site']}/{item['schedule']}: {item['state']}{paused}")
    return EXIT_OK


def _print_schedules(schedules: list[dict[str, Any]]) -> None:
    print(f"{'SCHEDULE':<40} {'STATE':<8} {'LAST':<22} {'NEXT RUN':<21} PROGRESS")
    for item in schedules:
        last = item.get("last") or {}
        outcome = last.get("outcome", "-")
        if last.get("reason"):
            outcome += f" ({last['reason']})"
        live = item.get("live") or {}
        progress = f"{live['progress_percent']}% step {live['step_number']}" if live else ""
        state = item["state"] + ("*" if item.get("paused") else "")
        print(
            f"{item['site'] + '/' + item['schedule']:<40} {state:<8} {outcome:<22} "
            f"{(item.get('next_run') or '-'):<21} {progress}"
        )
