"""The Prometheus view of the fleet: a custom collector over scheduler and run state (DESIGN §6).

Everything is rendered at scrape time from the live objects (:class:`ScheduleEntry`,
:class:`SiteStatus`), so series of removed sites and schedules vanish with them and nothing has
to be kept in step with a second copy of the state. Labels come from closed sets only: names
from the config, ``reason``/``domain``/``method``/``outcome`` from enums; never ids or messages.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from akeeba_backupd import __version__
from akeeba_backupd.akeeba import FailureReason
from akeeba_backupd.exposition import Row, RowFamily, render_rows
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


@dataclass(frozen=True, slots=True)
class _FamilySpec:
    name: str
    documentation: str
    type: str
    extra: str | None = None
    """The label a family has besides site and schedule."""


SCHEDULE_FAMILIES: Final = (
    _FamilySpec("akeeba_backup_running", "1 while a backup run is in progress", "gauge"),
    _FamilySpec(
        "akeeba_backup_progress_ratio", "Progress of the current (or last) run, 0 to 1", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_step_number",
        "The server's stepNumber of the current (or last) run (replies so far below API 340)",
        "gauge",
    ),
    _FamilySpec(
        "akeeba_backup_domain", "1 for the current phase of a running backup", "gauge", "domain"
    ),
    _FamilySpec(
        "akeeba_backup_last_step_timestamp_seconds", "Time of the last step reply", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_run_started_timestamp_seconds", "Start of the current (or last) run", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_last_duration_seconds", "Duration of the last finished run", "gauge"
    ),
    _FamilySpec("akeeba_backup_duration_seconds", "Durations of finished runs", "histogram"),
    _FamilySpec(
        "akeeba_backup_last_warnings", "Distinct warnings in the current (or last) run", "gauge"
    ),
    _FamilySpec("akeeba_backup_warnings", "Warnings over all runs", "counter"),
    _FamilySpec(
        "akeeba_backup_last_success_timestamp_seconds", "End of the last successful run", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_last_failure_timestamp_seconds", "End of the last failed run", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_last_status", "1 if the last finished run succeeded, 0 if it failed", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_consecutive_failures", "Failed runs since the last success", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_last_failure_reason", "The reason of the last failed run", "gauge", "reason"
    ),
    _FamilySpec("akeeba_backup_runs", "Finished runs", "counter"),
    _FamilySpec("akeeba_backup_failures", "Failed runs by reason", "counter", "reason"),
    _FamilySpec(
        "akeeba_backup_skipped", "Fire times that started no run, by reason", "counter", "reason"
    ),
    _FamilySpec("akeeba_backup_step_retries", "Transport retries of steps", "counter"),
    _FamilySpec("akeeba_backup_archive_size_bytes", "Size of the last verified archive", "gauge"),
    _FamilySpec("akeeba_backup_next_run_timestamp_seconds", "Next fire time", "gauge"),
    _FamilySpec(
        "akeeba_backup_expected_interval_seconds", "Longest gap between fire times", "gauge"
    ),
    _FamilySpec(
        "akeeba_backup_run_timeout_seconds",
        "The schedule's run_timeout (the stale rule allows a run this long after a fire)",
        "gauge",
    ),
    _FamilySpec("akeeba_backup_paused", "1 when the schedule is paused", "gauge"),
    _FamilySpec("akeeba_backup_queued", "1 while due and waiting for a slot", "gauge"),
)
"""The per-schedule families, in the order they are exposed."""


def _fingerprint(entry: ScheduleEntry) -> tuple[object, ...]:
    """Return what an entry's exported values depend on: equal fingerprints, equal lines.

    Tallies only grow, and every finished run or skip moves runs_total or a skip count, so
    those sums stand for the reason maps, the histogram and the last-outcome fields; a stats
    object replaced (a fleet refresh) or a reloaded site or schedule has a new identity.
    """
    stats = entry.stats
    live = stats.live
    return (
        id(entry.site),
        id(entry.schedule),
        id(stats),
        entry.state,
        entry.remote_owner,
        entry.paused,
        entry.next_due_at,
        entry.expected_interval_seconds,
        stats.runs_total,
        sum(stats.skipped_total.values()),
        stats.warnings_total,
        stats.step_retries_total,
        stats.last_success_at,
        stats.archive_size_bytes,
        None
        if live is None
        else (
            id(live),
            live.step_number,
            live.progress_percent,
            live.domain,
            live.last_step_at,
            live.warnings,
        ),
    )


def _family_rows(entries: list[ScheduleEntry], index: int) -> list[Row]:
    return [row for entry in entries for row in _entry_rows(entry)[index]]


def _entry_rows(entry: ScheduleEntry) -> tuple[list[Row], ...]:
    """Return the rows of one schedule for each of :data:`SCHEDULE_FAMILIES`, in order."""
    rows: tuple[list[Row], ...] = tuple([] for _ in SCHEDULE_FAMILIES)
    (
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
    ) = rows
    stats = entry.stats
    labels = (entry.site.name, entry.schedule.name)

    def add(into: list[Row], value: float, extra: str | None = None, suffix: str = "") -> None:
        into.append((suffix, labels, extra, value))

    def count(into: list[Row], value: float, extra: str | None = None) -> None:
        into.append(("_total", labels, extra, value))

    # A run another instance executes counts too: every instance shows the fleet.
    is_running = entry.state is ScheduleState.RUNNING or entry.remote_owner is not None
    add(running, 1.0 if is_running else 0.0)
    add(queued, 1.0 if entry.state is ScheduleState.QUEUED else 0.0)
    add(paused, 1.0 if entry.paused else 0.0)
    live = stats.live
    if live is not None:
        add(progress, live.progress_percent / 100.0)
        add(step_number, float(live.step_number))
        add(started, _seconds(live.started_at))
        add(last_warnings, float(live.warnings))
        if live.last_step_at is not None:
            add(last_step, _seconds(live.last_step_at))
        if is_running:
            current = normalise_domain(live.domain)
            for each in Domain:
                add(domain, 1.0 if each is current else 0.0, each.value)
    if stats.last_duration_seconds is not None:
        add(last_duration, stats.last_duration_seconds)
    durations.extend(_histogram_rows(labels, stats.durations))
    count(warnings_total, float(stats.warnings_total))
    if stats.last_success_at is not None:
        add(last_success, _seconds(stats.last_success_at))
    if stats.last_failure_at is not None:
        add(last_failure, _seconds(stats.last_failure_at))
    if stats.last_status is not None:
        add(last_status, 1.0 if stats.last_status else 0.0)
    add(consecutive, float(stats.consecutive_failures))
    if stats.last_failure_reason is not None:
        add(failure_reason, 1.0, stats.last_failure_reason.value)
    count(runs_total, float(stats.runs_total))
    # Every reason from 0, so that increase() sees a schedule's first failure.
    for reason in FailureReason:
        count(failures_total, float(stats.failures_total.get(reason, 0)), reason.value)
    for skip in SkipReason:
        count(skipped_total, float(stats.skipped_total.get(skip, 0)), skip.value)
    count(retries_total, float(stats.step_retries_total))
    if stats.archive_size_bytes is not None:
        add(archive_size, float(stats.archive_size_bytes))
    if entry.next_due_at is not None:
        add(next_run, _seconds(entry.next_due_at))
    if entry.expected_interval_seconds:
        add(interval, entry.expected_interval_seconds)
    add(run_timeout, entry.schedule.settings.run_timeout_seconds)
    return rows


class FleetCollector(Collector):
    """Collects every metric of DESIGN.md §6 from a :class:`FleetSource` at scrape time."""

    def __init__(self, source: FleetSource) -> None:
        self._source = source
        self._schedule_lines: dict[ScheduleEntry, tuple[tuple[object, ...], tuple[str, ...]]] = {}
        self._site_lines: dict[str, tuple[tuple[object, ...], tuple[str, str]]] = {}

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
        families = [
            RowFamily(spec.name, spec.documentation, spec.type, SCHEDULE_LABELS, spec.extra)
            for spec in SCHEDULE_FAMILIES
        ]
        # An entry's lines are rendered again only when something they show changed: most
        # of 10,000 schedules sit idle between scrapes (bench/README.md, scrape).
        cache: dict[ScheduleEntry, tuple[tuple[object, ...], tuple[str, ...]]] = {}
        previous = self._schedule_lines
        rendered: list[tuple[str, ...]] = []
        for entry in entries:
            fingerprint = _fingerprint(entry)
            found = previous.get(entry)
            if found is None or found[0] != fingerprint:
                found = (fingerprint, self._render_entry(families, entry))
            cache[entry] = found
            rendered.append(found[1])
        self._schedule_lines = cache  # entries gone since the last scrape drop out here
        columns = list(zip(*rendered, strict=True)) if rendered else [() for _ in families]
        for index, family in enumerate(families):
            family.text = list(columns[index])
            family.rows_source = functools.partial(_family_rows, entries, index)
        yield from families

    @staticmethod
    def _render_entry(families: list[RowFamily], entry: ScheduleEntry) -> tuple[str, ...]:
        lines: list[str] = []
        rendered = []
        for family, rows in zip(families, _entry_rows(entry), strict=True):
            lines.clear()
            render_rows(family, lines, rows)
            rendered.append("".join(lines))
        return tuple(rendered)

    # --- per site ------------------------------------------------------------------------

    def _site_metrics(self, sites: list[SiteStatus]) -> Iterator[Metric]:
        info = Metric("akeeba_site_info", "What the site runs, with its configured labels", "gauge")
        latency = RowFamily(
            "akeeba_api_request_duration_seconds",
            "JSON API call latency",
            "histogram",
            ["site", "method"],
        )
        requests = RowFamily(
            "akeeba_api_requests",
            "JSON API calls by outcome (ok or a failure reason)",
            "counter",
            ["site", "method"],
            "outcome",
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
        # As for schedules: a site's lines change only with its calls (each moves the count).
        cache: dict[str, tuple[tuple[object, ...], tuple[str, str]]] = {}
        previous = self._site_lines
        latency.text, requests.text = [], []
        for site in sites:
            api = site.api
            fingerprint = (id(site), id(api), sum(api.requests_total.values()))
            found = previous.get(site.name)
            if found is None or found[0] != fingerprint:
                found = (fingerprint, _render_site(latency, requests, site))
            cache[site.name] = found
            latency.text.append(found[1][0])
            requests.text.append(found[1][1])
        self._site_lines = cache
        latency.rows_source = functools.partial(_site_rows, sites, 0)
        requests.rows_source = functools.partial(_site_rows, sites, 1)
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


def _histogram_rows(labels: tuple[str, ...], histogram: Histogram) -> list[Row]:
    """Return one histogram's rows: cumulative buckets, then _count and _sum."""
    rows: list[Row] = []
    cumulative = 0.0
    for le, seen in histogram.cumulative():
        cumulative = float(seen)
        rows.append(("_bucket", labels, le, cumulative))
    rows.append(("_count", labels, None, cumulative))
    rows.append(("_sum", labels, None, histogram.total))
    return rows


def _site_call_rows(site: SiteStatus) -> tuple[list[Row], list[Row]]:
    """Return one site's rows of the API latency histogram and of the call counter."""
    latency: list[Row] = []
    requests: list[Row] = []
    for method, histogram in sorted(site.api.durations.items()):
        latency.extend(_histogram_rows((site.name, method), histogram))
    for (method, outcome), count in sorted(site.api.requests_total.items()):
        requests.append(("_total", (site.name, method), outcome, float(count)))
    return latency, requests


def _site_rows(sites: list[SiteStatus], index: int) -> list[Row]:
    return [row for site in sites for row in _site_call_rows(site)[index]]


def _render_site(latency: RowFamily, requests: RowFamily, site: SiteStatus) -> tuple[str, str]:
    latency_rows, request_rows = _site_call_rows(site)
    rendered: list[str] = []
    render_rows(latency, rendered, latency_rows)
    latency_text = "".join(rendered)
    rendered.clear()
    render_rows(requests, rendered, request_rows)
    return latency_text, "".join(rendered)
