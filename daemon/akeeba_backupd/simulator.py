"""A fake fleet of Akeeba Backup sites speaking the remote JSON API, with fault injection.

Every reply copies the shapes of the real servers captured in ``shared/fixtures`` (keys, key order,
types, content types, where the status goes): Akeeba Backup Pro 9.9.3 for the v2 API (level 600)
and Akeeba Backup Core 1.3.4 for WordPress for the legacy v1 API (level 330). The daemon's tests,
demo and benchmark run against it, so it is built for many sites and thousands of requests per
second: one aiohttp application, one route for every site, no per-site tasks or timers.

The simulator may only import the standard library and aiohttp (it runs in benchmark processes
of its own), so it cannot take the daemon's ``Clock``: wall time comes from an injectable ``now``
callable and waiting uses event-loop timers that :meth:`Simulator.stop` can cut short.

A control API on the same server lets a test drive a simulator in another process:
``GET /_sim/sites``, ``GET /_sim/sites/{name}``, ``POST /_sim/sites/{name}/faults`` and
``POST /_sim/sites/{name}/settings``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import random
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

__all__ = ["CONTROL_SETTINGS", "Faults", "SimulatedSite", "Simulator", "SiteSpec"]


# --- what a site is and what can go wrong with it ----------------------------------------------


LISTEN_BACKLOG: Final = 4096
"""Pending connections the simulator's socket queues (the kernel caps it at somaxconn)."""


@dataclass
class Faults:
    """Faults injected into one site; "step k" is the k-th stepBackup call of a backup, from 1."""

    auth_failure: bool = False
    """Refuse every call: v2 status 503 "Access denied", v1 status 401 "Authentication failed"."""
    api_disabled: bool = False
    """The JSON API is switched off: every call gets status 503 "Access denied" (v1 too)."""
    junk: str = "none"
    """Noise around every API reply: "none", "php_notice" (a PHP notice before the JSON and a
    warning after), "html" (the JSON inside a whole HTML page) or "bom" (a UTF-8 BOM before)."""
    http500_empty_at_step: int | None = None
    """HTTP 500 with an empty body at step k; the step does not run."""
    db_down_at_step: int | None = None
    """Database down at step k: v2 HTTP 500 with Joomla's HTML error page, v1 HTTP 500 with an
    empty body; the step does not run."""
    fail_count: int = 1
    """How many consecutive attempts at that step fail (for the two faults above)."""
    hang_at_step: int | None = None
    """Step k never answers until this fault is cleared or the server stops; its record keeps
    ``instep`` "1" meanwhile. Once released by clearing, the step completes normally."""
    slow_step_at: int | None = None
    """Step k runs (``instep`` "1" meanwhile) but answers only after ``slow_step_seconds``, or as
    soon as either slow-step field is changed."""
    slow_step_seconds: float = 0.0
    engine_error_at_step: int | None = None
    """Step k answers status 500 "A backup error has occurred: ..."; the record fails."""
    error_with_hasrun_at_step: int | None = None
    """Step k answers status 200 with ``HasRun`` true and a non-empty ``Error``; record fails."""
    backupid_change_at_step: int | None = None
    """(v2) step k's reply carries a different ``backupid`` (the run itself goes on unchanged)."""
    stepnumber_back_at_step: int | None = None
    """(v2) step k's reply carries a ``stepNumber`` lower than the previous reply's."""
    stepnumber_repeat_at_step: int | None = None
    """(v2) step k's reply repeats the previous reply's ``stepNumber`` while ``HasRun`` is true."""
    lose_state_at_step: int | None = None
    """The server forgets the run just before step k: v2 answers status 500 "...problem while
    saving temporary data..." and fails the record; v1 silently starts a new backup (profile 1,
    empty description and comment) under the same key and answers like its first step."""
    foreign_start_at_step: int | None = None
    """Just before step k someone else starts a backup on the site (a new record, profile 1,
    origin "backend", with no engine state here); it kills ours as a second startBackup does."""
    start_silently_fails: bool = False
    """(v1, fixture 203) startBackup answers normally and kills running backups but creates no
    record and no state, so the next stepBackup silently starts a new backup on profile 1."""
    garbage_bytes: int = 0
    """When above 0, every reply body is this many bytes of non-JSON text (HTTP 200, text/html)."""
    redirect_to: str = ""
    """When set, every API call answers HTTP 302 with this ``Location``: "login" for the site's
    own login page (``<site>/login``, an HTML form with HTTP 200), or an absolute URL."""


@dataclass
class SiteSpec:
    """One simulated Akeeba installation."""

    name: str
    """URL path segment: ``http://host:port/<name>/...``."""
    api: str = "v2"
    """"v2" (Akeeba Backup Pro 9.9.3, API 600) or "v1" (Akeeba Backup Core 1.3.4, API 330)."""
    platform: str = "joomla"
    """Which endpoint paths answer: v2 "joomla", "joomla-api", "wordpress", "solo";
    v1 "wordpress", "joomla", "solo"."""
    secret: str = "demo-secret"  # noqa: S105 - the simulated fleet's published demo secret
    profiles: tuple[int, ...] = (1,)
    """What getProfiles lists; startBackup accepts any profile, as the real server does."""
    steps: int = 19
    """stepBackup calls until HasRun is false (19 in the real v2 capture)."""
    step_seconds: float = 0.0
    """Time each startBackup and stepBackup takes on the server."""
    sleep_time_ms: int = 0
    """The v2 ``sleepTime`` field."""
    warnings: tuple[tuple[int, str], ...] = ()
    """(step k, message); k 0 is the startBackup reply. v2 sends each in exactly one reply; v1
    repeats all earlier ones in every later reply, as the 330 engine does."""
    archive_size_bytes: int = 42_617_630
    api_level: int | None = None
    """The API level getVersion reports (default: 600 for v2, 330 for v1); set it below 330 to
    play a server too old for the daemon."""
    faults: Faults = field(default_factory=Faults)


# --- constants copied from the captures --------------------------------------------------------

_V2_LOST: Final = (
    "A backup error has occurred: Akeeba Engine detected a problem while saving temporary data. "
    "Please restart your backup."
)
_V2_NO_BACKUPID: Final = (
    "JSON API :: stepBackup -- You have not provided the required backupid parameter. This "
    "parameter is MANDATORY since May 2016. Please update your client software to include this "
    "parameter."
)
_V2_RETIRED: Final = "This method is no longer supported by the Akeeba Remote JSON API"
_NO_RECORD: Final = "Invalid backup record identifier"
_ENGINE_ERROR: Final = (
    "Could not open /var/www/example/images/headers/walden-pond.jpg for reading. "
    "Check that the file exists and is readable."
)

_V2_VERSION: Final[dict[str, Any]] = {
    "api": 600,
    "component": "9.9.3",
    "date": "2024-05-13",
    "edition": "pro",
}
_V1_VERSION: Final[dict[str, Any]] = {
    "api": "330",
    "component": "1.3.4",
    "date": "2015-06-23",
    "edition": "core",
    "updateinfo": {"stuck": 0, "minstabilityMatch": 1, "platformMatch": 0, "hasUpdate": False},
}

_V2_HEADERS: Final = {
    "Content-Type": "application/json; charset=utf-8",
    "Expires": "Wed, 17 Aug 2005 00:00:00 GMT",
    "Cache-Control": "no-store, no-cache, must-revalidate, post-check=0, pre-check=0",
    "Pragma": "no-cache",
}
_V1_HEADERS: Final = {
    "Content-Type": "text/html; charset=UTF-8",
    "Expires": "Thu, 19 Nov 1981 08:52:00 GMT",
    "Cache-Control": "no-store, no-cache, must-revalidate",
    "Pragma": "no-cache",
}
_HTML: Final = "text/html; charset=UTF-8"

_NOT_FOUND_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body>"
    b"</html>\n"
)
_LOGIN_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Log in</title></head>\n"
    b'<body><form method="post" action="login"><input name="username"><input name="password" '
    b'type="password"><button>Log in</button></form></body></html>\n'
)
_NOT_ACCEPTABLE: Final = b'{"errors":[{"title":"Could not match accept header","code":406}]}'

# The start of Joomla's fatal-error page (fixture 0111), without its 15 kB of translations.
_JOOMLA_ERROR_PAGE: Final = (
    b"<!DOCTYPE html>\n"
    b'<html lang="en-GB"><!-- Sets the correct page language, IMPORTANT DO NOT REMOVE -->\n'
    b"<head>\n"
    b'\t<meta charset="utf-8">\n'
    b'\t<meta name="robots" content="noindex, nofollow">\n'
    b'\t<meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
    b"\t<title>An Error Occurred: Whoops, looks like something went wrong.</title>"
    b"<!-- Sets the page title, IMPORTANT DO NOT REMOVE -->\n"
    b"\t<style>html{background:#ee2a00}body{color:#555;margin:0;padding:0;"
    b"font:14px/18px sans-serif}</style><!-- Sets the page styling, IMPORTANT DO NOT REMOVE -->\n"
    b"</head>\n"
    b"<body>\n"
    b'<div class="container">\n'
    b'\t<div class="container-main">\n'
    b'\t\t<div class="alert-main">\n'
    b'\t\t\t<h1 id="headerText">Sorry, there was a problem we could not recover from.</h1>'
    b"<!-- Sets the page header, IMPORTANT DO NOT REMOVE -->\n"
    b'\t\t\t<p><span id="descText1">The server returned a "500 - Whoops, looks like something '
    b'went wrong."</span></p><!-- Sets the page description, IMPORTANT DO NOT REMOVE -->\n'
    b'\t\t\t<p><a id="linkHelp" class="link-help" target="_blank" rel="noreferrer noopener" '
    b'href="https://docs.joomla.org/Special:MyLanguage/J4.x:FatalError">Help me resolve this</a>'
    b"</p><!-- Sets the help page link, IMPORTANT DO NOT REMOVE -->\n"
    b"\t\t</div>\n"
    b"\t</div>\n"
    b"</div>\n"
    b"</body>\n"
    b"</html>\n"
)

_PHP_NOTICE: Final = (
    "<br />\n<b>Notice</b>:  Undefined index: HTTP_X_FORWARDED_FOR in "
    "<b>/var/www/example/plugins/system/legacyfix/legacyfix.php</b> on line <b>37</b><br />\n"
)
_PHP_WARNING: Final = (
    "<br />\n<b>Warning</b>:  Cannot modify header information - headers already sent by "
    "(output started at /var/www/example/plugins/system/legacyfix/legacyfix.php:37) in "
    "<b>/var/www/example/libraries/src/Application/WebApplication.php</b> on line <b>289</b>"
    "<br />\n"
)
# A template's braces come before the JSON, none after: the page a defensive parser must survive.
_HTML_BEFORE: Final = (
    '<!DOCTYPE html>\n<html lang="en-gb">\n<head>\n<meta charset="utf-8">\n'
    "<title>Example Site - Home</title>\n"
    "<style>body{margin:0;font-family:sans-serif}</style>\n</head>\n<body>\n"
    '<div class="site-content">\n'
)
_HTML_AFTER: Final = "\n</div>\n<footer>Powered by Example CMS</footer>\n</body>\n</html>\n"
_JUNK_KINDS: Final = frozenset({"none", "php_notice", "html", "bom"})
_GARBAGE_UNIT: Final = b"<p>Lorem ipsum dolor sit amet; consectetur 0xDEADBEEF &amp; more.</p>\n"

_ARCHIVE_ALPHABET: Final = string.ascii_letters + string.digits + "-_"
_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_ZERO_DATE: Final = "0000-00-00 00:00:00"

_V2_RECORD_KEYS: Final = (
    "id",
    "description",
    "comment",
    "backupstart",
    "backupend",
    "status",
    "origin",
    "type",
    "profile_id",
    "archivename",
    "absolute_path",
    "multipart",
    "tag",
    "backupid",
    "filesexist",
    "remote_filename",
    "total_size",
    "frozen",
    "instep",
)
_V1_RECORD_KEYS: Final = _V2_RECORD_KEYS[:-2]  # the 330 engine's table has no frozen/instep
_META: Final = {"run": "pending", "fail": "fail", "complete": "ok"}

_V2_PLATFORMS: Final = frozenset(
    {"joomla", "joomla3", "joomla-api", "wordpress", "wordpress-legacy", "solo", "solo-remote"}
)
_V1_PLATFORMS: Final = frozenset({"wordpress", "joomla", "solo"})
_OUTPUT_DIRS: Final = {
    ("v2", "joomla"): "/var/www/example/administrator/components/com_akeebabackup/backup/",
    ("v2", "joomla3"): "/var/www/example/administrator/components/com_akeeba/backup/",
    ("v2", "joomla-api"): "/var/www/example/administrator/components/com_akeebabackup/backup/",
    ("v2", "wordpress"): "/var/www/example/wp-content/plugins/akeebabackupwp/app/backups/",
    ("v2", "wordpress-legacy"): "/var/www/example/wp-content/plugins/akeebabackupwp/app/backups/",
    ("v2", "solo"): "/var/www/example/backups/",
    ("v2", "solo-remote"): "/var/www/example/backups/",
    ("v1", "wordpress"): "/var/www/example/wp-content/plugins/akeebabackupwp/app/backups/",
    ("v1", "joomla"): "/var/www/example/administrator/components/com_akeeba/backup/",
    ("v1", "solo"): "/var/www/example/backups/",
}


@dataclass(frozen=True, slots=True)
class _Phase:
    """Where the engine is after a step: the Domain, Progress and Step of the reply."""

    domain: str
    progress: int
    step: str = ""


# The 19 steps of the real v2 capture (A07); the last entry is the final reply.
_V2_PHASES: Final = (
    _Phase("installer", 0),
    _Phase("installer", 25),
    _Phase("PackDB", 25),
    _Phase("PackDB", 25),
    _Phase("Packing", 50),
    _Phase("Packing", 74, "/var/www/example/administrator/language/en-GB"),
    _Phase("Packing", 74, "/var/www/example/media/vendor/tinymce/langs"),
    _Phase("Packing", 74, "/var/www/example/media/templates/site/govbr-ds/svgs/brands"),
    _Phase("Packing", 74, "/var/www/example/media/templates/site/govbr-ds/svgs/regular"),
    _Phase("Packing", 74, "/var/www/example/media/templates/site/govbr-ds/svgs/solid"),
    _Phase("Packing", 74, "/var/www/example/media/mod_languages/images"),
    _Phase("Packing", 74, "/var/www/example/libraries/vendor/symfony/validator/Constraints"),
    _Phase(
        "Packing",
        74,
        "/var/www/example/libraries/vendor/phpseclib/phpseclib/phpseclib/File/ASN1/Maps",
    ),
    _Phase(
        "Packing", 74, "/var/www/example/libraries/vendor/voku/portable-ascii/src/voku/helper/data"
    ),
    _Phase("Packing", 75, "/var/www/example/modules/mod_related_items/src/Dispatcher"),
    _Phase("finale", 75),
    _Phase("finale", 100),
    _Phase("finale", 100),
    _Phase("finale", 100),
)
# The 11 steps of the real v1 capture (004-014): this engine runs its init in the first step.
_V1_PHASES: Final = (
    _Phase("init", 0),
    _Phase("installer", 0),
    _Phase("installer", 25),
    _Phase("PackDB", 25),
    _Phase("PackDB", 25),
    _Phase("Packing", 50),
    _Phase("Packing", 75, "/var/www/example/wp-admin/user"),
    _Phase("finale", 75),
    _Phase("finale", 100),
    _Phase("finale", 100),
    _Phase("finale", 100),
)


def _phase(phases: tuple[_Phase, ...], step: int, steps: int) -> _Phase:
    """Return the captured phase that step ``step`` of ``steps`` stands for (last = final)."""
    if steps <= 1 or step >= steps:
        return phases[-1]
    return phases[(step - 1) * (len(phases) - 1) // (steps - 1)]


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Api:
    """An API answer: the envelope's status and data (HTTP 200, shaped per API generation)."""

    status: int
    data: Any


@dataclass(frozen=True, slots=True)
class _Raw:
    """An answer from something other than the API: a status, a body and its content type."""

    http_status: int
    body: bytes
    content_type: str = _HTML


_Reply = _Api | _Raw
_EMPTY_500: Final = _Raw(500, b"")
_CLOSING: Final = _Raw(503, b"")


def _php_json(value: Any) -> str:
    """Return ``value`` encoded as PHP's json_encode does: compact, ASCII, slashes escaped."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def _to_int(value: Any) -> int | None:
    """Return ``value`` as an int when it is one or a decimal string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return None


def _to_text(value: Any) -> str:
    """Return ``value`` as a string parameter ("" for None)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _json_or_none(text: str | None) -> Any:
    """Return ``text`` decoded as JSON, or None when it is None or not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _stamp(moment: datetime) -> str:
    """Return ``moment`` as the records' "YYYY-MM-DD HH:MM:SS" (UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _default_description(moment: datetime) -> str:
    """Return the description the server gives a backup started without one (fixture G01)."""
    return (
        f"Backup taken on {_WEEKDAYS[moment.weekday()]}, {moment:%d} {_MONTHS[moment.month - 1]} "
        f"{moment:%Y %H:%M} UTC (JSON API)"
    )


def _utc_now() -> datetime:
    """Return the current UTC time (the default ``now`` of a :class:`Simulator`)."""
    return datetime.now(UTC)


def _wake(future: asyncio.Future[None]) -> None:
    """Resolve a sleeper's future unless it is already resolved."""
    if not future.done():
        future.set_result(None)


def _endpoint_matches(api: str, platform: str, tail: str, query: Mapping[str, str]) -> bool:
    """Return whether path ``tail`` (after the site name) and ``query`` name the site's API."""
    view = query.get("view", "").lower()
    index = tail in ("", "index.php")
    if api == "v2":
        api_view = view == "api" and query.get("format") in (None, "raw", "json")
        if platform == "joomla":
            return index and query.get("option") == "com_akeebabackup" and api_view
        if platform == "joomla-api":
            return tail == "api/index.php/v2/akeebabackup"
        if platform == "wordpress":
            return tail == "wp-admin/admin-ajax.php" and query.get("action") == "akeebabackup_api"
        com_akeeba = query.get("option") == "com_akeeba" and api_view
        if platform == "wordpress-legacy":  # Akeeba Backup for WordPress 7.4-7.7
            return tail == "wp-content/plugins/akeebabackupwp/app/index.php" and com_akeeba
        if platform == "joomla3":  # Akeeba Backup 7.4-8 on Joomla 3
            return index and com_akeeba
        if platform == "solo-remote":  # a Solo whose index.php is not reachable
            return tail == "remote.php" and view == "api"
        return (index and com_akeeba) or (tail == "remote.php" and view == "api")
    if view != "json":
        return False
    if platform == "wordpress":
        return tail == "wp-content/plugins/akeebabackupwp/app/index.php"
    if platform == "joomla":
        return (
            index
            and query.get("option") == "com_akeeba"
            and query.get("format") in ("raw", "component")
        )
    return index or tail == "remote.php"


# --- validation of specs and changes -----------------------------------------------------------

_FAULT_KINDS: Final = {
    "auth_failure": "bool",
    "api_disabled": "bool",
    "junk": "junk",
    "http500_empty_at_step": "step",
    "db_down_at_step": "step",
    "fail_count": "count",
    "hang_at_step": "step",
    "slow_step_at": "step",
    "slow_step_seconds": "seconds",
    "engine_error_at_step": "step",
    "error_with_hasrun_at_step": "step",
    "backupid_change_at_step": "step",
    "stepnumber_back_at_step": "step",
    "stepnumber_repeat_at_step": "step",
    "lose_state_at_step": "step",
    "foreign_start_at_step": "step",
    "start_silently_fails": "bool",
    "garbage_bytes": "count",
    "redirect_to": "text",
}
_SETTING_KINDS: Final = {
    "steps": "positive",
    "step_seconds": "seconds",
    "sleep_time_ms": "count",
    "warnings": "warnings",
    "archive_size_bytes": "count",
    "api_level": "level",
    "profiles": "profiles",
    "secret": "secret",
    "platform": "platform",
}
CONTROL_SETTINGS: Final = frozenset(
    {
        "steps",
        "step_seconds",
        "sleep_time_ms",
        "warnings",
        "archive_size_bytes",
        "profiles",
        "api_level",
    }
)
"""The SiteSpec fields that ``POST /_sim/sites/{name}/settings`` may change."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(kind: str, name: str, value: Any) -> Any:
    """Return ``value`` normalized for a ``kind`` of field; raise ValueError when it is unfit."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "junk" and value in _JUNK_KINDS:
        return value
    if kind == "step" and (value is None or (_is_int(value) and value >= 1)):
        return value
    if kind == "count" and _is_int(value) and value >= 0:
        return value
    if kind == "positive" and _is_int(value) and value >= 1:
        return value
    if kind == "level" and (value is None or (_is_int(value) and value >= 1)):
        return value
    if kind == "seconds" and (_is_int(value) or isinstance(value, float)) and value >= 0:
        return float(value)
    if kind == "secret" and isinstance(value, str) and value:
        return value
    if kind == "text" and isinstance(value, str):
        return value
    if (
        kind == "profiles"
        and isinstance(value, list | tuple)
        and value
        and all(_is_int(item) and item >= 1 for item in value)
    ):
        return tuple(value)
    if kind == "warnings" and isinstance(value, list | tuple):
        pairs = []
        for item in value:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                break
            step, message = item
            if not (_is_int(step) and step >= 0 and isinstance(message, str)):
                break
            pairs.append((step, message))
        else:
            return tuple(pairs)
    if kind == "platform" and isinstance(value, str):
        return value  # checked against the API generation by the caller
    raise ValueError(f"{name}: invalid value {value!r}")


def _checked_changes(kinds: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``changes`` normalized; raise ValueError naming an unknown field or a bad value."""
    checked = {}
    for name, value in changes.items():
        kind = kinds.get(name)
        if kind is None:
            raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(kinds))}")
        checked[name] = _checked(kind, name, value)
    return checked


def _check_platform(api: str, platform: str) -> None:
    """Raise ValueError unless ``platform`` has endpoints for API generation ``api``."""
    known = _V2_PLATFORMS if api == "v2" else _V1_PLATFORMS
    if platform not in known:
        raise ValueError(f"platform {platform!r} has no {api} endpoint; known: {sorted(known)}")


# --- one site ----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Run:
    """The engine state of one backup between steps (what the server keeps in its temp file)."""

    key: str
    """v2: the ``backupid``; v1: the state key ("" when no backupid was sent)."""
    record: dict[str, Any]
    profile: int
    archive: str
    started_by_api: bool
    """False for the runs the v1 engine starts silently: immune to the one-shot state faults."""
    steps_done: int = 0
    last_step_number: int = 2
    alive: bool = True
    executing: asyncio.Future[_Reply] | None = None
    http500_failures: int = 0
    db_down_failures: int = 0


_Handler = Callable[["SimulatedSite", dict[str, Any], str], Awaitable[_Reply]]
RequestTrace = Callable[[str, Mapping[str, str]], Callable[[], None]]
"""Told of each request reaching a site (its name and query); returns what to call on reply."""


class SimulatedSite:
    """One simulated Akeeba installation: its engine state, records and counters for tests."""

    def __init__(self, spec: SiteSpec, simulator: Simulator) -> None:
        self.spec = spec
        self.start_count = 0
        """startBackup calls that passed authentication."""
        self.step_count = 0
        """stepBackup calls that passed authentication (retries and failed attempts included)."""
        self.completed_backups = 0
        self.concurrent_step_violations = 0
        """stepBackup calls that arrived while a step of the same backup was still executing."""
        self.foreign_starts = 0
        self.login_page_requests = 0
        """Requests for the site's login page (where ``redirect_to`` "login" sends clients)."""
        self.login_page_secrets = 0
        """Login page requests that carried the API secret (header or query): a client that
        follows a redirect to another host would hand the secret over like this."""
        self.calls_by_method: dict[str, int] = {}
        """Calls of known methods that reached this site's endpoint, refused ones (wrong secret,
        API switched off) included: what a client's probe cost the site."""
        self.records: list[dict[str, Any]] = []
        """Backup records, oldest first, with the wire fields (strings, as the server keeps
        them) plus ``"corrupt": True`` on a backup that had two steps at once."""
        self._by_id: dict[int, dict[str, Any]] = {}
        self._open: dict[int, dict[str, Any]] = {}  # records with status "run"
        self._runs: dict[str, _Run] = {}
        self._next_id = 1
        self._used_backupids: set[str] = set()
        self._hang_release = asyncio.Event()
        self._slow_sleepers: set[asyncio.Future[None]] = set()
        self._simulator = simulator

    @property
    def name(self) -> str:
        """Return the site's name (its URL path segment)."""
        return self.spec.name

    @property
    def faults(self) -> Faults:
        """Return the site's current faults (change them with :meth:`Simulator.set_faults`)."""
        return self.spec.faults

    @property
    def running(self) -> bool:
        """Return whether the engine holds the state of at least one unfinished backup."""
        return bool(self._runs)

    def summary(self) -> dict[str, Any]:
        """Return the control API's view of this site."""
        return {
            "name": self.spec.name,
            "api": self.spec.api,
            "platform": self.spec.platform,
            "start_count": self.start_count,
            "step_count": self.step_count,
            "completed_backups": self.completed_backups,
            "concurrent_step_violations": self.concurrent_step_violations,
            "running": self.running,
            "records": [dict(record) for record in self.records],
            "foreign_starts": self.foreign_starts,
            "login_page_requests": self.login_page_requests,
            "login_page_secrets": self.login_page_secrets,
            "calls_by_method": dict(self.calls_by_method),
            "faults": dataclasses.asdict(self.spec.faults),
        }

    def login_page(self, request: web.Request) -> web.Response:
        """Answer the site's login page, counting requests that carry the API secret."""
        self.login_page_requests += 1
        secret = self.spec.secret
        sent = request.headers.get("X-Akeeba-Auth") == secret or secret in request.query.values()
        if sent:
            self.login_page_secrets += 1
        return web.Response(body=_LOGIN_PAGE, content_type="text/html", charset="utf-8")

    # --- changes from tests --------------------------------------------------------------------

    def _apply_faults(self, changes: Mapping[str, Any]) -> None:
        """Set fault fields, releasing hung and slow steps whose fault changed."""
        faults = self.spec.faults
        for name, value in changes.items():
            setattr(faults, name, value)
        if "hang_at_step" in changes:
            self._hang_release.set()
            self._hang_release = asyncio.Event()
        if "slow_step_at" in changes or "slow_step_seconds" in changes:
            for sleeper in list(self._slow_sleepers):
                _wake(sleeper)

    def _release_all(self) -> None:
        """Release every hung or slow request (the server is stopping)."""
        self._hang_release.set()
        for sleeper in list(self._slow_sleepers):
            _wake(sleeper)

    # --- HTTP entry points ---------------------------------------------------------------------

    async def handle_v2(self, request: web.Request, host: str) -> _Reply:
        """Answer one v2 request that reached this site's endpoint."""
        verb = request.method
        if verb not in ("GET", "POST"):
            return _Api(405, f"Invalid HTTP method {verb}")
        if verb == "GET":
            source: Mapping[str, Any] = request.query
        else:
            source = await request.post()
        params = {key: value for key, value in source.items() if isinstance(value, str)}
        method = params.get("method", "")
        entry = _V2_METHODS.get(method.lower())
        if entry is not None:
            self._count_call(entry[0])
        faults = self.spec.faults
        if faults.api_disabled or faults.auth_failure or not self._v2_authorised(request):
            return _Api(503, "Access denied")
        if entry is None:
            return _Api(405, f"Invalid method {method}")
        return await entry[1](self, params, host)

    async def handle_v1(self, request: web.Request, host: str) -> _Reply:
        """Answer one v1 request that reached this site's endpoint."""
        faults = self.spec.faults
        raw: str | None = None
        if request.method == "POST":
            value = (await request.post()).get("json")
            raw = value if isinstance(value, str) else None
        if raw is None:
            raw = request.query.get("json")
        envelope = _json_or_none(raw)
        body = envelope.get("body") if isinstance(envelope, dict) else None
        inner = _json_or_none(body) if isinstance(body, str) else None
        method = _to_text(inner.get("method")) if isinstance(inner, dict) else ""
        entry = _V1_METHODS.get(method.lower())
        if entry is not None:
            self._count_call(entry[0])
        if faults.api_disabled:
            return _Api(503, "Access denied")
        if not isinstance(envelope, dict):
            return _Api(500, "JSON decoding error")
        if envelope.get("encapsulation") not in (1, "1"):
            return _Api(503, "The requested encapsulation type is not supported")
        if not isinstance(body, str):
            return _EMPTY_500  # a PHP fatal error in the real server (fixture 107)
        if not isinstance(inner, dict):
            return _Api(500, "JSON decoding error")
        if faults.auth_failure or not self._v1_authorised(inner.get("challenge")):
            return _Api(401, "Authentication failed")
        if entry is None:
            return _Api(405, f"Invalid method {method}")
        data = inner.get("data")
        return await entry[1](self, data if isinstance(data, dict) else {}, host)

    def _count_call(self, method: str) -> None:
        self.calls_by_method[method] = self.calls_by_method.get(method, 0) + 1

    def _v2_authorised(self, request: web.Request) -> bool:
        """Return whether the header (which alone decides when present) or query secret is right."""
        supplied = request.headers.get("X-Akeeba-Auth")
        if supplied is None:
            supplied = request.query.get("_akeebaAuth")
        if supplied is None:
            return False
        return hmac.compare_digest(supplied.encode(), self.spec.secret.encode())

    def _v1_authorised(self, challenge: Any) -> bool:
        """Return whether ``challenge`` is "salt:md5hex(salt + secret)"."""
        if not isinstance(challenge, str) or ":" not in challenge:
            return False
        salt, digest = challenge.split(":", 1)
        if not salt:
            return False
        expected = hashlib.md5((salt + self.spec.secret).encode(), usedforsecurity=False)
        return hmac.compare_digest(digest.lower().encode(), expected.hexdigest().encode())

    # --- methods shared by both generations ----------------------------------------------------

    async def _get_version(self, params: dict[str, Any], host: str) -> _Reply:
        v2 = self.spec.api == "v2"
        version = _V2_VERSION if v2 else _V1_VERSION
        level = self.spec.api_level
        if level is None:
            return _Api(200, version)
        # v1 servers send the level as a string (fixture 001), v2 as an int
        return _Api(200, {**version, "api": level if v2 else str(level)})

    async def _get_profiles(self, params: dict[str, Any], host: str) -> _Reply:
        v2 = self.spec.api == "v2"
        return _Api(
            200,
            [
                {
                    "id": profile if v2 else str(profile),
                    "name": "Default Backup Profile" if profile == 1 else f"Profile {profile}",
                }
                for profile in self.spec.profiles
            ],
        )

    async def _list_backups(self, params: dict[str, Any], host: str) -> _Reply:
        start = max(0, _to_int(params.get("from")) or 0)
        limit = _to_int(params.get("limit")) or 50
        if limit < 1:
            limit = 50
        # Index from the end: the cost is the page size, not the site's whole history.
        records = self.records
        stop = max(0, len(records) - start)
        newest_first = [records[index] for index in range(stop - 1, max(-1, stop - 1 - limit), -1)]
        return _Api(200, [self._listed(record) for record in newest_first])

    async def _get_backup_info(self, params: dict[str, Any], host: str) -> _Reply:
        record = self._record(params.get("backup_id"))
        if record is None:
            return _Api(404, _NO_RECORD)
        info = self._wire(record)
        info["filenames"] = (
            [{"part": 1, "name": record["archivename"], "size": int(record["total_size"])}]
            if record["status"] == "complete" and record["filesexist"] == "1"
            else []
        )
        return _Api(200, info)

    async def _delete(self, params: dict[str, Any], host: str) -> _Reply:
        record = self._record(params.get("backup_id"))
        if record is None:
            return _Api(404, _NO_RECORD)
        self.records.remove(record)
        del self._by_id[int(record["id"])]
        self._open.pop(int(record["id"]), None)
        return _Api(200, True)

    async def _delete_files(self, params: dict[str, Any], host: str) -> _Reply:
        record = self._record(params.get("backup_id"))
        if record is None:
            return _Api(404, _NO_RECORD)
        record["filesexist"] = "0"
        return _Api(200, True)

    async def _retired(self, params: dict[str, Any], host: str) -> _Reply:
        return _Api(501, _V2_RETIRED)

    # --- v2 backup methods ---------------------------------------------------------------------

    async def _v2_start(self, params: dict[str, Any], host: str) -> _Reply:
        self.start_count += 1
        profile = _to_int(params.get("profile")) or 1
        now = self._simulator.now()
        self._kill_running()
        backupid = self._new_backupid(now)
        archive = f"site-{host}-{now:%Y%m%d-%H%M%S}utc-{self._random_suffix()}.jpa"
        record = await self._start_api_run(now, params, profile, archive, backupid)
        return _Api(
            200,
            {
                "HasRun": True,
                "Domain": "init",
                "Step": "",
                "Substep": "",
                "Error": "",
                "Warnings": self._warnings(0),
                "ErrorException": None,
                "Archive": archive,
                "tag": "json",
                "Progress": 0,
                "backupid": backupid,
                "sleepTime": self.spec.sleep_time_ms,
                "stepNumber": 2,
                "stepState": "running",
                "BackupID": int(record["id"]),
                "Profile": profile,
            },
        )

    async def _start_api_run(
        self, now: datetime, params: dict[str, Any], profile: int, archive: str, key: str
    ) -> dict[str, Any]:
        """Create the record and engine state of a backup started through the API under
        ``key``, spend the start's time on the server, and return the record."""
        record = self._new_record(
            now,
            description=_to_text(params.get("description")) or _default_description(now),
            comment=_to_text(params.get("comment")),
            profile=profile,
            archive=archive,
            backupid=key,
            origin="json",
        )
        self._runs[key] = _Run(key, record, profile, archive, started_by_api=True)
        await self._spend_step_time(record)
        return record

    async def _v2_step(self, params: dict[str, Any], host: str) -> _Reply:
        self.step_count += 1
        backupid = _to_text(params.get("backupid"))
        if not backupid:
            return _Api(0, _V2_NO_BACKUPID)
        run = self._runs.get(backupid)
        if run is None:
            return _Api(500, _V2_LOST)
        return await self._execute_step(run, host)

    # --- v1 backup methods ---------------------------------------------------------------------

    async def _v1_start(self, params: dict[str, Any], host: str) -> _Reply:
        self.start_count += 1
        now = self._simulator.now()
        self._kill_running()
        sent = params.get("backupid")
        key = "" if sent is None else _to_text(sent)
        if key == "[DEFAULT]":
            key = f"id{self._next_id}"
        if self.spec.faults.start_silently_fails:
            await self._spend_step_time(None)
        else:
            profile = _to_int(params.get("profile")) or 1
            archive = f"site-{host}-{now:%Y%m%d-%H%M%S}.jpa"
            await self._start_api_run(now, params, profile, archive, key)
        return _Api(
            200,
            {
                "HasRun": 1,
                "Domain": "init",
                "Step": "",
                "Substep": "",
                "Error": "",
                "Warnings": self._warnings(0),
                "Archive": "",
                "tag": "json",
                "Progress": 0,
                "backupid": None if sent is None else key,
                "sleepTime": 0,
                "stepNumber": 1,
                "stepState": "running",
                "BackupID": None,
            },
        )

    async def _v1_step(self, params: dict[str, Any], host: str) -> _Reply:
        self.step_count += 1
        key = _to_text(params.get("backupid"))
        run = self._runs.get(key)
        if run is None:  # the 330 engine never reports a lost backup: it starts a new one
            return await self._v1_silent_restart(key, host)
        return await self._execute_step(run, host)

    async def _v1_silent_restart(self, key: str, host: str) -> _Reply:
        """Start a new backup under ``key`` unasked and answer like its start (fixtures 110, 111,
        116, 118, 302): Domain ``init``, no warnings; its 11 steps follow from the next call."""
        run = self._silent_start(key, host)
        await self._spend_step_time(run.record)
        return _Api(
            200,
            {
                "HasRun": True,
                "Domain": "init",
                "Step": "",
                "Substep": "",
                "Error": False,
                "Warnings": [],
                "Progress": 0,
            },
        )

    # --- the engine ----------------------------------------------------------------------------

    async def _execute_step(self, run: _Run, host: str) -> _Reply:
        """Run the next step of ``run`` with the site's faults; return the reply."""
        if run.executing is not None:
            # No lock on the real server: both calls run the same step from the same saved
            # state, both report success with the same stepNumber, and the archive is corrupt.
            self.concurrent_step_violations += 1
            run.record["corrupt"] = True
            return await asyncio.shield(run.executing)
        faults = self.spec.faults
        step = run.steps_done + 1
        if run.started_by_api and step in (faults.foreign_start_at_step, faults.lose_state_at_step):
            if step == faults.foreign_start_at_step:
                self._foreign_start(host)
            else:
                self._drop_state(run, fail=self.spec.api == "v2")
            return await self._after_state_lost(run, host)
        if faults.http500_empty_at_step == step and run.http500_failures < faults.fail_count:
            run.http500_failures += 1
            return _EMPTY_500
        if faults.db_down_at_step == step and run.db_down_failures < faults.fail_count:
            run.db_down_failures += 1
            return _Raw(500, _JOOMLA_ERROR_PAGE if self.spec.api == "v2" else b"")
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        run.executing = future
        try:
            reply = await self._step_body(run, step)
        except BaseException:
            future.set_result(_EMPTY_500)
            raise
        finally:
            run.executing = None
        future.set_result(reply)
        return reply

    async def _after_state_lost(self, run: _Run, host: str) -> _Reply:
        """Answer a step whose state is gone: v2 reports it, v1 silently starts a new backup."""
        if self.spec.api == "v2":
            return _Api(500, _V2_LOST)
        return await self._v1_silent_restart(run.key, host)

    async def _step_body(self, run: _Run, step: int) -> _Reply:
        """Spend the step's time (hanging or slow when a fault says so), then advance ``run``."""
        faults = self.spec.faults
        record = run.record
        record["instep"] = "1"
        if faults.hang_at_step == step:
            await self._hang_release.wait()
            if self._simulator.stopping:
                return _CLOSING
        if faults.slow_step_at == step:
            await self._simulator.sleep(faults.slow_step_seconds, self._slow_sleepers)
        elif self.spec.step_seconds > 0:
            await self._simulator.sleep(self.spec.step_seconds)
        if not run.alive:  # killed by a startBackup while this step ran
            if self.spec.api == "v2":
                return _Api(500, _V2_LOST)
            return _Api(200, self._v1_step_data(step, final=False, error=False))
        steps = self.spec.steps
        if faults.engine_error_at_step == step:
            self._drop_state(run, fail=True)
            return _Api(500, f"A backup error has occurred: {_ENGINE_ERROR}")
        error = faults.error_with_hasrun_at_step == step
        final = step >= steps and not error
        if error:
            self._drop_state(run, fail=True)
        else:
            run.steps_done = step
        if self.spec.api == "v1":
            data: dict[str, Any] = self._v1_step_data(step, final=final, error=error)
        else:
            now_stamp = _stamp(self._simulator.now())
            if run.alive:
                record["backupend"] = now_stamp
            data = self._v2_step_data(run, step, final=final, error=error)
        if final:
            self._complete(run)
        elif run.alive:
            record["instep"] = "0"
        return _Api(200, data)

    def _v2_step_data(self, run: _Run, step: int, *, final: bool, error: bool) -> dict[str, Any]:
        """Return the v2 status object for ``step`` of ``run``."""
        faults = self.spec.faults
        steps = self.spec.steps
        phase = _phase(_V2_PHASES, step, steps)
        step_number = run.last_step_number if final else 2 + step
        run.last_step_number = step_number
        if faults.stepnumber_back_at_step == step:
            step_number -= 2
        elif faults.stepnumber_repeat_at_step == step and not final:
            step_number -= 1
        backupid = run.key
        if faults.backupid_change_at_step == step:
            backupid = self._new_backupid(self._simulator.now())
        if final:
            state = "finished"
        elif error:
            state = "error"
        else:
            state = "postrun" if step == steps - 1 else "running"
        return {
            "HasRun": not final,
            "Domain": phase.domain,
            "Step": phase.step,
            "Substep": "",
            "Error": _ENGINE_ERROR if error else "",
            "Warnings": self._warnings(step),
            "ErrorException": None,
            "Archive": run.archive,
            "tag": "json",
            "Progress": phase.progress,
            "backupid": backupid,
            "sleepTime": self.spec.sleep_time_ms,
            "stepNumber": step_number,
            "stepState": state,
            "BackupID": None if final else int(run.record["id"]),
            "Profile": run.profile,
        }

    def _v1_step_data(self, step: int, *, final: bool, error: bool) -> dict[str, Any]:
        """Return the API 330 status object for ``step`` (only these seven fields at level 330)."""
        phase = _phase(_V1_PHASES, step, self.spec.steps)
        return {
            "HasRun": not final,
            "Domain": phase.domain,
            "Step": phase.step,
            "Substep": "",
            "Error": _ENGINE_ERROR if error else False,
            "Warnings": self._warnings(step),
            "Progress": phase.progress,
        }

    def _warnings(self, step: int) -> list[str]:
        """Return the warnings a reply for ``step`` carries (v1: every warning so far)."""
        if not self.spec.warnings:
            return []
        if self.spec.api == "v1":
            return [message for at, message in self.spec.warnings if at <= step]
        return [message for at, message in self.spec.warnings if at == step]

    async def _spend_step_time(self, record: dict[str, Any] | None) -> None:
        """Take ``step_seconds`` as startBackup does, with the record ``instep`` meanwhile."""
        if self.spec.step_seconds <= 0:
            return
        if record is not None:
            record["instep"] = "1"
        await self._simulator.sleep(self.spec.step_seconds)
        if record is not None and record["status"] == "run":
            record["instep"] = "0"

    # --- records and state ---------------------------------------------------------------------

    def _new_record(
        self,
        now: datetime,
        *,
        description: str,
        comment: str,
        profile: int,
        archive: str,
        backupid: str,
        origin: str,
    ) -> dict[str, Any]:
        """Create, store and return a running backup record as the server's table holds it."""
        record_id = self._next_id
        self._next_id += 1
        stamp = _stamp(now)
        record: dict[str, Any] = {
            "id": str(record_id),
            "description": description,
            "comment": comment,
            "backupstart": stamp,
            "backupend": stamp if self.spec.api == "v2" else _ZERO_DATE,
            "status": "run",
            "origin": origin,
            "type": "full",
            "profile_id": str(profile),
            "archivename": archive,
            "absolute_path": _OUTPUT_DIRS[self.spec.api, self.spec.platform] + archive,
            "multipart": "0",
            "tag": origin,
            "backupid": backupid,
            "filesexist": "1",
            "remote_filename": None,
            "total_size": "0",
            "frozen": "0",
            "instep": "0",
        }
        self.records.append(record)
        self._by_id[record_id] = record
        self._open[record_id] = record
        return record

    def _silent_start(self, key: str, host: str) -> _Run:
        """Start a backup on profile 1 under ``key`` without being asked (the v1 engine)."""
        now = self._simulator.now()
        archive = f"site-{host}-{now:%Y%m%d-%H%M%S}.jpa"
        record = self._new_record(
            now,
            description="",
            comment="",
            profile=1,
            archive=archive,
            backupid=key,
            origin="json",
        )
        run = _Run(key, record, 1, archive, started_by_api=False)
        self._runs[key] = run
        return run

    def _foreign_start(self, host: str) -> None:
        """Someone starts a backup from the site's back-end: ours dies as on a second start."""
        self.foreign_starts += 1
        self._kill_running()
        now = self._simulator.now()
        v2 = self.spec.api == "v2"
        self._new_record(
            now,
            description=_default_description(now).replace(" (JSON API)", ""),
            comment="",
            profile=1,
            archive=(
                f"site-{host}-{now:%Y%m%d-%H%M%S}utc-{self._random_suffix()}.jpa"
                if v2
                else f"site-{host}-{now:%Y%m%d-%H%M%S}.jpa"
            ),
            backupid=self._new_backupid(now) if v2 else "",
            origin="backend",
        )

    def _kill_running(self) -> None:
        """Fail every running record and drop every engine state, as startBackup does."""
        for run in list(self._runs.values()):
            self._drop_state(run, fail=True)
        for record in list(self._open.values()):
            self._fail_record(record, partial_size=0)

    def _drop_state(self, run: _Run, *, fail: bool) -> None:
        """Forget ``run``'s engine state; when ``fail``, mark its record failed."""
        run.alive = False
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
        if fail and run.record["status"] == "run":
            partial = self.spec.archive_size_bytes * run.steps_done // (self.spec.steps + 1)
            self._fail_record(run.record, partial_size=partial)

    def _fail_record(self, record: dict[str, Any], *, partial_size: int) -> None:
        """Mark ``record`` failed the way each engine writes it."""
        record["status"] = "fail"
        record["remote_filename"] = "NULL" if self.spec.api == "v2" else ""
        if partial_size:
            record["total_size"] = str(partial_size)
        self._open.pop(int(record["id"]), None)

    def _complete(self, run: _Run) -> None:
        """Finish ``run``: a complete record (keeping ``instep`` "1") and no state."""
        record = run.record
        record["status"] = "complete"
        record["backupend"] = _stamp(self._simulator.now())
        record["total_size"] = str(self.spec.archive_size_bytes)
        self._open.pop(int(record["id"]), None)
        self._drop_state(run, fail=False)
        self.completed_backups += 1

    def _record(self, backup_id: Any) -> dict[str, Any] | None:
        """Return the record with id ``backup_id`` (int or digits), or None."""
        record_id = _to_int(backup_id)
        return None if record_id is None else self._by_id.get(record_id)

    def _wire(self, record: dict[str, Any]) -> dict[str, Any]:
        """Return ``record`` with exactly the fields, in the order, its engine sends."""
        keys = _V2_RECORD_KEYS if self.spec.api == "v2" else _V1_RECORD_KEYS
        return {key: record[key] for key in keys}

    def _listed(self, record: dict[str, Any]) -> dict[str, Any]:
        """Return ``record`` as listBackups sends it (with meta, and size when complete)."""
        listed = self._wire(record)
        listed["meta"] = _META[record["status"]]
        if self.spec.api == "v2":
            listed["hasRemoteFiles"] = False
        if record["status"] == "complete":
            listed["size"] = record["total_size"]
        return listed

    def _new_backupid(self, now: datetime) -> str:
        """Return a fresh Akeeba Backup 9 style ``backupid`` (``id-YYYYMMDD-HHMMSS-micro``)."""
        micro = now.microsecond
        while True:
            backupid = f"id-{now:%Y%m%d-%H%M%S}-{micro:06d}"
            if backupid not in self._used_backupids:
                self._used_backupids.add(backupid)
                return backupid
            micro = (micro + 1) % 1_000_000

    def _random_suffix(self) -> str:
        return "".join(self._simulator.rng.choices(_ARCHIVE_ALPHABET, k=16))


_V2_METHODS: Final[dict[str, tuple[str, _Handler]]] = {
    "getversion": ("getVersion", SimulatedSite._get_version),
    "getprofiles": ("getProfiles", SimulatedSite._get_profiles),
    "startbackup": ("startBackup", SimulatedSite._v2_start),
    "stepbackup": ("stepBackup", SimulatedSite._v2_step),
    "listbackups": ("listBackups", SimulatedSite._list_backups),
    "getbackupinfo": ("getBackupInfo", SimulatedSite._get_backup_info),
    "delete": ("delete", SimulatedSite._delete),
    "deletefiles": ("deleteFiles", SimulatedSite._delete_files),
    "log": ("log", SimulatedSite._retired),
    "getlog": ("getLog", SimulatedSite._retired),
}
_V1_METHODS: Final[dict[str, tuple[str, _Handler]]] = {
    "getversion": ("getVersion", SimulatedSite._get_version),
    "getprofiles": ("getProfiles", SimulatedSite._get_profiles),
    "startbackup": ("startBackup", SimulatedSite._v1_start),
    "stepbackup": ("stepBackup", SimulatedSite._v1_step),
    "listbackups": ("listBackups", SimulatedSite._list_backups),
    "getbackupinfo": ("getBackupInfo", SimulatedSite._get_backup_info),
    "delete": ("delete", SimulatedSite._delete),
    "deletefiles": ("deleteFiles", SimulatedSite._delete_files),
}


# --- the server --------------------------------------------------------------------------------


class Simulator:
    """An aiohttp server answering for many simulated sites at ``/<site name>/...``."""

    def __init__(
        self,
        sites: Iterable[SiteSpec],
        *,
        now: Callable[[], datetime] | None = None,
        seed: int | None = None,
        trace: RequestTrace | None = None,
    ) -> None:
        """Build the fleet from ``sites`` (each spec is copied); raise ValueError on a bad spec.

        ``now`` returns aware UTC datetimes for record times and ids (default: the wall clock);
        ``seed`` makes archive names reproducible; ``trace`` (the benchmark's) is called with
        the site's name and the query of every request reaching a site, and the callable it
        returns once the reply is ready.
        """
        self.now: Callable[[], datetime] = now or _utc_now
        self._trace = trace
        self.rng = random.Random(seed)
        self.stopping = False
        self._sites: dict[str, SimulatedSite] = {}
        for spec in sites:
            copy = dataclasses.replace(spec, faults=dataclasses.replace(spec.faults))
            self._validate(copy)
            self._sites[copy.name] = SimulatedSite(copy, self)
        self._sleepers: set[asyncio.Future[None]] = set()
        self._garbage: dict[int, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._app = self._build_app()

    @classmethod
    def fleet(
        cls,
        count: int,
        *,
        secret: str = "demo-secret",  # noqa: S107 - the simulated fleet's published demo secret
        prefix: str = "site",
        seed: int | None = None,
        **spec_defaults: Any,
    ) -> Simulator:
        """Return a simulator of ``count`` alike sites named ``<prefix>-0001`` onwards."""
        faults = spec_defaults.pop("faults", None)
        specs = [
            SiteSpec(
                name=f"{prefix}-{number:04d}",
                secret=secret,
                faults=dataclasses.replace(faults) if isinstance(faults, Faults) else Faults(),
                **spec_defaults,
            )
            for number in range(1, count + 1)
        ]
        return cls(specs, seed=seed)

    def _validate(self, spec: SiteSpec) -> None:
        """Raise ValueError unless ``spec`` describes a site this simulator can serve."""
        if not spec.name or "/" in spec.name or spec.name == "_sim":
            raise ValueError(f"invalid site name {spec.name!r}")
        if spec.name in self._sites:
            raise ValueError(f"duplicate site name {spec.name!r}")
        if spec.api not in ("v1", "v2"):
            raise ValueError(f"{spec.name}: api must be 'v1' or 'v2', not {spec.api!r}")
        _check_platform(spec.api, spec.platform)
        for name, kind in _SETTING_KINDS.items():
            setattr(spec, name, _checked(kind, f"{spec.name}.{name}", getattr(spec, name)))
        for name, kind in _FAULT_KINDS.items():
            value = getattr(spec.faults, name)
            setattr(spec.faults, name, _checked(kind, f"{spec.name}.faults.{name}", value))

    # --- public API ----------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """Return the aiohttp application (sites and control API)."""
        return self._app

    @property
    def sites(self) -> Mapping[str, SimulatedSite]:
        """Return the sites by name."""
        return self._sites

    @property
    def port(self) -> int:
        """Return the bound port; raise RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    def site(self, name: str) -> SimulatedSite:
        """Return the site called ``name``; raise KeyError when there is none."""
        return self._sites[name]

    def set_faults(self, name: str, **changes: Any) -> None:
        """Change faults of a running site; raise KeyError (site) or ValueError (field, value).

        Changing ``hang_at_step`` releases hung steps; changing a slow-step field ends slow ones.
        """
        site = self._sites[name]
        site._apply_faults(_checked_changes(_FAULT_KINDS, changes))

    def update_site(self, name: str, **changes: Any) -> None:
        """Change SiteSpec fields of a running site (not name, api or faults).

        Raise KeyError for an unknown site, ValueError for a field that cannot change or a bad
        value.
        """
        site = self._sites[name]
        checked = _checked_changes(_SETTING_KINDS, changes)
        if "platform" in checked:
            _check_platform(site.spec.api, checked["platform"])
        for field_name, value in checked.items():
            setattr(site.spec, field_name, value)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host``:``port`` (0 picks a free port); return the bound port.

        Raise RuntimeError when already started; OSError when the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        self.stopping = False
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            # A fleet's worth of connections may arrive at once (1,000 fires due in one
            # minute): with aiohttp's default backlog of 128 the kernel drops the SYNs past it
            # and clients retry a second later, a delay no real fleet of servers would add.
            await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104
        self._port = int(runner.addresses[0][1])
        return self._port

    async def stop(self) -> None:
        """Stop serving; hung and sleeping requests are released first, so this returns promptly."""
        self.stopping = True
        for site in self._sites.values():
            site._release_all()
        for sleeper in list(self._sleepers):
            _wake(sleeper)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def base_url(self, name: str) -> str:
        """Return ``http://host:port/<name>/``; raise KeyError (site) or RuntimeError (stopped)."""
        site = self._sites[name]
        return f"http://{self._host}:{self.port}/{site.name}/"

    async def sleep(self, seconds: float, group: set[asyncio.Future[None]] | None = None) -> None:
        """Wait ``seconds`` on a loop timer that :meth:`stop` (or waking ``group``) cuts short."""
        if self.stopping or seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, sleeper)
        self._sleepers.add(sleeper)
        if group is not None:
            group.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)
            if group is not None:
                group.discard(sleeper)

    # --- HTTP ----------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_sim/sites", self._control_list)
        app.router.add_get("/_sim/sites/{name}", self._control_site)
        app.router.add_post("/_sim/sites/{name}/faults", self._control_faults)
        app.router.add_post("/_sim/sites/{name}/settings", self._control_settings)
        app.router.add_route("*", "/{site}/{tail:.*}", self._handle_site)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        return web.Response(status=404, body=_NOT_FOUND_PAGE, content_type="text/html")

    async def _handle_site(self, request: web.Request) -> web.Response:
        site = self._sites.get(request.match_info["site"])
        if site is None:
            return await self._handle_unknown(request)
        if self._trace is None:
            return await self._answer_site(site, request)
        replied = self._trace(site.name, request.query)
        try:
            return await self._answer_site(site, request)
        finally:
            replied()

    async def _answer_site(self, site: SimulatedSite, request: web.Request) -> web.Response:
        spec = site.spec
        if request.match_info["tail"] == "login":
            return site.login_page(request)
        if not _endpoint_matches(
            spec.api, spec.platform, request.match_info["tail"], request.query
        ):
            return await self._handle_unknown(request)
        faults = spec.faults
        if faults.redirect_to:
            location = (
                f"/{spec.name}/login" if faults.redirect_to == "login" else faults.redirect_to
            )
            return web.Response(
                status=302, headers={"Location": location}, content_type="text/html"
            )
        if faults.garbage_bytes > 0:
            return web.Response(body=self._garbage_body(faults.garbage_bytes), headers=_V1_HEADERS)
        if spec.platform == "joomla-api":
            accept = request.headers.get("Accept", "")
            if "application/json" not in accept and "application/vnd.api+json" not in accept:
                return web.Response(
                    status=406,
                    body=_NOT_ACCEPTABLE,
                    headers={"Content-Type": "application/vnd.api+json; charset=utf-8"},
                )
        host = (request.host or spec.name).rsplit(":", 1)[0].strip("[]")
        if spec.api == "v2":
            reply = await site.handle_v2(request, host)
        else:
            reply = await site.handle_v1(request, host)
        if isinstance(reply, _Raw):
            return web.Response(
                status=reply.http_status,
                body=reply.body,
                headers={"Content-Type": reply.content_type},
            )
        if spec.api == "v2":
            text = f'{{"status":{reply.status},"data":{_php_json(reply.data)}}}'
            headers = _V2_HEADERS
        else:
            envelope = {
                "encapsulation": 1,
                "body": {"status": reply.status, "data": _php_json(reply.data)},
            }
            text = f"###{_php_json(envelope)}###"
            headers = _V1_HEADERS
        junk = faults.junk
        if junk == "php_notice":
            text = f"{_PHP_NOTICE}{text}{_PHP_WARNING}"
        elif junk == "html":
            text = f"{_HTML_BEFORE}{text}{_HTML_AFTER}"
        elif junk == "bom":
            text = f"\ufeff{text}"
        return web.Response(body=text.encode(), headers=headers)

    def _garbage_body(self, size: int) -> bytes:
        body = self._garbage.get(size)
        if body is None:
            body = (_GARBAGE_UNIT * (size // len(_GARBAGE_UNIT) + 1))[:size]
            self._garbage[size] = body
        return body

    # --- control API ---------------------------------------------------------------------------

    async def _control_list(self, request: web.Request) -> web.Response:
        return web.json_response([site.summary() for site in self._sites.values()])

    async def _control_site(self, request: web.Request) -> web.Response:
        site = self._sites.get(request.match_info["name"])
        if site is None:
            return _control_error(404, f"no site named {request.match_info['name']!r}")
        return web.json_response(site.summary())

    async def _control_faults(self, request: web.Request) -> web.Response:
        return await self._control_change(request, settings=False)

    async def _control_settings(self, request: web.Request) -> web.Response:
        return await self._control_change(request, settings=True)

    async def _control_change(self, request: web.Request, *, settings: bool) -> web.Response:
        name = request.match_info["name"]
        if name not in self._sites:
            return _control_error(404, f"no site named {name!r}")
        try:
            changes = await request.json()
        except ValueError:
            return _control_error(400, "the body must be a JSON object")
        if not isinstance(changes, dict):
            return _control_error(400, "the body must be a JSON object")
        try:
            if settings:
                unknown = sorted(set(changes) - CONTROL_SETTINGS)
                if unknown:
                    known = ", ".join(sorted(CONTROL_SETTINGS))
                    raise ValueError(f"unknown field {unknown[0]!r}; known: {known}")
                self.update_site(name, **changes)
            else:
                self.set_faults(name, **changes)
        except ValueError as error:
            return _control_error(400, str(error))
        return web.json_response(self._sites[name].summary())


def _control_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
