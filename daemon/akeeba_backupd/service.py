"""The composition root and lifecycle of the daemon: startup → main loop → bounded shutdown.

Modelled on uvicorn's server: signal handlers only set events; one coroutine reads top-down
(load config, open the HTTP client session, bind the listener, start the scheduler, READY=1;
then wait for stop or reload; then STOPPING=1, let runs stop after their step, close in reverse
order). Every collaborator (clock, notifier, environment) is injected, so tests run the whole
service in-process and call :meth:`Service.request_stop` and :meth:`Service.request_reload`
exactly as the signal handlers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from akeeba_backupd import __version__
from akeeba_backupd.akeeba import (
    AkeebaError,
    ClientSettings,
    RecordStatus,
    SiteAddress,
    SiteRemote,
)
from akeeba_backupd.clock import Clock, SystemClock
from akeeba_backupd.config import (
    Config,
    ConfigError,
    ScheduleConfig,
    SiteConfig,
    StateBackend,
    load_config,
)
from akeeba_backupd.database import PostgresDatabase, StateError
from akeeba_backupd.fleet import PostgresCoordinator
from akeeba_backupd.metrics import DaemonView, FleetCollector
from akeeba_backupd.run import (
    BackupRun,
    CallsForbidden,
    Checkpoint,
    RunBegan,
    RunEvent,
    RunFinished,
    RunObserver,
    RunOutcome,
    RunResult,
    RunSpec,
    StepDone,
    WarningRaised,
)
from akeeba_backupd.scheduler import Run, ScheduleEntry, Scheduler, SchedulerError, fire_timing
from akeeba_backupd.state import SavedCheckpoint, StateStore
from akeeba_backupd.status import FinishedRun, SiteInfo, SiteStatus
from akeeba_backupd.systemd import Notifier, notifier_from_environment, run_watchdog
from akeeba_backupd.systemd import watchdog_interval_seconds as watchdog_interval
from akeeba_backupd.web import build_app

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

SEEDING_CONCURRENCY = 8
"""Sites asked for their backup list at once when seeding last successes at startup."""
DEFAULT_SHUTDOWN_GRACE_SECONDS = 60.0
"""How long in-flight runs get to finish their current step at shutdown (a step can last
minutes on tuned profiles; the unit's TimeoutStopSec sits above this)."""


def render_description(template: str, site: str, schedule: str, run_id: str, now: datetime) -> str:
    """Return the backup description for a run: ``{date} {site} {schedule} {run_id}`` filled."""
    return template.format(
        date=f"{now:%Y-%m-%d %H:%M}", site=site, schedule=schedule, run_id=run_id
    )


def client_settings(site: SiteConfig) -> ClientSettings:
    """Return the HTTP client settings of ``site`` (verb, auth placement, timeouts, TLS)."""
    return ClientSettings(
        verb=site.http_verb,
        auth=site.auth,
        request_timeout_seconds=site.settings.request_timeout_seconds,
        connect_timeout_seconds=site.settings.connect_timeout_seconds,
        tls_verify=site.tls_verify,
    )


def config_fingerprint(config: Config) -> str:
    """Return a digest of what must be the same on every instance sharing a database: the
    sites, their schedules and timing, and the limits (never a secret)."""
    shape = {
        "limits": [config.limits.max_concurrent, list(config.limits.groups)],
        "sites": [
            [
                site.name,
                site.url,
                site.group,
                [
                    [schedule.name, schedule.profile, fire_timing(schedule)]
                    for schedule in site.schedules
                ],
            ]
            for site in config.sites
        ],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _same_connection(old: SiteConfig, new: SiteConfig) -> bool:
    """Return True when a site's remote can be kept across a reload."""
    return (
        old.url == new.url
        and old.platform == new.platform
        and old.endpoint == new.endpoint
        and old.api == new.api
        and old.secret == new.secret
        and client_settings(old) == client_settings(new)
    )


@dataclass
class _Site:
    config: SiteConfig
    remote: SiteRemote
    status: SiteStatus


class _TrackedRun:
    """A BackupRun that records what the site said about itself once the run is over."""

    def __init__(self, inner: BackupRun, site: _Site) -> None:
        self._inner = inner
        self._site = site

    async def execute(self) -> RunResult:
        try:
            return await self._inner.execute()
        finally:
            detection = self._site.remote.detection
            if detection is not None:
                version = detection.version
                self._site.status.info = SiteInfo(
                    version.api_level, version.component, version.edition
                )

    def request_suspend(self) -> None:
        self._inner.request_suspend()

    def request_cancel(self) -> None:
        self._inner.request_cancel()


class Service:
    """The daemon: one configuration, one HTTP listener, one scheduler."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self._environ = dict(os.environ if environ is None else environ)
        self._clock = clock or SystemClock()
        self._notifier = notifier or notifier_from_environment(self._environ)
        self._shutdown_grace_seconds = shutdown_grace_seconds
        self._handle_signals = handle_signals
        self._stop_requested = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._sites: dict[str, _Site] = {}
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: Scheduler | None = None
        self._coordinator: PostgresCoordinator | None = None
        self._setup_problem: str | None = None
        self._store = self._make_store(config)
        self._reload_from_fleet = False
        self._fleet_config_matches = True
        self._expected_fingerprint: str | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._seeding: asyncio.Task[None] | None = None
        self._reload_ok = True
        self._reload_success_at: datetime | None = None
        self._listening = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self))
        self.bound_port: int | None = None
        self.ready = asyncio.Event()
        """Set once READY=1 was sent (for in-process tests)."""

    def _make_store(self, config: Config) -> StateStore:
        """Return the state store the config asks for (and, for PostgreSQL, the coordinator)."""
        state = config.state
        if state.backend is not StateBackend.POSTGRESQL:
            return StateStore(config.state_dir)
        assert state.dsn is not None
        try:
            database = PostgresDatabase(state.dsn.reveal())
        except StateError as error:
            self._setup_problem = str(error)
            return StateStore(config.state_dir)
        coordinator = PostgresCoordinator(
            database, instance=state.instance, lease_seconds=state.lease_seconds, clock=self._clock
        )
        self._coordinator = coordinator
        # A database outage should not keep history in memory for a whole minute.
        return StateStore(
            config.state_dir,
            database=database,
            owner=coordinator.owner,
            reopen_interval_seconds=min(5.0, state.lease_seconds / 3.0),
        )

    # --- what signal handlers call -------------------------------------------------------

    def request_stop(self) -> None:
        """Ask for a graceful stop; a second request forces it."""
        if self._stop_requested.is_set():
            log.warning("second stop request: cancelling runs now")
            self._force_stop.set()
        self._stop_requested.set()

    def request_reload(self) -> None:
        """Ask for the configuration file to be read again."""
        self._reload_requested.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until stopped; return the process exit code."""
        if self._setup_problem is not None:
            log.error("cannot start: %s", self._setup_problem)
            return EXIT_FAILURE
        async with contextlib.AsyncExitStack() as stack:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, raise_for_status=False)
            )
            self._build_sites(self.config)
            restored = self._store.open()
            self._store.start()
            stack.push_async_callback(self._store.close)
            coordinator = self._coordinator
            if coordinator is not None:
                # Closed after the store's last flush is queued but before it: the leases of
                # suspended runs expire at once so another instance resumes them.
                stack.push_async_callback(self._close_fleet, coordinator)
                log.info(
                    "fleet mode: instance %s, state in %s, lease %.0f s",
                    coordinator.instance,
                    self._store.describe,
                    coordinator.lease_seconds,
                )
            elif restored.inflight:
                log.info("resuming %d in-flight run(s)", len(restored.inflight))
            runner = web.AppRunner(build_app(self, self.registry), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            try:
                site = web.TCPSite(runner, self.config.listen_host, self.config.listen_port)
                await site.start()
            except OSError as error:
                log.error(
                    "cannot listen on %s:%d: %s",
                    self.config.listen_host,
                    self.config.listen_port,
                    error.strerror or error,
                )
                return EXIT_FAILURE
            self.bound_port = int(runner.addresses[0][1])
            self._listening = True
            scheduler = Scheduler(
                self.config,
                self._clock,
                self,
                observer=self,
                listener=self,
                restored=restored,
                coordinator=coordinator,
            )
            self._scheduler = scheduler
            self._reload_success_at = self._clock.now()
            scheduler.start()
            if self._handle_signals:
                self._install_signal_handlers()
                stack.callback(self._remove_signal_handlers)
            watchdog = self._start_watchdog()
            log.info(
                "akeeba-backupd %s: %d schedule(s) of %d site(s); listening on http://%s:%d/",
                __version__,
                sum(len(site.schedules) for site in self.config.sites),
                len(self.config.sites),
                self.config.listen_host,
                self.bound_port,
            )
            self._notifier.ready(self.status_line())
            self.ready.set()
            self._seeding = asyncio.create_task(self._seed_last_successes(), name="seeding")
            if coordinator is not None:
                self._spawn(self._publish_config(at_start=True), "publish config")
            await self._main_loop()
            self._seeding.cancel()
            self._notifier.stopping()
            self._notifier.status("stopping: waiting for runs to finish their step")
            running = scheduler.running_count
            log.info("stopping: %d run(s) in progress stop after their current step", running)
            summary = await scheduler.stop(self._shutdown_grace_seconds, self._force_stop)
            if watchdog is not None:
                watchdog.cancel()
            log.info(
                "stopped: %d run(s) ended or suspended for resume, %d cancelled",
                summary.suspended,
                summary.cancelled,
            )
        return EXIT_OK

    async def _main_loop(self) -> None:
        while True:
            stop = asyncio.ensure_future(self._stop_requested.wait())
            reload = asyncio.ensure_future(self._reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._stop_requested.is_set():
                return
            self._reload_requested.clear()
            from_fleet, self._reload_from_fleet = self._reload_from_fleet, False
            if self.reload() and not from_fleet and self._coordinator is not None:
                self._spawn(self._publish_config(at_start=False), "publish config")

    def reload(self) -> bool:
        """Read the config file again and apply it; keep the old one on any error.

        Return True when the new configuration is in force.
        """
        self._notifier.reloading()
        path = self.config.source_path
        try:
            new = load_config(path, self._environ)
        except ConfigError as error:
            self._reload_ok = False
            for issue in error.issues:
                log.error("reload: %s", issue)
            log.error(
                "reload failed: %d problem(s); the previous configuration stays", len(error.issues)
            )
            self._notifier.ready(f"reload failed, old config kept: {error.issues[0]}")
            return False
        except OSError as error:
            self._reload_ok = False
            log.error("reload failed: cannot read %s: %s", path, error.strerror or error)
            self._notifier.ready(f"reload failed, old config kept: cannot read {path}")
            return False
        if (new.listen_host, new.listen_port) != (self.config.listen_host, self.config.listen_port):
            log.warning("reload: a new listen address needs a restart; still on the old one")
        self._build_sites(new)
        assert self._scheduler is not None
        wanted = {(site.name, schedule.name) for site in new.sites for schedule in site.schedules}
        gone = [entry.key for entry in self._scheduler.entries() if entry.key not in wanted]
        added, removed, changed = self._scheduler.apply(new)
        self._store.forget_schedules(gone)
        self.config = new
        expected, self._expected_fingerprint = self._expected_fingerprint, None
        if expected is not None:
            mine = config_fingerprint(new)
            self._fleet_config_matches = mine == expected
            if not self._fleet_config_matches:
                log.error(
                    "this instance's configuration (%s) differs from the one another instance "
                    "published (%s): keep the file the same on every instance",
                    mine,
                    expected,
                )
        self._reload_ok = True
        self._reload_success_at = self._clock.now()
        log.info("reloaded: %d schedule(s) added, %d removed, %d changed", added, removed, changed)
        self._notifier.ready(self.status_line())
        return True

    async def _close_fleet(self, coordinator: PostgresCoordinator) -> None:
        # The last checkpoints first: whoever takes the runs over resumes from them.
        await self._store.flush(retry_now=True)
        await coordinator.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_config(self, *, at_start: bool) -> None:
        """Tell the other instances to reload: at start only when the fleet's differs."""
        coordinator = self._coordinator
        scheduler = self._scheduler
        assert coordinator is not None
        assert scheduler is not None
        mine = config_fingerprint(self.config)
        try:
            if at_start:
                generation, published = await coordinator.config_generation()
                if published == mine:
                    scheduler.config_published(generation)
                    self._fleet_config_matches = True
                    return
                if published is not None:
                    log.warning(
                        "this configuration differs from the one the fleet runs (%s, here %s): "
                        "publishing it, so every instance reloads its own file",
                        published,
                        mine,
                    )
            generation = await coordinator.publish_config(mine)
        except StateError as error:
            log.error("could not tell the other instances about the configuration: %s", error)
            return
        scheduler.config_published(generation)
        self._fleet_config_matches = True
        log.info("configuration %s published to the fleet (generation %d)", mine, generation)

    def fleet_config_changed(self, generation: int, fingerprint: str | None) -> None:
        """Another instance published a configuration: reload this instance's own file."""
        log.info(
            "another instance published configuration %s (generation %d): reloading",
            fingerprint,
            generation,
        )
        self._expected_fingerprint = fingerprint
        self._reload_from_fleet = True
        self._reload_requested.set()

    def _build_sites(self, config: Config) -> None:
        assert self._session is not None
        sites: dict[str, _Site] = {}
        for site in config.sites:
            old = self._sites.get(site.name)
            if old is not None and _same_connection(old.config, site):
                old.config = site
                old.status.platform = site.platform.value
                old.status.labels = site.labels
                sites[site.name] = old
                continue
            status = (
                old.status
                if old is not None
                else SiteStatus(site.name, site.platform.value, site.labels)
            )
            status.platform, status.labels = site.platform.value, site.labels
            remote = SiteRemote(
                self._session,
                SiteAddress(site.url, site.platform, site.api, site.endpoint),
                site.secret,
                self._clock,
                client_settings(site),
                status.api,
            )
            sites[site.name] = _Site(site, remote, status)
        self._sites = sites

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = watchdog_interval(self._environ, os.getpid())
        if interval is None:
            return None
        scheduler = self._scheduler
        assert scheduler is not None
        log.info("systemd watchdog: WATCHDOG=1 every %.1f s", interval)
        return asyncio.create_task(
            run_watchdog(self._notifier, interval, scheduler.healthy, self._clock), name="watchdog"
        )

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    # --- views (metrics, web, STATUS) ---------------------------------------------------

    def status_line(self) -> str:
        """Return the one-line summary for systemd's STATUS=."""
        scheduler = self._scheduler
        if scheduler is None:
            return "starting"
        count = sum(1 for _ in scheduler.entries())
        text = (
            f"{count} schedules, {scheduler.running_count} running, {scheduler.queued_count} queued"
        )
        upcoming = scheduler.next_entry()
        if upcoming is not None and upcoming.next_due_at is not None:
            local = upcoming.next_due_at.astimezone(upcoming.schedule.settings.timezone)
            text += f", next {upcoming.site.name}/{upcoming.schedule.name} {local:%H:%M}"
        if not self._reload_ok:
            text += ", last reload FAILED"
        return text

    def schedule_entries(self) -> Iterable[ScheduleEntry]:
        """Return every schedule (the metrics' and the web app's view)."""
        return () if self._scheduler is None else self._scheduler.entries()

    def site_statuses(self) -> Iterable[SiteStatus]:
        """Return every configured site."""
        return [site.status for site in self._sites.values()]

    def daemon_view(self) -> DaemonView:
        """Return the daemon-wide facts for the metrics."""
        scheduler = self._scheduler
        return DaemonView(
            config_reload_successful=self._reload_ok,
            config_reload_success_at=self._reload_success_at,
            state_errors_total=self._store.errors_total,
            running_backups=0 if scheduler is None else scheduler.running_count,
            queued_backups=0 if scheduler is None else scheduler.queued_count,
            leases_held=0 if self._coordinator is None else self._coordinator.leases_held,
            lease_takeovers_total=0
            if self._coordinator is None
            else self._coordinator.takeovers_total,
            leases_lost_total=0
            if self._coordinator is None
            else self._coordinator.leases_lost_total,
        )

    def readiness(self) -> list[str]:
        """Return why the daemon is not ready; empty when config, listener and scheduler are up."""
        problems = []
        if not self._listening:
            problems.append("HTTP listener not up")
        if self._scheduler is None or not self._scheduler.healthy():
            problems.append("scheduler not running")
        if self._store.problem is not None:
            problems.append(f"state store: {self._store.problem}")
        coordinator = self._coordinator
        if coordinator is not None and coordinator.problem is not None:
            problems.append(f"fleet database: {coordinator.problem}")
        return problems

    def trigger(self, site: str, schedule: str) -> ScheduleEntry:
        """Queue a run now."""
        return self._require_scheduler().trigger(site, schedule)

    def pause(self, site: str, schedule: str | None) -> list[ScheduleEntry]:
        """Pause a schedule or a whole site (kept across restarts)."""
        entries = self._require_scheduler().pause(site, schedule)
        for entry in entries:
            self._store.set_paused(entry.site.name, entry.schedule.name, True)
        return entries

    def resume(self, site: str, schedule: str | None) -> list[ScheduleEntry]:
        """Resume a schedule or a whole site."""
        entries = self._require_scheduler().resume(site, schedule)
        for entry in entries:
            self._store.set_paused(entry.site.name, entry.schedule.name, False)
        return entries

    def cancel(self, site: str, schedule: str) -> ScheduleEntry:
        """Cancel a running or queued run."""
        return self._require_scheduler().cancel(site, schedule)

    def api_token(self) -> str | None:
        """Return the configured bearer token, if any."""
        token = self.config.api_token
        return None if token is None else token.reveal()

    def now(self) -> datetime:
        """Return the injected clock's time."""
        return self._clock.now()

    def _require_scheduler(self) -> Scheduler:
        scheduler = self._scheduler
        if scheduler is None:
            raise SchedulerError("the daemon is starting", 503)
        return scheduler

    # --- runs ----------------------------------------------------------------------------

    def create_run(
        self,
        site: SiteConfig,
        schedule: ScheduleConfig,
        run_id: str,
        observer: RunObserver,
        resume: SavedCheckpoint | None,
    ) -> Run:
        """Return the run of ``schedule`` on ``site`` (the scheduler's RunFactory)."""
        tracked = self._sites[site.name]
        settings = schedule.settings
        spec = RunSpec(
            site=site.name,
            schedule=schedule.name,
            run_id=run_id,
            profile_id=schedule.profile if resume is None else resume.checkpoint.profile_id,
            description=render_description(
                schedule.description,
                site.name,
                schedule.name,
                run_id,
                self._clock.now().astimezone(settings.timezone),
            ),
            stall_timeout_seconds=settings.stall_timeout_seconds,
            run_timeout_seconds=settings.run_timeout_seconds,
            step_retries=settings.step_retries,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            request_timeout_seconds=settings.request_timeout_seconds,
            verify=settings.verify,
        )
        age = None
        if resume is not None:
            age = max(0.0, (self._clock.now() - resume.saved_at).total_seconds())
        run = BackupRun(
            tracked.remote,
            spec,
            self._clock,
            observer,
            None if resume is None else resume.checkpoint,
            checkpoint_age_seconds=age,
            before_start=self._persist_before_start,
            may_call=None if self._coordinator is None else self._coordinator.lease_valid,
        )
        return _TrackedRun(run, tracked)

    async def _persist_before_start(self, checkpoint: Checkpoint) -> None:
        # Committed before startBackup goes out: after a crash the run is found and adopted
        # by its tag instead of being forgotten while the server backs up.
        self._store.save_checkpoint(checkpoint, self._clock.now())
        committed = await self._store.flush()
        if not committed and self._coordinator is not None:
            # In a fleet, an instance taking this run over must find it started or not: a
            # startBackup without a committed checkpoint could be sent again by the taker.
            raise CallsForbidden(
                f"the run's first checkpoint could not be committed ({self._store.problem}); "
                "startBackup not sent"
            )

    # --- the scheduler's listener: what the state store keeps ---------------------------

    def _save_stats(self, entry: ScheduleEntry) -> None:
        self._store.save_stats(entry.stats, entry.last_fire_at, fire_timing(entry.schedule))

    def fire_taken(self, entry: ScheduleEntry) -> None:
        """Persist the schedule's last fire time (for misfire handling after a restart)."""
        self._save_stats(entry)

    def fire_skipped(self, entry: ScheduleEntry, skipped: FinishedRun) -> None:
        """Persist a skipped fire."""
        self._store.add_run(skipped)
        self._save_stats(entry)

    def resume_dropped(self, saved: SavedCheckpoint) -> None:
        """Forget an in-flight run that will not be resumed."""
        checkpoint = saved.checkpoint
        self._store.drop_checkpoint(checkpoint.site, checkpoint.schedule)

    def _persist_run_event(self, event: RunEvent) -> None:
        if isinstance(event, StepDone):
            self._store.save_checkpoint(event.checkpoint, event.at)
        elif isinstance(event, RunFinished):
            result = event.result
            if result.outcome is RunOutcome.SUSPENDED:
                if result.checkpoint is not None:
                    self._store.save_checkpoint(result.checkpoint, result.finished_at)
                return
            # The run's lease goes in the same transaction as its checkpoint (fleet mode).
            self._store.drop_checkpoint(event.site, event.schedule, event.run_id)
            entry = (
                None
                if self._scheduler is None
                else self._scheduler.entry(event.site, event.schedule)
            )
            if entry is not None and entry.stats.history:
                self._store.add_run(entry.stats.history[0])
                self._save_stats(entry)

    # --- seeding last successes from the sites' own backup lists ------------------------

    async def _seed_last_successes(self) -> None:
        """For schedules with no history, take the last success from the site's listBackups.

        Only records of the schedule's profile made through the JSON API (origin ``json``) and
        complete count. Marked as seeded in the API until a run of ours replaces it.
        """
        scheduler = self._scheduler
        assert scheduler is not None
        unknown: dict[str, list[ScheduleEntry]] = {}
        for entry in scheduler.entries():
            stats = entry.stats
            if stats.runs_total == 0 and stats.last_success_at is None and not stats.history:
                unknown.setdefault(entry.site.name, []).append(entry)
        if not unknown:
            return
        limit = asyncio.Semaphore(SEEDING_CONCURRENCY)

        async def seed(site_name: str, entries: list[ScheduleEntry]) -> None:
            tracked = self._sites.get(site_name)
            if tracked is None:
                return
            async with limit:
                try:
                    records = await tracked.remote.list_backups(0, 50)
                except AkeebaError as error:
                    log.debug("%s: no last success seeded: %s", site_name, error.message)
                    return
            for entry in entries:
                match = next(
                    (
                        record
                        for record in records
                        if record.status is RecordStatus.COMPLETE
                        and record.origin == "json"
                        and record.profile_id == entry.schedule.profile
                    ),
                    None,
                )
                stats = entry.stats
                if match is None or stats.last_success_at is not None or stats.runs_total:
                    continue
                stats.last_success_at = match.ended or match.started
                stats.last_success_seeded = True
                if match.size_bytes:
                    stats.archive_size_bytes = match.size_bytes
                self._save_stats(entry)
                log.info(
                    "%s/%s: last success seeded from the site's backup #%d",
                    site_name,
                    entry.schedule.name,
                    match.id,
                )

        await asyncio.gather(*(seed(name, entries) for name, entries in unknown.items()))

    def on_run_event(self, event: RunEvent) -> None:
        """Persist what a restart needs, log a run's milestones and keep STATUS= current."""
        self._persist_run_event(event)
        if isinstance(event, RunBegan):
            log.info(
                "%s/%s: run %s %s",
                event.site,
                event.schedule,
                event.run_id,
                "resumed" if event.resumed else "started",
            )
            self._notifier.status(self.status_line())
        elif isinstance(event, WarningRaised):
            log.warning("%s/%s: server warning: %s", event.site, event.schedule, event.message)
        elif isinstance(event, RunFinished):
            result = event.result
            if result.outcome is RunOutcome.SUCCEEDED:
                size = (
                    f", archive {result.archive_size_bytes} bytes"
                    if result.archive_size_bytes is not None
                    else ""
                )
                log.info(
                    "%s/%s: run %s succeeded in %.0f s%s: %s",
                    event.site,
                    event.schedule,
                    event.run_id,
                    result.duration_seconds,
                    size,
                    result.message,
                )
            elif result.outcome is RunOutcome.FAILED:
                log.error(
                    "%s/%s: run %s failed (%s) after %.0f s: %s",
                    event.site,
                    event.schedule,
                    event.run_id,
                    result.reason,
                    result.duration_seconds,
                    result.message,
                )
            else:
                log.info(
                    "%s/%s: run %s suspended: %s",
                    event.site,
                    event.schedule,
                    event.run_id,
                    result.message,
                )
            self._notifier.status(self.status_line())
