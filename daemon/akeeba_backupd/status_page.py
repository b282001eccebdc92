"""The status page served on ``GET /`` (DESIGN.md §7), rendered from plain data.

:func:`render_status_page` turns the schedules, their finished runs and the current time into one
self-contained HTML document: no script, no external asset (the style sheet is inline), and a
``<meta http-equiv="refresh">`` that reloads it. Everything is pure: nothing here does I/O or
reads a clock, so tests render a page from hand-made entries. Every value that reaches the page
(site and schedule names, server messages, the engine's current step) is HTML-escaped; the
daemon masks secrets in messages before they are stored, this module does not rely on that for
markup safety.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from akeeba_backupd.scheduler import ScheduleEntry, ScheduleState
from akeeba_backupd.status import FinishedRun, LiveRun

STALE_FACTOR: Final = 1.25
"""A last success older than this many expected intervals is stale (red); as in the alerts."""
REFRESH_SECONDS: Final = 10
"""How often the browser reloads the page."""
FAILURES_SHOWN: Final = 20
"""Failed runs listed under *Recent failures*, newest first."""
NEXT_RUNS_SHOWN: Final = 10
"""Schedules listed under *Next runs*, soonest first."""
MESSAGE_CHARS_SHOWN: Final = 500
"""Longer failure messages are cut on the page (``/api/v1/runs`` has them whole)."""
STEP_CHARS_SHOWN: Final = 120
"""Longer engine step descriptions are cut on the page."""


class Health(StrEnum):
    """The colour of a schedule on the status page (also its CSS class)."""

    GREEN = "green"
    """Backed up within its expected interval, last run not failed."""
    AMBER = "amber"
    """Needs a look: the last run failed once, or the last success is a little overdue."""
    RED = "red"
    """Needs action: no backup at all, stale beyond 1.25 intervals, or failing repeatedly."""


def backup_age_seconds(entry: ScheduleEntry, now: datetime) -> float | None:
    """Return the seconds since the end of the schedule's last successful run (>= 0), or None
    when it never succeeded."""
    last = entry.stats.last_success_at
    return None if last is None else max(0.0, (now - last).total_seconds())


def health(entry: ScheduleEntry, now: datetime) -> Health:
    """Return the schedule's colour at ``now``.

    With *age* the time since the last successful run ended and *interval* the schedule's
    expected interval (the longest gap between its fire times):

    - **red** when it never succeeded (including a schedule still waiting for its first run:
      there is no backup to restore), or 2 or more runs failed in a row, or age > 1.25 x
      interval (stale, the threshold of the ``AkeebaBackupStale`` alert before its run-time
      allowance);
    - **amber** when the last run failed (once), or interval < age <= 1.25 x interval while no
      run of the schedule is running or queued (a run under way is the next backup on its way,
      so a run a little slower than the previous one does not turn the row amber);
    - **green** otherwise: age within the interval and the last run did not fail.

    An interval of 0 (a cron that fires less than twice in 400 days) is never stale. Paused
    schedules follow the same rule: a paused schedule goes stale like any other.
    """
    stats = entry.stats
    age = backup_age_seconds(entry, now)
    if age is None or stats.consecutive_failures >= 2:
        return Health.RED
    interval = entry.expected_interval_seconds
    if interval > 0 and age > STALE_FACTOR * interval:
        return Health.RED
    if stats.consecutive_failures == 1:
        return Health.AMBER
    under_way = entry.state in (ScheduleState.RUNNING, ScheduleState.QUEUED)
    if interval > 0 and age > interval and not under_way:
        return Health.AMBER
    return Health.GREEN


def fleet_order(entries: Iterable[ScheduleEntry], now: datetime) -> list[ScheduleEntry]:
    """Return the entries oldest backup first: never-succeeded ones first, then by descending
    age; ties by site then schedule name, so the order is stable between refreshes."""

    def key(entry: ScheduleEntry) -> tuple[float, str, str]:
        age = backup_age_seconds(entry, now)
        return (-(float("inf") if age is None else age), entry.site.name, entry.schedule.name)

    return sorted(entries, key=key)


def recent_failures(runs: Iterable[FinishedRun], limit: int = FAILURES_SHOWN) -> list[FinishedRun]:
    """Return the ``limit`` most recently finished failed runs of ``runs``, newest first."""
    failed = [run for run in runs if run.outcome == "failed"]
    failed.sort(key=lambda run: (run.finished_at, run.site, run.schedule), reverse=True)
    return failed[:limit]


def format_duration(seconds: float) -> str:
    """Return ``seconds`` (rounded, negative as 0) in its two largest units: ``42s``,
    ``12m 5s``, ``3h 12m``, ``2d 3h``; a zero second unit is left out (``1h``)."""
    whole = max(0, round(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units):
        if whole < size and unit != "s":
            continue
        major, rest = divmod(whole, size)
        text = f"{major}{unit}"
        if unit != "s":
            minor_unit, minor_size = units[index + 1]
            if rest // minor_size:
                text += f" {rest // minor_size}{minor_unit}"
        return text
    raise AssertionError("unreachable: the seconds unit always matches")


def render_status_page(
    entries: Iterable[ScheduleEntry],
    runs: Iterable[FinishedRun],
    now: datetime,
    *,
    version: str,
    refresh_seconds: int = REFRESH_SECONDS,
) -> str:
    """Return the status page as one HTML document.

    ``entries`` are every schedule (any order); ``runs`` the finished runs known (any order, any
    outcome: the page lists the failed ones); ``now`` is an aware datetime. Sections: a summary
    of colours and states, running backups with progress bars (and the queued ones), the fleet
    oldest backup first with its colour, recent failures with reason and message, next runs.
    """
    fleet = fleet_order(entries, now)
    colours = {id(entry): health(entry, now) for entry in fleet}
    running = [entry for entry in fleet if _live(entry) is not None]
    running.sort(key=lambda entry: (entry.site.name, entry.schedule.name))
    queued = [entry for entry in fleet if entry.state is ScheduleState.QUEUED]
    queued.sort(key=lambda entry: (entry.queued_fire_at or now, entry.site.name))
    upcoming = sorted(
        (entry for entry in fleet if entry.next_due_at is not None and not entry.paused),
        key=lambda entry: (entry.next_due_at or now, entry.site.name, entry.schedule.name),
    )[:NEXT_RUNS_SHOWN]
    counts = {colour: 0 for colour in Health}
    for colour in colours.values():
        counts[colour] += 1
    paused = sum(1 for entry in fleet if entry.paused)
    summary = (
        f'<p class="summary"><span class="chip green">{counts[Health.GREEN]} green</span> '
        f'<span class="chip amber">{counts[Health.AMBER]} amber</span> '
        f'<span class="chip red">{counts[Health.RED]} red</span> '
        f"of {len(fleet)} schedules; {len(running)} running, {len(queued)} queued, "
        f"{paused} paused.</p>"
    )
    sections = [
        summary,
        _running_section(running, queued, now),
        _fleet_section(fleet, colours, now),
        _failures_section(recent_failures(runs), now),
        _next_runs_section(upcoming, now),
    ]
    return _PAGE.format(
        refresh=int(refresh_seconds),
        version=_esc(version),
        now_iso=_esc(_iso(now)),
        now=_esc(_clock_time(now)),
        style=_STYLE,
        body="\n".join(sections),
    )


# --- sections ----------------------------------------------------------------------------------


def _running_section(
    running: Sequence[ScheduleEntry], queued: Sequence[ScheduleEntry], now: datetime
) -> str:
    rows = []
    for entry in running:
        live = _live(entry)
        assert live is not None  # running holds only entries with a live run
        percent = min(100, max(0, live.progress_percent))
        step = _cut(live.step, STEP_CHARS_SHOWN)
        rows.append(
            '<tr class="running">'
            f"<td>{_name(entry)}</td>"
            f'<td class="progress"><progress max="100" value="{percent}"'
            f' data-site="{_esc(entry.site.name)}" data-schedule="{_esc(entry.schedule.name)}"'
            f' aria-label="{_esc(entry.site.name)}/{_esc(entry.schedule.name)} progress">'
            f"{percent} %</progress> <span>{percent} %</span></td>"
            f'<td class="num">{live.step_number}</td>'
            f"<td>{_esc(live.domain)}</td>"
            f'<td class="step">{_esc(step)}</td>'
            f"<td>{_esc(format_duration((now - live.started_at).total_seconds()))}"
            f"{' (resumed)' if live.resumed else ''}</td>"
            f'<td class="num">{live.warnings}</td>'
            "</tr>"
        )
    table = (
        '<table id="running"><thead><tr><th>schedule</th><th>progress</th><th>step</th>'
        "<th>phase</th><th>working on</th><th>running for</th><th>warnings</th></tr></thead>"
        f"<tbody>{''.join(rows) or _empty(7, 'no backup is running')}</tbody></table>"
    )
    waiting = ""
    if queued:
        names = ", ".join(_name(entry) for entry in queued)
        waiting = f'<p class="queued">Queued, waiting for a free slot or site: {names}</p>'
    return f"<h2>Running backups</h2>\n{table}\n{waiting}"


def _fleet_section(
    fleet: Sequence[ScheduleEntry], colours: dict[int, Health], now: datetime
) -> str:
    rows = []
    for entry in fleet:
        stats = entry.stats
        colour = colours[id(entry)]
        age = backup_age_seconds(entry, now)
        if age is None:
            last_success = "never"
        else:
            assert stats.last_success_at is not None
            last_success = _moment(stats.last_success_at, f"{format_duration(age)} ago")
            if stats.last_success_seeded:
                last_success += ' <small title="from the site\'s own backup list">(site)</small>'
        interval = entry.expected_interval_seconds
        if stats.last_status is None:
            last_run = "none yet"
        elif stats.last_status:
            last_run = "succeeded"
        else:
            last_run = f"failed: {_esc(stats.last_failure_reason or 'unknown')}"
            if stats.consecutive_failures > 1:
                last_run += f" ({stats.consecutive_failures} in a row)"
        state = _esc(entry.state.value)
        if entry.paused:
            state += ' <span class="tag">paused</span>'
        rows.append(
            f'<tr class="{colour}"><td><span class="dot {colour}"></span>{colour}</td>'
            f"<td>{_esc(entry.site.name)}</td><td>{_esc(entry.schedule.name)}</td>"
            f"<td>{last_success}</td>"
            f"<td>{_esc(format_duration(interval)) if interval > 0 else '—'}</td>"
            f"<td>{last_run}</td><td>{state}</td>"
            f"<td>{_next_run(entry, now)}</td></tr>"
        )
    return (
        "<h2>Fleet, oldest backup first</h2>\n"
        '<table id="fleet"><thead><tr><th>health</th><th>site</th><th>schedule</th>'
        "<th>last success</th><th>expected every</th><th>last run</th><th>state</th>"
        "<th>next run</th></tr></thead>"
        f"<tbody>{''.join(rows) or _empty(8, 'no schedules configured')}</tbody></table>"
    )


def _failures_section(failures: Sequence[FinishedRun], now: datetime) -> str:
    rows = [
        "<tr>"
        f"<td>{_moment(run.finished_at, _ago(run.finished_at, now))}</td>"
        f"<td>{_esc(run.site)}/{_esc(run.schedule)}</td>"
        f'<td class="reason">{_esc(run.reason or "")}</td>'
        f'<td class="message">{_esc(_cut(run.message, MESSAGE_CHARS_SHOWN))}</td>'
        "</tr>"
        for run in failures
    ]
    return (
        "<h2>Recent failures</h2>\n"
        '<table id="failures"><thead><tr><th>when</th><th>schedule</th><th>reason</th>'
        "<th>message</th></tr></thead>"
        f"<tbody>{''.join(rows) or _empty(4, 'no failed run kept in the history')}</tbody></table>"
    )


def _next_runs_section(upcoming: Sequence[ScheduleEntry], now: datetime) -> str:
    rows = [
        f"<tr><td>{_next_run(entry, now)}</td><td>{_name(entry)}</td>"
        f"<td>{_cron(entry)}</td>"
        f"<td>{_esc(str(entry.schedule.settings.timezone))}</td></tr>"
        for entry in upcoming
    ]
    return (
        "<h2>Next runs</h2>\n"
        '<table id="next"><thead><tr><th>when</th><th>schedule</th><th>cron</th>'
        "<th>time zone</th></tr></thead>"
        f"<tbody>{''.join(rows) or _empty(4, 'nothing scheduled')}</tbody></table>"
    )


# --- small pieces ------------------------------------------------------------------------------


def _live(entry: ScheduleEntry) -> LiveRun | None:
    # stats.live outlives its run (it is the "last run" view); only a running entry's is live.
    return entry.stats.live if entry.state is ScheduleState.RUNNING else None


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _name(entry: ScheduleEntry) -> str:
    return f"{_esc(entry.site.name)}/{_esc(entry.schedule.name)}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _clock_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _moment(moment: datetime, text: str) -> str:
    iso = _esc(_iso(moment))
    return f'<time datetime="{iso}" title="{_esc(_clock_time(moment))}">{_esc(text)}</time>'


def _ago(moment: datetime, now: datetime) -> str:
    return f"{format_duration((now - moment).total_seconds())} ago"


def _next_run(entry: ScheduleEntry, now: datetime) -> str:
    due = entry.next_due_at
    if due is None:
        return "—"
    seconds = (due - now).total_seconds()
    text = f"in {format_duration(seconds)}" if seconds > 0 else "now"
    if entry.paused:
        text += " (paused)"
    return _moment(due, text)


def _cron(entry: ScheduleEntry) -> str:
    cron = entry.schedule.cron
    text = f"<code>{_esc(cron.expression)}</code>"
    if cron.resolved != cron.expression:
        text += f" <small>= <code>{_esc(cron.resolved)}</code></small>"
    return text


def _empty(columns: int, text: str) -> str:
    return f'<tr class="empty"><td colspan="{columns}">{_esc(text)}</td></tr>'


_STYLE: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em 2em;
  color:#1d1d1f;background:#fafafa}
h1{font-size:1.5em;margin:0 0 .2em}h1 small{font-weight:normal;color:#666;font-size:.6em}
h2{font-size:1.15em;margin:1.6em 0 .5em}
table{border-collapse:collapse;background:#fff;box-shadow:0 0 0 1px #e3e3e3;min-width:40em}
th,td{padding:.3em .75em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f2f2f2;font-weight:600;font-size:.9em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.message{max-width:50em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.92em}
td.step{max-width:28em;overflow-wrap:anywhere;color:#444;font-size:.92em}
tr.green td:first-child{box-shadow:inset 4px 0 #2e9d4c}
tr.amber td{background:#fff6dc}tr.amber td:first-child{box-shadow:inset 4px 0 #e0a100}
tr.red td{background:#fde6e6}tr.red td:first-child{box-shadow:inset 4px 0 #d33}
tr.empty td{color:#777;font-style:italic}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em}
.dot.green,.chip.green{background:#2e9d4c}.dot.amber,.chip.amber{background:#e0a100}
.dot.red,.chip.red{background:#d33}
.chip{color:#fff;padding:.1em .6em;border-radius:1em;font-weight:600}
.tag{background:#e4e4f4;border-radius:.3em;padding:0 .4em;font-size:.85em}
progress{width:14em;height:1.1em;vertical-align:middle;accent-color:#2f6fdb}
td.progress span{font-variant-numeric:tabular-nums;margin-left:.3em}
small,.meta{color:#666}
a{color:#2f6fdb}
code{font-size:.95em}
"""

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>akeeba-backupd status</title>
<style>{style}</style></head><body>
<h1>akeeba-backupd <small>{version}</small></h1>
<p class="meta">As of <time datetime="{now_iso}">{now}</time>; this page reloads every {refresh} s.
Read-only: use the control API or the CLI to run, pause, resume or cancel.
<a href="/metrics">/metrics</a> · <a href="/api/v1/schedules">/api/v1/schedules</a> ·
<a href="/api/v1/runs">/api/v1/runs</a></p>
{body}
</body></html>
"""
