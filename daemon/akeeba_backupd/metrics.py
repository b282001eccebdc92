"""The Prometheus view of the fleet: a custom collector over scheduler and run state (DESIGN §6).

Everything is rendered at scrape time from the live objects (:class:`ScheduleEntry`,
:class:`SiteStatus`), so series of removed sites and schedules vanish with them and nothing has
to be kept in step with a second copy of the state. Labels come from closed sets only: names
from the config, ``reason``/``domain``/``method``/``outcome`` from enums; never ids or messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from akeeba_backupd import __version__
from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.scheduler import ScheduleEntry, ScheduleState
from akeeba_backupd.status import Domain, Histogram, SiteStatus, SkipReason, normalise_domain

SCHEDULE_LABELS = ["site", "schedule"]


@dataclass(frozen=True, slots=True)
class DaemonView:
    """Daemon-wide facts for the ``akeeba_backupd_*`` series."""

    config_reload_successful: bool
    config_reload_success_at: datetime | None
    state_errors_total: int
    running_backups: int
    queued_backups: int
    leases_held: int = 0
    """Leases (queued or running fires) this instance holds in the shared database."""
    lease_takeovers_total: int = 0
    leases_lost_total: int = 0


class FleetSource(Protocol):
    """What the collector reads (the service implements it)."""

    def schedule_entries(self) -> Iterable[ScheduleEntry]:
        """Return every schedule to export."""
        ...

    def site_statuses(self) -> Iterable[SiteStatus]:
        """Return every site to export."""
        ...

    def daemon_view(self) -> DaemonView:
        """Return the daemon-wide facts."""
        ...


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


class FleetCollector(Collector):
    """Collects every metric of DESIGN.md §6 from a :class:`FleetSource` at scrape time."""

    def __init__(self, source: FleetSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        """Return nothing: the registry must not call collect() at registration time."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family."""
        yield from self._schedule_metrics(list(self._source.schedule_entries()))
        yield from self._site_metrics(list(self._source.site_statuses()))
        yield from self._daemon_metrics(self._source.daemon_view())

    # --- per schedule --------------------------------------------------------------------

    def _schedule_metrics(self, entries: list[ScheduleEntry]) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=SCHEDULE_LABELS + (extra or []))

        def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=SCHEDULE_LABELS + (extra or []))

        running = gauge("akeeba_backup_running", "1 while a backup run is in progress")
        progress = gauge(
            "akeeba_backup_progress_ratio", "Progress of the current (or last) run, 0 to 1"
        )
        step_number = gauge(
            "akeeba_backup_step_number",
            "The server's stepNumber of the current (or last) run (replies so far below API 340)",
        )
        domain = gauge(
            "akeeba_backup_domain", "1 for the current phase of a running backup", ["domain"]
        )
        last_step = gauge(
            "akeeba_backup_last_step_timestamp_seconds", "Time of the last step reply"
        )
        started = gauge(
            "akeeba_backup_run_started_timestamp_seconds", "Start of the current (or last) run"
        )
        last_duration = gauge(
            "akeeba_backup_last_duration_seconds", "Duration of the last finished run"
        )
        durations = HistogramMetricFamily(
            "akeeba_backup_duration_seconds", "Durations of finished runs", labels=SCHEDULE_LABELS
        )
        last_warnings = gauge(
            "akeeba_backup_last_warnings", "Distinct warnings in the current (or last) run"
        )
        warnings_total = counter("akeeba_backup_warnings", "Warnings over all runs")
        last_success = gauge(
            "akeeba_backup_last_success_timestamp_seconds", "End of the last successful run"
        )
        last_failure = gauge(
            "akeeba_backup_last_failure_timestamp_seconds", "End of the last failed run"
        )
        last_status = gauge(
            "akeeba_backup_last_status", "1 if the last finished run succeeded, 0 if it failed"
        )
        consecutive = gauge(
            "akeeba_backup_consecutive_failures", "Failed runs since the last success"
        )
        failure_reason = gauge(
            "akeeba_backup_last_failure_reason", "The reason of the last failed run", ["reason"]
        )
        runs_total = counter("akeeba_backup_runs", "Finished runs")
        failures_total = counter("akeeba_backup_failures", "Failed runs by reason", ["reason"])
        skipped_total = counter(
            "akeeba_backup_skipped", "Fire times that started no run, by reason", ["reason"]
        )
        retries_total = counter("akeeba_backup_step_retries", "Transport retries of steps")
        archive_size = gauge(
            "akeeba_backup_archive_size_bytes", "Size of the last verified archive"
        )
        next_run = gauge("akeeba_backup_next_run_timestamp_seconds", "Next fire time")
        interval = gauge(
            "akeeba_backup_expected_interval_seconds", "Longest gap between fire times"
        )
        run_timeout = gauge(
            "akeeba_backup_run_timeout_seconds",
            "The schedule's run_timeout (the stale rule allows a run this long after a fire)",
        )
        paused = gauge("akeeba_backup_paused", "1 when the schedule is paused")
        queued = gauge("akeeba_backup_queued", "1 while due and waiting for a slot")

        for entry in entries:
            stats = entry.stats
            labels = [entry.site.name, entry.schedule.name]
            # A run another instance executes counts too: every instance shows the fleet.
            is_running = entry.state is ScheduleState.RUNNING or entry.remote_owner is not None
            running.add_metric(labels, 1.0 if is_running else 0.0)
            queued.add_metric(labels, 1.0 if entry.state is ScheduleState.QUEUED else 0.0)
            paused.add_metric(labels, 1.0 if entry.paused else 0.0)
            live = stats.live
            if live is not None:
                progress.add_metric(labels, live.progress_percent / 100.0)
                step_number.add_metric(labels, float(live.step_number))
                started.add_metric(labels, _seconds(live.started_at))
                last_warnings.add_metric(labels, float(live.warnings))
                if live.last_step_at is not None:
                    last_step.add_metric(labels, _seconds(live.last_step_at))
                if is_running:
                    current = normalise_domain(live.domain)
                    for each in Domain:
                        domain.add_metric([*labels, each.value], 1.0 if each is current else 0.0)
            if stats.last_duration_seconds is not None:
                last_duration.add_metric(labels, stats.last_duration_seconds)
            _add_histogram(durations, labels, stats.durations)
            warnings_total.add_metric(labels, float(stats.warnings_total))
            if stats.last_success_at is not None:
                last_success.add_metric(labels, _seconds(stats.last_success_at))
            if stats.last_failure_at is not None:
                last_failure.add_metric(labels, _seconds(stats.last_failure_at))
            if stats.last_status is not None:
                last_status.add_metric(labels, 1.0 if stats.last_status else 0.0)
            consecutive.add_metric(labels, float(stats.consecutive_failures))
            if stats.last_failure_reason is not None:
                failure_reason.add_metric([*labels, stats.last_failure_reason.value], 1.0)
            runs_total.add_metric(labels, float(stats.runs_total))
            # Every reason from 0, so that increase() sees a schedule's first failure.
            for reason in FailureReason:
                count = stats.failures_total.get(reason, 0)
                failures_total.add_metric([*labels, reason.value], float(count))
            for skip in SkipReason:
                count = stats.skipped_total.get(skip, 0)
                skipped_total.add_metric([*labels, skip.value], float(count))
            retries_total.add_metric(labels, float(stats.step_retries_total))
            if stats.archive_size_bytes is not None:
                archive_size.add_metric(labels, float(stats.archive_size_bytes))
            if entry.next_due_at is not None:
                next_run.add_metric(labels, _seconds(entry.next_due_at))
            if entry.expected_interval_seconds:
                interval.add_metric(labels, entry.expected_interval_seconds)
            run_timeout.add_metric(labels, entry.schedule.settings.run_timeout_seconds)

        yield from (
            running,
            progress,
            step_number,
            domain,
            last_step,
            started,
            last_duration,
            durations,
            last_warnings,
            warnings_total,
            last_success,
            last_failure,
            last_status,
            consecutive,
            failure_reason,
            runs_total,
            failures_total,
            skipped_total,
            retries_total,
            archive_size,
            next_run,
            interval,
            run_timeout,
            paused,
            queued,
        )

    # --- per site ------------------------------------------------------------------------

    def _site_metrics(self, sites: list[SiteStatus]) -> Iterator[Metric]:
        info = Metric("akeeba_site_info", "What the site runs, with its configured labels", "gauge")
        latency = HistogramMetricFamily(
            "akeeba_api_request_duration_seconds",
            "JSON API call latency",
            labels=["site", "method"],
        )
        requests = CounterMetricFamily(
            "akeeba_api_requests",
            "JSON API calls by outcome (ok or a failure reason)",
            labels=["site", "method", "outcome"],
        )
        for site in sites:
            known = site.info
            labels = {
                **dict(site.labels),
                "site": site.name,
                "api_level": str(known.api_level) if known else "",
                "version": known.version if known else "",
                "edition": known.edition if known else "",
                "platform": site.platform,
            }
            info.add_sample("akeeba_site_info", labels, 1.0)
            for method, histogram in sorted(site.api.durations.items()):
                _add_histogram(latency, [site.name, method], histogram)
            for (method, outcome), count in sorted(site.api.requests_total.items()):
                requests.add_metric([site.name, method, outcome], float(count))
        yield from (info, latency, requests)

    # --- the daemon ----------------------------------------------------------------------

    def _daemon_metrics(self, view: DaemonView) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "akeeba_backupd_build_info", "The running akeeba-backupd", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build
        yield GaugeMetricFamily(
            "akeeba_backupd_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded",
            value=1.0 if view.config_reload_successful else 0.0,
        )
        if view.config_reload_success_at is not None:
            yield GaugeMetricFamily(
                "akeeba_backupd_config_last_reload_success_timestamp_seconds",
                "Time of the last successful configuration load",
                value=_seconds(view.config_reload_success_at),
            )
        yield GaugeMetricFamily(
            "akeeba_backupd_running_backups",
            "Backups running now",
            value=float(view.running_backups),
        )
        yield GaugeMetricFamily(
            "akeeba_backupd_queued_backups",
            "Due backups waiting for a slot",
            value=float(view.queued_backups),
        )
        yield CounterMetricFamily(
            "akeeba_backupd_state_errors",
            "Failed reads or writes of the state store",
            value=float(view.state_errors_total),
        )
        yield GaugeMetricFamily(
            "akeeba_backupd_leases_held",
            "Queued or running fires this instance holds in the shared database",
            value=float(view.leases_held),
        )
        yield CounterMetricFamily(
            "akeeba_backupd_lease_takeovers",
            "Leases this instance took over from an instance that stopped renewing them",
            value=float(view.lease_takeovers_total),
        )
        yield CounterMetricFamily(
            "akeeba_backupd_leases_lost",
            "Leases this instance lost: not renewed in time, or taken over by another",
            value=float(view.leases_lost_total),
        )


def _add_histogram(family: HistogramMetricFamily, labels: list[str], values: Histogram) -> None:
    family.add_metric(
        labels,
        buckets=[(le, float(count)) for le, count in values.cumulative()],
        sum_value=values.total,
    )
