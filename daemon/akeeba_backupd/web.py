"""The HTTP face of the daemon: /metrics, health, the JSON API and the status page (DESIGN.md §7).

The app reads and drives the daemon only through :class:`Backend`, a narrow interface the
service implements, so tests can serve it over a tiny fake. Write requests need the bearer token
whenever one is configured (the config refuses a non-loopback listener without one).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from akeeba_backupd import __version__
from akeeba_backupd.exposition import GzipExposition, render_exposition
from akeeba_backupd.scheduler import ScheduleEntry, SchedulerError, ScheduleState
from akeeba_backupd.status import FinishedRun
from akeeba_backupd.status_page import render_status_page

RUNS_LIMIT_DEFAULT = 50
RUNS_LIMIT_MAX = 1000


class Backend(Protocol):
    """What the web app needs from the daemon."""

    def readiness(self) -> list[str]:
        """Return why the daemon is not ready (empty when it is)."""
        ...

    def schedule_entries(self) -> Iterable[ScheduleEntry]:
        """Return every schedule."""
        ...

    def trigger(self, site: str, schedule: str) -> ScheduleEntry:
        """Run now; raise SchedulerError."""
        ...

    def pause(self, site: str, schedule: str | None) -> list[ScheduleEntry]:
        """Pause; raise SchedulerError."""
        ...

    def resume(self, site: str, schedule: str | None) -> list[ScheduleEntry]:
        """Resume; raise SchedulerError."""
        ...

    def cancel(self, site: str, schedule: str) -> ScheduleEntry:
        """Cancel a running or queued run; raise SchedulerError."""
        ...

    def api_token(self) -> str | None:
        """Return the bearer token that write requests need, or None when none is set."""
        ...

    def now(self) -> datetime:
        """Return the current time (the injected clock)."""
        ...


def build_app(backend: Backend, registry: CollectorRegistry) -> web.Application:
    """Return the aiohttp application serving ``backend`` and ``registry``."""
    app = web.Application(middlewares=[_json_errors])
    app.router.add_get("/metrics", _metrics_handler(registry))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _bind(backend, _readyz))
    app.router.add_get("/api/v1/schedules", _bind(backend, _schedules))
    app.router.add_get("/api/v1/runs", _bind(backend, _runs))
    for action in ("run", "pause", "resume", "cancel"):
        app.router.add_post(
            f"/api/v1/schedules/{{site}}/{{schedule}}/{action}", _bind(backend, _action)
        )
    app.router.add_post("/api/v1/sites/{site}/pause", _bind(backend, _site_action))
    app.router.add_post("/api/v1/sites/{site}/resume", _bind(backend, _site_action))
    app.router.add_get("/", _bind(backend, _status_page))
    return app


Handler = Callable[[Backend, web.Request], Awaitable[web.StreamResponse]]


def _metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Serve ``registry`` as prometheus-client's aiohttp handler does (content negotiation,
    ``name[]`` filters, gzip), writing the big families itself (exposition.render_exposition)
    and gzipping only the families that changed since the last scrape."""
    fallback = make_aiohttp_handler(registry)
    gzipper = GzipExposition()

    async def handler(request: web.Request) -> web.StreamResponse:
        if "name[]" in request.query:
            return await fallback(request)
        exposition = render_exposition(registry, ",".join(request.headers.getall("Accept", [])))
        if exposition is None:
            return await fallback(request)
        headers = {"Content-Type": exposition.content_type, "Vary": "Accept-Encoding"}
        if "gzip" not in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=exposition.body(), headers=headers)
        job = gzipper.prepare(exposition)
        # Off the event loop: zlib lets go of the GIL while it compresses.
        body = await asyncio.get_running_loop().run_in_executor(None, job.run)
        gzipper.remember(job)
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    return handler


def _bind(
    backend: Backend, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(backend, request)

    return bound


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except SchedulerError as error:
        return _error(error.status, str(error))
    except web.HTTPException as error:
        # aiohttp's own answers (no such route, wrong method) are plain text; the API's
        # clients expect JSON with a message, so say what was wrong in JSON there.
        if error.status < 400 or not request.path.startswith("/api/"):
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return web.json_response(
            {"error": _route_error(error, request)}, status=error.status, headers=headers
        )


def _route_error(error: web.HTTPException, request: web.Request) -> str:
    if error.status == 404:
        return f"no such endpoint: {request.method} {request.path}"
    if error.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return error.reason


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop is alive; keep it that cheap.
    return web.Response(text="ok\n")


async def _readyz(backend: Backend, request: web.Request) -> web.Response:
    problems = backend.readiness()
    if problems:
        return web.json_response({"ready": False, "problems": problems}, status=503)
    return web.json_response({"ready": True, "problems": []})


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schedule_json(entry: ScheduleEntry) -> dict[str, Any]:
    """Return the API's view of one schedule."""
    stats = entry.stats
    live = stats.live
    last = next((run for run in stats.history if run.outcome != "skipped"), None)
    return {
        "site": entry.site.name,
        "schedule": entry.schedule.name,
        "profile": entry.schedule.profile,
        "cron": entry.schedule.cron.expression,
        "cron_resolved": entry.schedule.cron.resolved,
        "timezone": str(entry.schedule.settings.timezone),
        "group": entry.site.group,
        "state": entry.state.value,
        "running_elsewhere": entry.remote_owner,
        "paused": entry.paused,
        "next_run": _iso(entry.next_due_at),
        "expected_interval_seconds": entry.expected_interval_seconds,
        "last_success": _iso(stats.last_success_at),
        "last_success_seeded": stats.last_success_seeded,
        "consecutive_failures": stats.consecutive_failures,
        "last": None if last is None else run_json(last),
        "live": None
        if live is None or (entry.state is not ScheduleState.RUNNING and entry.remote_owner is None)
        else {
            "run_id": live.run_id,
            "started_at": _iso(live.started_at),
            "resumed": live.resumed,
            "progress_percent": live.progress_percent,
            "step_number": live.step_number,
            "domain": live.domain,
            "step": live.step,
            "last_step_at": _iso(live.last_step_at),
            "warnings": live.warnings,
        },
    }


def run_json(run: FinishedRun) -> dict[str, Any]:
    """Return the API's view of one finished run."""
    return {
        "site": run.site,
        "schedule": run.schedule,
        "run_id": run.run_id,
        "outcome": run.outcome,
        "reason": run.reason,
        "message": run.message,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": round(run.duration_seconds, 3),
        "warnings": list(run.warnings),
        "archive": run.archive,
        "archive_size_bytes": run.archive_size_bytes,
        "backup_record_id": run.backup_record_id,
    }


async def _schedules(backend: Backend, request: web.Request) -> web.Response:
    site = request.query.get("site")
    body = [
        schedule_json(entry)
        for entry in backend.schedule_entries()
        if site is None or entry.site.name == site
    ]
    return web.json_response(body, dumps=_dumps)


async def _runs(backend: Backend, request: web.Request) -> web.Response:
    site = request.query.get("site")
    schedule = request.query.get("schedule")
    try:
        limit = int(request.query.get("limit", RUNS_LIMIT_DEFAULT))
    except ValueError:
        return _error(400, "limit must be a whole number")
    if not 1 <= limit <= RUNS_LIMIT_MAX:
        return _error(400, f"limit must be between 1 and {RUNS_LIMIT_MAX}")
    runs = [
        run
        for entry in backend.schedule_entries()
        if (site is None or entry.site.name == site)
        and (schedule is None or entry.schedule.name == schedule)
        for run in entry.stats.history
    ]
    runs.sort(key=lambda run: run.finished_at, reverse=True)
    return web.json_response([run_json(run) for run in runs[:limit]], dumps=_dumps)


def _authorised(backend: Backend, request: web.Request) -> bool:
    token = backend.api_token()
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # aiohttp hands undecodable header bytes over as surrogates: encode them back rather than
    # fail. Comparing digests keeps the comparison constant-time in the token's length too.
    presented = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
    expected = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, expected)


async def _action(backend: Backend, request: web.Request) -> web.Response:
    if not _authorised(backend, request):
        return _unauthorised()
    site, schedule = request.match_info["site"], request.match_info["schedule"]
    action = request.path.rsplit("/", 1)[1]
    if action == "run":
        entry = backend.trigger(site, schedule)
        return web.json_response(schedule_json(entry), status=202, dumps=_dumps)
    if action == "cancel":
        entry = backend.cancel(site, schedule)
        return web.json_response(schedule_json(entry), status=202, dumps=_dumps)
    change = backend.pause if action == "pause" else backend.resume
    (entry,) = change(site, schedule)
    return web.json_response(schedule_json(entry), dumps=_dumps)


async def _site_action(backend: Backend, request: web.Request) -> web.Response:
    if not _authorised(backend, request):
        return _unauthorised()
    site = request.match_info["site"]
    change = backend.pause if request.path.endswith("/pause") else backend.resume
    entries = change(site, None)
    return web.json_response([schedule_json(entry) for entry in entries], dumps=_dumps)


def _unauthorised() -> web.Response:
    return web.json_response(
        {"error": "a valid 'Authorization: Bearer <token>' header is required"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="akeeba-backupd"'},
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- the status page -------------------------------------------------------------------------

_PAGE_HEADERS: Final = {
    # The page has no script and only an inline style sheet: forbid everything else, so even a
    # value that escaped escaping could not run or fetch anything.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _status_page(backend: Backend, request: web.Request) -> web.Response:
    """Serve the status page: read-only, no token needed (GET)."""
    entries = list(backend.schedule_entries())
    runs = [run for entry in entries for run in entry.stats.history]
    page = render_status_page(entries, runs, backend.now(), version=__version__)
    return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)
