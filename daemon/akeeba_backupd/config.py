"""YAML configuration → validated, frozen, fully resolved :class:`Config`; every error at once.

Two layers:

- *File models* (pydantic, ``extra="forbid"``) mirror the YAML exactly. They generate
  ``config/schema.json`` (``python -m akeeba_backupd.config --schema``) for editors.
- *Resolved config* (frozen dataclasses) is what the daemon uses: defaults → site → schedule
  inheritance done, secrets read, cron expressions parsed, durations in seconds.

:func:`load_config` reads the YAML node by node, remembering the line of every value, so each
problem (YAML syntax, YAML 1.1 traps, duplicate keys, schema errors, and cross-field checks such
as unique names, secrets, cron, groups) becomes one :class:`ConfigIssue` with its path and line.
All of them are raised together in one :class:`ConfigError`. No message ever contains a secret.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import ipaddress
import json
import os
import re
import socket
import stat
import string
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from akeeba_backupd.akeeba.options import ApiGeneration, AuthPlacement, HttpVerb, Platform
from akeeba_backupd.akeeba.secret import Secret
from akeeba_backupd.cron import CronError, CronSchedule, parse_cron

__all__ = [
    "DEFAULT_DESCRIPTION",
    "DEFAULT_LISTEN",
    "DEFAULT_STATE_DIR",
    "Config",
    "ConfigError",
    "ConfigFile",
    "ConfigIssue",
    "Limits",
    "LimitsFile",
    "MisfirePolicy",
    "RunSettings",
    "ScheduleConfig",
    "ScheduleFile",
    "SettingsFile",
    "SiteConfig",
    "SiteFile",
    "StateBackend",
    "StateFile",
    "StateSettings",
    "config_json_schema",
    "is_loopback_host",
    "load_config",
    "parse_duration",
    "parse_listen",
]

DEFAULT_LISTEN: Final = "127.0.0.1:9489"
DEFAULT_STATE_DIR: Final = Path("/var/lib/akeeba-backupd")
DEFAULT_DESCRIPTION: Final = "{site} {schedule} {date}"
DESCRIPTION_PLACEHOLDERS: Final = ("date", "site", "schedule", "run_id")
# Labels the daemon sets itself, and the two Prometheus owns.
RESERVED_LABELS: Final = frozenset(
    {
        "site",
        "schedule",
        "reason",
        "domain",
        "method",
        "outcome",
        "api_level",
        "version",
        "edition",
        "platform",
        "job",
        "instance",
    }
)

_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,64}")
_GROUP_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Only names written like this are echoed in messages: anything else may be a pasted secret.
_CONVENTIONAL_ENV_NAME_RE: Final = re.compile(r"[A-Z_][A-Z0-9_]*")
# Keys that name where a secret is: a value of the wrong type there is likely the secret itself.
_SECRET_REFERENCE_KEYS: Final = frozenset(
    {"secret_file", "secret_env", "api_token_file", "dsn_file"}
)
_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_CREDENTIALS_VARIABLE_RE: Final = re.compile(
    r"\$(?:\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY(?![A-Za-z0-9_]))"
)

# --- durations and addresses ---------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION_RE: Final = re.compile(
    rf"(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m(?!s))?(?:{_NUMBER}s)?(?:{_NUMBER}ms)?"
)
_DURATION_UNIT_SECONDS: Final = (86400.0, 3600.0, 60.0, 1.0, 0.001)
_DURATION_PATTERN: Final = (
    r"^(\d+(\.\d+)?d)?(\d+(\.\d+)?h)?(\d+(\.\d+)?m)?(\d+(\.\d+)?s)?(\d+(\.\d+)?ms)?$"
)
_DURATION_HINT: Final = "write seconds as a number, or a string like 90s, 30m, 6h, 1d, 1h30m, 500ms"


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds: a non-negative int (seconds) or a string like ``1h30m``.

    Units are ``d``, ``h``, ``m``, ``s`` and ``ms``, largest first; a string of digits alone
    means seconds. Raise ValueError, naming the value, when it is negative or malformed.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid duration {_show(value)}: {_DURATION_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative duration {value}: durations are 0 or more")
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"negative duration {value!r}: durations are 0 or more")
    if text.isdecimal() and text.isascii():
        return float(text)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None or all(part is None for part in match.groups()):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    return sum(
        float(part) * unit
        for part, unit in zip(match.groups(), _DURATION_UNIT_SECONDS, strict=True)
        if part is not None
    )


def parse_listen(text: str) -> tuple[str, int]:
    """Return ``(host, port)`` from ``host:port`` or ``[ipv6]:port``; the host has no brackets.

    Port 0 means any free port. Raise ValueError with a one-line message when malformed.
    """
    hint = 'write "host:port", e.g. "127.0.0.1:9489" or "[::1]:9489"'
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid listen address {text!r}: {hint}")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid listen address {text!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, separator, port_text = text.rpartition(":")
        if not separator or not host:
            raise ValueError(f"invalid listen address {text!r}: {hint}")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {text!r}: put an IPv6 address in brackets, e.g. [::1]:9489"
            )
        if not _is_ipv4(host) and (
            re.fullmatch(r"[\d.]+", host) or not _HOSTNAME_RE.fullmatch(host)
        ):
            raise ValueError(f"invalid listen address {text!r}: {host!r} is not a host name or IP")
    if not (port_text.isdecimal() and port_text.isascii()) or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {text!r}: the port must be 0 to 65535")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """Return True when ``host`` is ``localhost``, in 127.0.0.0/8, or ``::1``."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- field validators for the file models -----------------------------------------------------
# Each raises PydanticCustomError so the message reaches the user as written (no "Value error,").


def _custom_error(kind: str, message: str) -> PydanticCustomError:
    # No context: the message is used as is, braces included.
    return PydanticCustomError(kind, message)


def _validate_duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise _custom_error("duration", str(error)) from None


def _validate_positive_duration(value: object) -> float:
    seconds = _validate_duration(value)
    if seconds <= 0:
        raise _custom_error("duration", f"must be more than 0, got {_show(value)}")
    return seconds


_DURATION_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [
        {"type": "string", "pattern": _DURATION_PATTERN},
        {"type": "integer", "minimum": 0},
    ]
}
Duration = Annotated[float, PlainValidator(_validate_duration), WithJsonSchema(_DURATION_SCHEMA)]
PositiveDuration = Annotated[
    float, PlainValidator(_validate_positive_duration), WithJsonSchema(_DURATION_SCHEMA)
]


def _validate_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _custom_error(
            "timezone",
            f"unknown timezone {value!r}: use an IANA name such as UTC or Europe/Amsterdam",
        ) from None
    return value


def _validate_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _custom_error(
            "name", f"invalid name {value!r}: use 1 to 64 characters from a-z, 0-9, _ and -"
        )
    return value


def _validate_group_name(value: str) -> str:
    if not _GROUP_RE.fullmatch(value):
        raise _custom_error(
            "group",
            f"invalid group name {value!r}: use 1 to 64 characters from A-Z, a-z, 0-9, _, . and -",
        )
    return value


def _validate_label_name(value: str) -> str:
    if not _LABEL_RE.fullmatch(value):
        raise _custom_error(
            "label", f"invalid label name {value!r}: use [a-zA-Z_][a-zA-Z0-9_]* (Prometheus)"
        )
    if value.startswith("__"):
        raise _custom_error(
            "label", f"invalid label name {value!r}: names starting with __ belong to Prometheus"
        )
    if value in RESERVED_LABELS:
        raise _custom_error(
            "label", f"label name {value!r} is taken by akeeba-backupd or Prometheus: pick another"
        )
    return value


def _validate_env_name(value: str) -> str:
    # Never echo the value: a pasted secret instead of a variable name fails exactly here.
    if not _ENV_NAME_RE.fullmatch(value):
        raise _custom_error(
            "secret_env",
            "secret_env must be the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*), "
            "not the secret itself",
        )
    return value


def _validate_non_empty(value: str) -> str:
    if not value:
        raise _custom_error("empty", "must not be empty")
    return value


def _url_problem(value: str, *, allow_query: bool) -> str | None:
    """Return why ``value`` is not a usable http(s) URL, without quoting it, or None."""
    from urllib.parse import urlsplit

    if value != value.strip() or any(character.isspace() for character in value):
        return "must not contain spaces"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 # raises ValueError on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host name"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials (user:password@): the API secret goes in secret_file"
    if parts.query and not allow_query:
        return "must not have a query string (?...): give the site's base URL"
    if "_akeebaauth" in parts.query.lower():
        return "must not carry _akeebaAuth: the API secret goes in secret_file or secret_env"
    if parts.fragment:
        return "must not have a fragment (#...)"
    return None


def _validate_site_url(value: str) -> str:
    # URLs are never echoed: they may carry credentials or a secret in the query string.
    problem = _url_problem(value, allow_query=False)
    if problem is not None:
        raise _custom_error("url", f"url {problem}")
    return value


def _validate_endpoint(value: str) -> str:
    problem = _url_problem(value, allow_query=True)
    if problem is not None:
        raise _custom_error("url", f"endpoint {problem}")
    return value


def _validate_tls_verify(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        return value
    raise _custom_error(
        "tls_verify", f"expected true, false or the path of a CA bundle file, got {_show(value)}"
    )


def _validate_description(value: str) -> str:
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as error:
        raise _custom_error(
            "description",
            f"invalid description {value!r}: {error}; write {{{{ and }}}} for literal braces",
        ) from None
    allowed = ", ".join(f"{{{name}}}" for name in DESCRIPTION_PLACEHOLDERS)
    for _literal, name, format_spec, conversion in parsed:
        if name is None:
            continue
        if name not in DESCRIPTION_PLACEHOLDERS:
            raise _custom_error(
                "description",
                f"unknown placeholder {{{name}}} in description {value!r}: use {allowed}",
            )
        if format_spec or conversion:
            raise _custom_error(
                "description",
                f"placeholder {{{name}}} in description {value!r} takes no format or conversion",
            )
    return value


def _validate_listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as error:
        raise _custom_error("listen", str(error)) from None
    return value


Name = Annotated[
    str,
    AfterValidator(_validate_name),
    WithJsonSchema({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}),
]
GroupName = Annotated[
    str,
    AfterValidator(_validate_group_name),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}),
]
LabelName = Annotated[str, AfterValidator(_validate_label_name)]
NonEmptyString = Annotated[str, AfterValidator(_validate_non_empty), Field(min_length=1)]
TimezoneName = Annotated[str, AfterValidator(_validate_timezone)]
SiteUrl = Annotated[
    str,
    AfterValidator(_validate_site_url),
    WithJsonSchema({"type": "string", "pattern": "^https?://[^/?#@]+(/[^?#]*)?$"}),
]
EndpointUrl = Annotated[
    str,
    AfterValidator(_validate_endpoint),
    WithJsonSchema({"type": "string", "pattern": "^https?://"}),
]
EnvName = Annotated[
    str,
    AfterValidator(_validate_env_name),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}),
]
TlsVerify = Annotated[
    bool | str,
    PlainValidator(_validate_tls_verify),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "minLength": 1}]}),
]
DescriptionTemplate = Annotated[str, AfterValidator(_validate_description)]
ListenAddress = Annotated[str, AfterValidator(_validate_listen)]
Count = Annotated[StrictInt, Field(ge=1)]


# --- file models -----------------------------------------------------------------------------


class MisfirePolicy(StrEnum):
    """What to do with a fire time missed while the daemon was down or the machine asleep."""

    RUN_ONCE = "run_once"
    """Run once for the latest missed fire time within ``misfire_grace``."""
    SKIP = "skip"
    """Do not catch up; wait for the next fire time."""


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SettingsFile(_FileModel):
    """Run settings: set under ``defaults``, overridable per site and per schedule."""

    timezone: TimezoneName | None = None
    """Time zone of the cron expressions (IANA name, e.g. Europe/Amsterdam). Default UTC."""
    request_timeout: PositiveDuration | None = None
    """Longest wait for one HTTP call to the site's API. Default 300s."""
    connect_timeout: PositiveDuration | None = None
    """Longest wait to open a connection to the site. Default 10s."""
    run_timeout: PositiveDuration | None = None
    """Deadline for a whole run, from start to verdict. Default 6h."""
    stall_timeout: PositiveDuration | None = None
    """Fail a run whose replies stop moving (step number, domain, step, progress) this long.
    Default 30m."""
    step_retries: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    """Transport failures retried per step, with the same backupid (0 to 20). Default 3."""
    retry_backoff: Duration | None = None
    """Delay before the first step retry, doubled for each further retry. Default 10s."""
    misfire: MisfirePolicy | None = None
    """What to do with a fire time missed while down: run_once or skip. Default run_once."""
    misfire_grace: Duration | None = None
    """Missed fire times older than this are skipped whatever the misfire policy. Default 6h."""
    jitter: Duration | None = None
    """Largest random delay added after each fire time. Default 0s."""
    verify: StrictBool | None = None
    """After a successful run, check the server's record: complete, right profile, a size.
    Default true."""


class LimitsFile(_FileModel):
    """How many backups may run at once."""

    max_concurrent: Count = 10
    """Backups running at once in the whole daemon (at least 1)."""
    groups: dict[GroupName, Count] = Field(default_factory=dict)
    """Per-group caps (group name → backups at once, at least 1), e.g. one per hosting server."""


class ScheduleFile(SettingsFile):
    """One (profile, cron) pair of a site."""

    name: Name
    """Unique within the site; the `schedule` metric label. 1-64 characters from a-z 0-9 _ -."""
    profile: Count = 1
    """Akeeba Backup profile number to run (at least 1)."""
    cron: str
    """5-field cron expression in the schedule's timezone; H = a stable per-schedule spread;
    @hourly, @daily, @weekly, @monthly, @yearly."""
    description: DescriptionTemplate = DEFAULT_DESCRIPTION
    """Backup description; placeholders {date} {site} {schedule} {run_id}."""


class SiteFile(SettingsFile):
    """One remote Akeeba Backup installation and its schedules."""

    name: Name
    """Unique across all files; the `site` metric label. 1-64 characters from a-z 0-9 _ -."""
    url: SiteUrl
    """The site's base URL (http or https; no credentials, no query string)."""
    platform: Platform = Platform.AUTO
    """What the site runs, which decides the endpoints tried:
    auto, joomla, joomla-api, wordpress, solo or custom."""
    endpoint: EndpointUrl | None = None
    """The full URL of the JSON API; required with platform custom, refused otherwise."""
    api: ApiGeneration = ApiGeneration.AUTO
    """API generation: auto (v2, then v1), v2 or v1."""
    secret_file: NonEmptyString | None = None
    """Absolute path of a file holding the API secret (no group or other read, e.g. mode 0600);
    may start with $CREDENTIALS_DIRECTORY/ or %d/. Set this or secret_env."""
    secret_env: EnvName | None = None
    """Name of an environment variable holding the API secret. Set this or secret_file."""
    group: GroupName | None = None
    """A group defined under limits.groups, whose cap this site shares."""
    labels: dict[LabelName, str] = Field(default_factory=dict)
    """Free labels exported on akeeba_site_info (Prometheus label names; not site, schedule,
    reason, domain, method, outcome, api_level, version, edition, platform, job, instance)."""
    tls_verify: TlsVerify = True
    """Verify the site's TLS certificate: true, false, or the path of a CA bundle file."""
    http_verb: HttpVerb = HttpVerb.GET
    """HTTP verb of API calls: get or post."""
    auth: AuthPlacement = AuthPlacement.HEADER
    """Where v2 calls carry the secret: header (X-Akeeba-Auth) or query (_akeebaAuth)."""
    schedules: list[ScheduleFile] = Field(min_length=1)
    """The site's schedules (at least one)."""


class StateBackend(StrEnum):
    """Where the daemon keeps its state."""

    SQLITE = "sqlite"
    """One SQLite file in state_dir: a single daemon, nothing to install."""
    POSTGRESQL = "postgresql"
    """A PostgreSQL database shared by one or more daemons (high availability)."""


class StateFile(_FileModel):
    """Where state is kept, and how several daemons share it."""

    backend: StateBackend = StateBackend.SQLITE
    """sqlite (a file in state_dir; default) or postgresql (shared by every instance)."""
    dsn_file: NonEmptyString | None = None
    """With postgresql: absolute path of a file holding the libpq connection string or URI
    (it may hold a password: no group or other read, e.g. mode 0600); may start with
    $CREDENTIALS_DIRECTORY/ or %d/."""
    instance: Name | None = None
    """This daemon's name among the instances sharing the database (1-64 characters from
    a-z 0-9 _ -). Default: the host name."""
    lease_duration: PositiveDuration | None = None
    """With postgresql: how long a run's claim lasts without renewal before another instance
    takes the run over (renewed every third of it). At least 3s. Default 30s."""


class _ConfigHead(_FileModel):
    listen: ListenAddress = DEFAULT_LISTEN
    """HTTP server for /metrics, /healthz, /readyz, the API and the status page:
    "host:port" or "[ipv6]:port"."""
    state_dir: NonEmptyString | None = None
    """Directory of the state database. Default $STATE_DIRECTORY, else /var/lib/akeeba-backupd."""
    api_token_file: NonEmptyString | None = None
    """File holding the bearer token for POST /api/v1/* (no group or other read, e.g. mode
    0600); required when listen is not a loopback address."""
    defaults: SettingsFile = Field(default_factory=SettingsFile)
    """Run settings inherited by every site and schedule."""
    include: list[NonEmptyString] = Field(default_factory=list)
    """Glob patterns of files holding more sites (one site mapping or a list of them per file);
    relative patterns are relative to this file's directory."""
    limits: LimitsFile = Field(default_factory=LimitsFile)
    """How many backups may run at once, overall and per group."""
    state: StateFile = Field(default_factory=StateFile)
    """Where state is kept: sqlite (default) or postgresql shared by several instances."""


class ConfigFile(_ConfigHead):
    """akeeba-backupd configuration file."""

    model_config = ConfigDict(title="akeeba-backupd configuration")

    sites: list[SiteFile] = Field(default_factory=list)
    """The sites to back up (more may come from include)."""


# --- resolved config -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """The run settings of one site or schedule after inheritance."""

    timezone: ZoneInfo
    request_timeout_seconds: float
    connect_timeout_seconds: float
    run_timeout_seconds: float
    stall_timeout_seconds: float
    step_retries: int
    retry_backoff_seconds: float
    misfire: MisfirePolicy
    misfire_grace_seconds: float
    jitter_seconds: float
    verify: bool


BUILTIN_SETTINGS: Final = RunSettings(
    timezone=ZoneInfo("UTC"),
    request_timeout_seconds=300.0,
    connect_timeout_seconds=10.0,
    run_timeout_seconds=6 * 3600.0,
    stall_timeout_seconds=30 * 60.0,
    step_retries=3,
    retry_backoff_seconds=10.0,
    misfire=MisfirePolicy.RUN_ONCE,
    misfire_grace_seconds=6 * 3600.0,
    jitter_seconds=0.0,
    verify=True,
)


@dataclass(frozen=True)
class ScheduleConfig:
    """One schedule of a site, resolved."""

    name: str
    profile: int
    cron: CronSchedule
    description: str
    """The description template; placeholders {date} {site} {schedule} {run_id}."""
    settings: RunSettings


@dataclass(frozen=True)
class SiteConfig:
    """One site, resolved; ``settings`` are the site's (defaults → site)."""

    name: str
    url: str
    platform: Platform
    endpoint: str | None
    api: ApiGeneration
    secret: Secret
    group: str | None
    labels: tuple[tuple[str, str], ...]
    """Sorted by label name."""
    tls_verify: bool | str
    """True, False, or the absolute path of a CA bundle file."""
    http_verb: HttpVerb
    auth: AuthPlacement
    settings: RunSettings
    schedules: tuple[ScheduleConfig, ...]


@dataclass(frozen=True)
class Limits:
    """Concurrency caps: the whole daemon, and per group (sorted by group name)."""

    max_concurrent: int
    groups: tuple[tuple[str, int], ...]


DEFAULT_LEASE_SECONDS: Final = 30.0
MIN_LEASE_SECONDS: Final = 3.0


@dataclass(frozen=True)
class StateSettings:
    """The resolved ``state`` block."""

    backend: StateBackend = StateBackend.SQLITE
    dsn: Secret | None = None
    """The PostgreSQL connection string (it may hold a password)."""
    dsn_file: Path | None = None
    instance: str = "localhost"
    lease_seconds: float = DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    source_path: Path
    listen_host: str
    """Host or IP to bind, IPv6 without brackets."""
    listen_port: int
    state_dir: Path
    api_token: Secret | None
    api_token_file: Path | None
    limits: Limits
    sites: tuple[SiteConfig, ...]
    state: StateSettings = field(default_factory=StateSettings)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, with where it is."""

    location: str
    """Path of the value, e.g. ``sites[3].schedules[0].cron``; empty for the whole file."""
    message: str
    file: Path
    line: int | None
    """1-based line in ``file``, or None when the problem has no place in it."""
    included: bool = False
    """True when ``file`` is an included file: then ``str()`` names it."""

    def __str__(self) -> str:
        parts = [str(self.file)] if self.included else []
        if self.location:
            parts.append(self.location)
        parts.append(self.message)
        text = ": ".join(parts)
        return text if self.line is None else f"{text} (line {self.line})"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` holds every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


# --- YAML → Python values, remembering lines ---------------------------------------------------

Loc = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_STR_TAG: Final = f"{_TAG}str"
_SCALAR_TAGS: Final = frozenset(
    f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "timestamp")
)
# The YAML 1.1 booleans that YAML 1.2 tools (editors validating against the schema) read as text.
# "y" and "n" are not among them: PyYAML reads those as text too, so they are no trap here.
_YAML11_BOOLEAN_WORDS: Final = frozenset({"yes", "no", "on", "off"})


@dataclass
class _Marks:
    """Where values were written: the line of each path, and paths already reported as traps."""

    lines: dict[Loc, int] = field(default_factory=dict)
    trapped: set[Loc] = field(default_factory=set)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _NodeReader:
    """Build plain Python values from a composed YAML tree, recording lines and reporting traps."""

    def __init__(self, report: Callable[[Loc, str, int], None]) -> None:
        self._report = report
        self._constructor = SafeConstructor()
        self._active: set[int] = set()  # node ids on the current path: a cycle is an alias loop

    def read(self, node: Node, path: Loc, marks: _Marks) -> object:
        """Return the value of ``node``; problems are reported and read as None."""
        if id(node) in self._active:
            self._report(path, "recursive alias: an anchor cannot contain itself", _line(node))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path, marks)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path, marks)
            assert isinstance(node, ScalarNode)
            return self._scalar(node, path, marks)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: Loc, marks: _Marks) -> dict[str, object] | None:
        if node.tag != f"{_TAG}map":
            self._report(path, f"unsupported YAML tag {node.tag!r}", _line(node))
            return None
        result: dict[str, object] = {}
        first_lines: dict[str, int] = {}
        merge_nodes: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == f"{_TAG}merge":
                merge_nodes.append(value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            line = _line(key_node)
            if key in first_lines:
                self._report(
                    (*path, key), f"duplicate key {key!r} (first at line {first_lines[key]})", line
                )
                continue
            first_lines[key] = line
            marks.lines[(*path, key)] = line
            result[key] = self.read(value_node, (*path, key), marks)
        # "<<: *anchor": keys written here win, then earlier merge sources win over later ones.
        for merge_node in merge_nodes:
            for source in self._merge_sources(merge_node, path):
                source_marks = _Marks()
                merged = self.read(source, path, source_marks)
                if not isinstance(merged, dict):
                    continue
                for key, value in merged.items():
                    if key in result:
                        continue
                    result[key] = value
                    prefix = (*path, key)
                    for loc, line in source_marks.lines.items():
                        if loc[: len(prefix)] == prefix:
                            marks.lines[loc] = line
                    marks.trapped.update(
                        loc for loc in source_marks.trapped if loc[: len(prefix)] == prefix
                    )
        return result

    def _merge_sources(self, node: Node, path: Loc) -> list[Node]:
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(
            isinstance(item, MappingNode) for item in node.value
        ):
            return list(node.value)
        self._report(path, "'<<' needs a mapping or a list of mappings", _line(node))
        return []

    def _key(self, node: Node, path: Loc) -> str | None:
        if not isinstance(node, ScalarNode):
            self._report(path, "a key must be a string, not a mapping or a list", _line(node))
            return None
        value = self._construct(node, path)
        if not isinstance(value, str):
            self._report(
                path,
                f"key {node.value!r} is read as {_show(value)}, not a string: quote it",
                _line(node),
            )
            return None
        return value

    def _sequence(self, node: SequenceNode, path: Loc, marks: _Marks) -> list[object] | None:
        if node.tag != f"{_TAG}seq":
            self._report(path, f"unsupported YAML tag {node.tag!r}", _line(node))
            return None
        items: list[object] = []
        for index, item in enumerate(node.value):
            marks.lines[(*path, index)] = _line(item)
            items.append(self.read(item, (*path, index), marks))
        return items

    def _scalar(self, node: ScalarNode, path: Loc, marks: _Marks) -> object:
        value = self._construct(node, path)
        # Only unquoted scalars are resolved by YAML 1.1 rules (plain style: None, or "" from
        # libyaml).
        if not node.style:
            trap = _yaml11_trap(node, value)
            if trap is not None:
                self._report(path, trap, _line(node))
                marks.trapped.add(path)
        return value

    def _construct(self, node: ScalarNode, path: Loc) -> object:
        if node.tag == _STR_TAG:  # what SafeConstructor.construct_yaml_str returns, faster
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self._report(path, f"unsupported YAML tag {node.tag!r}", _line(node))
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, ArithmeticError):
            tag = node.tag.removeprefix(_TAG)
            self._report(path, f"cannot read {node.value!r} as {tag}", _line(node))
            return None


# libyaml (yaml.CSafeLoader) composes ~8× faster than PyYAML's pure-Python SafeLoader, with the
# same Python resolver (so the same tags), the same values and the same lines; but its scanner
# accepts a few things the pure-Python one refuses, or marks their empty values on another line:
# tabs as separators, a BOM inside the text, "?" (in flow collections and as a key indicator),
# "|#" and ">#" block scalar headers, a %YAML 1.3 directive (found by differential fuzzing).
# A text holding any of those characters, or nesting deep enough for the pure-Python composer
# (or our reader) to exhaust the stack, goes to the pure-Python parser; so does every text
# libyaml refuses, so that errors keep PyYAML's wording, lines and columns.
_CSAFE_LOADER: Final[type[Any] | None] = getattr(yaml, "CSafeLoader", None)
_LIBYAML_DIFFERS_ON: Final = ("\t", "\ufeff", "?", "|", ">")
_YAML_DIRECTIVE_RE: Final = re.compile("(?:^|[\r\n\x85\u2028\u2029])%")
_LIBYAML_MAX_LINE_LENGTH: Final = 250
_LIBYAML_MAX_BRACKETS: Final = 100


def _libyaml_agrees(text: str) -> bool:
    """Return False when libyaml might compose ``text`` unlike PyYAML's pure-Python parser."""
    if any(character in text for character in _LIBYAML_DIFFERS_ON):
        return False
    if _YAML_DIRECTIVE_RE.search(text):
        return False
    # Nesting needs indentation (block) or brackets (flow): bounding both bounds the depth.
    if text.count("[") + text.count("{") > _LIBYAML_MAX_BRACKETS:
        return False
    return max(map(len, text.split("\n"))) <= _LIBYAML_MAX_LINE_LENGTH


def _compose(text: str) -> Node | None:
    """Return the YAML tree of ``text`` as ``yaml.compose(text, Loader=yaml.SafeLoader)`` does
    (same nodes, tags, values, lines; plain style may be "" instead of None), or raise its
    error."""
    if _CSAFE_LOADER is not None and _libyaml_agrees(text):
        try:
            node: Node | None = yaml.compose(text, Loader=_CSAFE_LOADER)
        except Exception:  # noqa: S110 # the pure-Python parser below says why
            pass
        else:
            return node
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _yaml11_trap(node: ScalarNode, value: object) -> str | None:
    """Return why an unquoted scalar reads differently than it looks, or None."""
    text = str(node.value)
    # Only what PyYAML really read as a boolean: "oN" or "y" stayed text, as the user meant.
    if node.tag == f"{_TAG}bool" and text.lower() in _YAML11_BOOLEAN_WORDS:
        meaning = "true" if value is True else "false"
        return (
            f"unquoted {text!r} is the boolean {meaning} in YAML 1.1: "
            f'write true or false, or quote it ("{text}") if you mean the text'
        )
    if node.tag in (f"{_TAG}int", f"{_TAG}float") and ":" in text:
        return f'unquoted {text!r} is the base-60 number {value} in YAML 1.1: quote it ("{text}")'
    return None


def _yaml_error_hint(error: yaml.MarkedYAMLError) -> str:
    """Return advice for the syntax errors an unquoted cron expression causes, or ""."""
    # An unquoted "* * * * *" or "*/5 ..." starts an alias, and "@daily" a reserved indicator:
    # PyYAML's wording names neither the value nor the fix.
    alias = error.context == "while scanning an alias"
    reserved = str(error.problem).startswith("found character '@' that cannot start any token")
    if alias or reserved:
        return '; quote values that start with * or @, e.g. cron: "*/5 * * * *"'
    return ""


def _show(value: object) -> str:
    """Return a short description of a config value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value} (a {type(value).__name__})"


def _kind_of(value: object) -> str:
    """Return what kind of value ``value`` is, without showing it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _format_location(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


# --- pydantic errors → readable messages --------------------------------------------------------


def _unwrap(annotation: object) -> object:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Return the file model that validates the value at ``loc`` below ``root``, or None."""
    current: object = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(part) if isinstance(part, str) else None
            if field_info is None:
                return None
            current = field_info.annotation
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _error_message(error: ErrorDetails, root: type[BaseModel]) -> tuple[Loc, str]:
    """Return (location relative to the validated value, message) for one pydantic error."""
    loc: Loc = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}
    if kind == "missing":
        return loc[:-1], f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(root, loc[:-1])
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return loc, f"unknown key {key!r}{hint}"
    if kind == "string_type" and loc and loc[-1] in _SECRET_REFERENCE_KEYS:
        return loc, (
            f"expected a string, got {_kind_of(value)} (not shown: {loc[-1]} names where the "
            "secret is, and never holds the secret itself)"
        )
    if kind == "string_type":
        hint = "" if isinstance(value, dict | list) or value is None else ": quote it"
        return loc, f"expected a string, got {_show(value)}{hint}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"expected a whole number, got {_show(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {_show(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return loc, f"expected a mapping, got {_show(value)}"
    if kind == "list_type":
        return loc, f"expected a list, got {_show(value)}"
    if kind == "enum":
        return loc, f"invalid value {_show(value)}: expected {context.get('expected')}"
    if kind == "greater_than_equal":
        return loc, f"must be at least {context.get('ge')}, got {_show(value)}"
    if kind == "less_than_equal":
        return loc, f"must be at most {context.get('le')}, got {_show(value)}"
    if kind in ("too_short", "string_too_short"):
        return loc, "must not be empty"
    return loc, str(error["msg"])


# --- the loader ----------------------------------------------------------------------------


@dataclass
class _Document:
    """One YAML file: its values and the line of each path."""

    path: Path
    included: bool
    data: object = None
    marks: _Marks = field(default_factory=_Marks)

    def line_of(self, loc: Loc) -> int | None:
        """Return the line of ``loc``, else of its nearest parent that has one."""
        for end in range(len(loc), -1, -1):
            line = self.marks.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def is_trapped(self, loc: Loc) -> bool:
        """Return True when ``loc`` or a parent was already reported as a YAML 1.1 trap."""
        return any(loc[:end] in self.marks.trapped for end in range(len(loc) + 1))


@dataclass
class _SiteEntry:
    """One site mapping, wherever it was written, and what the checks produced for it."""

    document: _Document
    loc: Loc
    raw: object
    model: SiteFile | None
    secret: Secret | None = None
    tls_verify: bool | str = True
    crons: dict[int, CronSchedule] = field(default_factory=dict)


_SITE_LIST_ADAPTER: Final = TypeAdapter(list[SiteFile])
_SITE_ENTRY_EXPECTED: Final = "expected a site mapping or a list of site mappings"
_NOT_SET = object()


class _Loader:
    """Read the main file and its includes, collecting every issue; build the Config."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.main_path = path.absolute()
        self.environ = environ
        self.issues: list[ConfigIssue] = []
        self._state_dsn: Secret | None = None
        self.documents: list[_Document] = []

    def issue(
        self, document: _Document, loc: Loc, message: str, line: int | object | None = _NOT_SET
    ) -> None:
        """Record one issue at ``loc`` of ``document`` (line: given, else looked up)."""
        resolved_line = document.line_of(loc) if line is _NOT_SET else line
        assert resolved_line is None or isinstance(resolved_line, int)
        self.issues.append(
            ConfigIssue(
                location=_format_location(loc),
                message=message,
                file=document.path,
                line=resolved_line,
                included=document.included,
            )
        )

    def error(self) -> ConfigError:
        """Return a ConfigError with the issues sorted by file, then line."""
        order = {document.path: index for index, document in enumerate(self.documents)}
        return ConfigError(
            sorted(
                self.issues,
                key=lambda issue: (
                    order.get(issue.file, 0),
                    sys.maxsize if issue.line is None else issue.line,
                ),
            )
        )

    # -- files

    def read_document(self, path: Path, *, included: bool) -> _Document | None:
        """Return the parsed file, or None (with an issue) when it cannot be read or parsed."""
        document = _Document(path=path, included=included)
        self.documents.append(document)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            self.issue(document, (), f"not UTF-8 text (byte {error.start})", None)
            return None
        except OSError as error:
            self.issue(document, (), f"cannot read {path}: {error.strerror}", None)
            return None
        try:
            node = _compose(text)
            if node is not None:
                document.marks.lines[()] = _line(node)
                reader = _NodeReader(
                    lambda loc, message, line: self.issue(document, loc, message, line)
                )
                document.data = reader.read(node, (), document.marks)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            detail = error.problem or error.context or "unreadable"
            where = f" at column {mark.column + 1}" if mark is not None else ""
            context = ""
            if error.context and error.problem and error.context_mark is not None:
                context = f" ({error.context} at line {error.context_mark.line + 1})"
            self.issue(
                document,
                (),
                f"invalid YAML{where}: {detail}{context}{_yaml_error_hint(error)}",
                None if mark is None else mark.line + 1,
            )
            return None
        except yaml.YAMLError as error:
            self.issue(document, (), f"invalid YAML: {' '.join(str(error).split())}", None)
            return None
        except RecursionError:
            # PyYAML composes (and the reader reads) recursively: a few hundred nested levels
            # exhaust the stack, long past anything a config file needs.
            self.issue(document, (), "invalid YAML: nested too deeply", None)
            return None
        return document

    def validate(
        self,
        document: _Document,
        model: type[BaseModel],
        value: object,
        prefix: Loc,
        adapter: TypeAdapter[Any] | None = None,
    ) -> Any:
        """Return ``value`` validated by ``model`` (or ``adapter``), or None after recording
        its errors as issues under ``prefix``."""
        try:
            if adapter is not None:
                return adapter.validate_python(value)
            return model.model_validate(value)
        except ValidationError as validation_error:
            for error in validation_error.errors(include_url=False):
                loc, message = _error_message(error, model)
                full_loc = (*prefix, *loc)
                if not document.is_trapped(full_loc):
                    self.issue(document, full_loc, message)
            return None

    # -- the whole load

    def load(self) -> Config:
        """Return the Config; raise ConfigError with every issue found."""
        main = self.read_document(self.main_path, included=False)
        if main is None:
            raise self.error()
        data = {} if main.data is None else main.data
        if not isinstance(data, dict):
            self.issue(main, (), f"the file must be a mapping of keys, got {_show(data)}")
            raise self.error()
        head: _ConfigHead | None = self.validate(
            main, ConfigFile, {key: value for key, value in data.items() if key != "sites"}, ()
        )
        entries = self._main_sites(main, data.get("sites", []))
        entries += self._included_sites(data.get("include", []))
        api_token = self._check_listen_and_token(main, data)
        self._state_dsn = self._check_state(main, data)
        self._check_sites(entries, data)
        if not entries:
            self.issue(
                main, ("sites",), "no sites configured: add sites, or include files that hold them"
            )
        if self.issues:
            raise self.error()
        assert head is not None
        return self._build(head, entries, api_token)

    def _main_sites(self, main: _Document, sites: object) -> list[_SiteEntry]:
        if not isinstance(sites, list):
            self.validate(main, ConfigFile, sites, ("sites",), adapter=_SITE_LIST_ADAPTER)
            return []
        locs_and_raws: list[tuple[Loc, object]] = [
            (("sites", index), raw) for index, raw in enumerate(sites)
        ]
        return [
            _SiteEntry(main, loc, raw, self.validate(main, SiteFile, raw, loc))
            for loc, raw in locs_and_raws
        ]

    def _included_sites(self, patterns: object) -> list[_SiteEntry]:
        if not isinstance(patterns, list):
            return []  # reported by validation
        entries: list[_SiteEntry] = []
        for path in self._include_paths([item for item in patterns if isinstance(item, str)]):
            document = self.read_document(path, included=True)
            if document is None:
                continue
            if isinstance(document.data, dict):
                raws: list[tuple[Loc, object]] = [((), document.data)]
            elif isinstance(document.data, list):
                raws = [((index,), raw) for index, raw in enumerate(document.data)]
            else:
                found = (
                    "the file is empty" if document.data is None else f"got {_show(document.data)}"
                )
                self.issue(document, (), f"{_SITE_ENTRY_EXPECTED}; {found}")
                continue
            entries += [
                _SiteEntry(document, loc, raw, self.validate(document, SiteFile, raw, loc))
                for loc, raw in raws
            ]
        return entries

    def _include_paths(self, patterns: list[str]) -> list[Path]:
        """Return the files matched by the patterns, each pattern's matches sorted, once each."""
        seen = {self.main_path}
        paths: list[Path] = []
        for pattern in patterns:
            absolute = os.path.join(self.main_path.parent, pattern)
            for match in sorted(glob.glob(absolute)):
                path = Path(match)
                # A pattern matching nothing or only directories is a directory waiting for files.
                if path in seen or not path.is_file():
                    continue
                seen.add(path)
                paths.append(path)
        return paths

    # -- cross-field checks (on raw values, so they run even where other keys are invalid)

    def _check_listen_and_token(self, main: _Document, data: dict[str, object]) -> Secret | None:
        token_path = data.get("api_token_file")
        token = None
        if isinstance(token_path, str) and token_path:
            token = self._read_secret_file(
                main, ("api_token_file",), token_path, what="api token file"
            )
        listen = data.get("listen", DEFAULT_LISTEN)
        if not isinstance(listen, str):
            return token
        try:
            host, _port = parse_listen(listen)
        except ValueError:
            return token  # reported by validation
        if token_path is None and not is_loopback_host(host):
            self.issue(
                main,
                ("listen",),
                f"listening on {host}, which is not a loopback address, needs api_token_file: "
                "without a token anyone who reaches the port can start and cancel backups",
            )
        return token

    def _check_state(self, main: _Document, data: dict[str, object]) -> Secret | None:
        """Check the state block's cross-field rules; return the DSN read from dsn_file."""
        state = data.get("state")
        if not isinstance(state, dict):
            return None  # absent, or reported by validation
        backend = state.get("backend", StateBackend.SQLITE.value)
        dsn_file = state.get("dsn_file")
        lease = state.get("lease_duration")
        if backend == StateBackend.POSTGRESQL.value:
            if dsn_file is None:
                self.issue(
                    main,
                    ("state", "backend"),
                    "backend postgresql needs state.dsn_file: the file holding the connection "
                    "string, e.g. postgresql://akeeba@db.example.org/akeeba",
                )
        elif backend == StateBackend.SQLITE.value:
            for key in ("dsn_file", "lease_duration"):
                if key in state:
                    self.issue(
                        main,
                        ("state", key),
                        f"{key} applies to backend postgresql only (backend is sqlite)",
                    )
        if lease is not None:
            with contextlib.suppress(ValueError, TypeError):
                if parse_duration(lease) < MIN_LEASE_SECONDS:
                    self.issue(
                        main,
                        ("state", "lease_duration"),
                        f"must be at least {MIN_LEASE_SECONDS:.0f}s: renewals go out every "
                        "third of it",
                    )
        if backend == StateBackend.POSTGRESQL.value and isinstance(dsn_file, str) and dsn_file:
            return self._read_secret_file(
                main, ("state", "dsn_file"), dsn_file, what="database DSN file"
            )
        return None

    def _check_sites(self, entries: list[_SiteEntry], data: dict[str, object]) -> None:
        limits = data.get("limits", {})
        groups_raw = limits.get("groups", {}) if isinstance(limits, dict) else None
        groups = {str(name) for name in groups_raw} if isinstance(groups_raw, dict) else None
        first_site: dict[str, _SiteEntry] = {}
        for entry in entries:
            if not isinstance(entry.raw, dict):
                continue
            name = entry.raw.get("name")
            if isinstance(name, str):
                first = first_site.setdefault(name, entry)
                if first is not entry:
                    self._report_duplicate_site(entry, first, name)
            self._check_secret(entry)
            self._check_platform(entry)
            if groups is not None:
                self._check_group(entry, groups)
            self._check_tls_verify(entry)
            self._check_schedules(entry)

    def _report_duplicate_site(self, entry: _SiteEntry, first: _SiteEntry, name: str) -> None:
        first_line = first.document.line_of((*first.loc, "name"))
        where = f"line {first_line}"
        if first.document is not entry.document:
            where = f"{first.document.path} {where}"
        self.issue(
            entry.document, (*entry.loc, "name"), f"duplicate site name {name!r} (first at {where})"
        )

    def _check_secret(self, entry: _SiteEntry) -> None:
        raw = entry.raw
        assert isinstance(raw, dict)
        has_file, has_env = raw.get("secret_file") is not None, raw.get("secret_env") is not None
        if has_file and has_env:
            self.issue(
                entry.document,
                (*entry.loc, "secret_env"),
                "set only one of secret_file and secret_env",
            )
        elif not has_file and not has_env:
            self.issue(
                entry.document,
                entry.loc,
                "the site needs its API secret: set secret_file or secret_env",
            )
        elif has_file and isinstance(raw["secret_file"], str) and raw["secret_file"]:
            entry.secret = self._read_secret_file(
                entry.document, (*entry.loc, "secret_file"), raw["secret_file"], "secret file"
            )
        elif has_env and isinstance(raw["secret_env"], str):
            entry.secret = self._read_secret_env(
                entry.document, (*entry.loc, "secret_env"), raw["secret_env"]
            )

    def _read_secret_env(self, document: _Document, loc: Loc, name: str) -> Secret | None:
        if not _ENV_NAME_RE.fullmatch(name):
            return None  # reported by validation, without echoing the value
        shown = (
            f"environment variable {name}"
            if _CONVENTIONAL_ENV_NAME_RE.fullmatch(name)
            else "the environment variable named by secret_env (name not shown: is it the secret?)"
        )
        value = self.environ.get(name)
        if value is None:
            self.issue(document, loc, f"{shown} is not set")
            return None
        if not value:
            self.issue(document, loc, f"{shown} is empty")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes arrive as surrogate escapes
            self.issue(document, loc, f"{shown} is not UTF-8 text")
            return None
        return Secret(value)

    def _credentials_path(self, document: _Document, loc: Loc, raw: str) -> Path | None:
        """Return ``raw`` with $CREDENTIALS_DIRECTORY and a leading %d/ expanded, or None."""
        key = str(loc[-1])
        uses_credentials = raw.startswith("%d/") or _CREDENTIALS_VARIABLE_RE.search(raw)
        expanded = raw
        if uses_credentials:
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self.issue(
                    document,
                    loc,
                    f"{key} uses $CREDENTIALS_DIRECTORY, which is not set: "
                    "LoadCredential= in the unit sets it",
                )
                return None
            expanded = _CREDENTIALS_VARIABLE_RE.sub(lambda _match: directory, raw)
            if expanded.startswith("%d/"):
                expanded = directory.rstrip("/") + expanded[2:]
        if not os.path.isabs(expanded):
            # Not echoed: a relative "path" may well be the secret pasted in the wrong key.
            self.issue(
                document,
                loc,
                f"{key} must be an absolute path, or start with $CREDENTIALS_DIRECTORY/ or %d/",
            )
            return None
        return Path(expanded)

    def _read_secret_file(
        self, document: _Document, loc: Loc, raw: str, what: str
    ) -> Secret | None:
        path = self._credentials_path(document, loc, raw)
        if path is None:
            return None
        try:
            status = path.stat()
            if not stat.S_ISREG(status.st_mode):
                self.issue(document, loc, f"{what} {path} is not a regular file")
                return None
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o044:
                self.issue(
                    document,
                    loc,
                    f"{what} {path} is readable by group/others (mode {mode:04o}): "
                    f"run chmod 600 {path}",
                )
                return None
            content = path.read_bytes()
        except FileNotFoundError:
            self.issue(document, loc, f"{what} {path} does not exist")
            return None
        except OSError as error:
            self.issue(document, loc, f"{what} {path} cannot be read: {error.strerror}")
            return None
        try:
            value = content.decode("utf-8")
        except UnicodeDecodeError:
            self.issue(document, loc, f"{what} {path} is not UTF-8 text")
            return None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            self.issue(document, loc, f"{what} {path} is empty")
            return None
        if "\n" in value or "\r" in value:
            self.issue(document, loc, f"{what} {path} holds more than one line")
            return None
        return Secret(value)

    def _check_platform(self, entry: _SiteEntry) -> None:
        raw = entry.raw
        assert isinstance(raw, dict)
        platform = raw.get("platform", Platform.AUTO.value)
        endpoint = raw.get("endpoint")
        if platform == Platform.CUSTOM.value and endpoint is None:
            self.issue(
                entry.document,
                (*entry.loc, "platform"),
                "platform custom needs endpoint: the full URL of the site's JSON API",
            )
        elif (
            isinstance(platform, str)
            and platform in {member.value for member in Platform}
            and platform != Platform.CUSTOM.value
            and endpoint is not None
        ):
            self.issue(
                entry.document,
                (*entry.loc, "endpoint"),
                f"endpoint is only used with platform custom (platform is {platform}): "
                "remove it, or set platform: custom",
            )

    def _check_group(self, entry: _SiteEntry, groups: set[str]) -> None:
        raw = entry.raw
        assert isinstance(raw, dict)
        group = raw.get("group")
        if isinstance(group, str) and group not in groups:
            defined = (
                f"defined groups: {', '.join(sorted(groups))}"
                if groups
                else "limits.groups defines no groups"
            )
            self.issue(
                entry.document,
                (*entry.loc, "group"),
                f"unknown group {group!r} ({defined})",
            )

    def _check_tls_verify(self, entry: _SiteEntry) -> None:
        raw = entry.raw
        assert isinstance(raw, dict)
        value = raw.get("tls_verify", True)
        if not isinstance(value, str) or not value:
            entry.tls_verify = bool(value)
            return
        path = entry.document.path.parent / value
        if not path.is_file():
            missing = "is not a file" if path.exists() else "does not exist"
            self.issue(entry.document, (*entry.loc, "tls_verify"), f"CA bundle {path} {missing}")
            return
        entry.tls_verify = str(path)

    def _check_schedules(self, entry: _SiteEntry) -> None:
        raw = entry.raw
        assert isinstance(raw, dict)
        site_name, schedules = raw.get("name"), raw.get("schedules")
        if not isinstance(schedules, list):
            return
        first_lines: dict[str, int | None] = {}
        for index, schedule in enumerate(schedules):
            if not isinstance(schedule, dict):
                continue
            loc = (*entry.loc, "schedules", index)
            name = schedule.get("name")
            if isinstance(name, str):
                if name in first_lines:
                    self.issue(
                        entry.document,
                        (*loc, "name"),
                        f"duplicate schedule name {name!r} (first at line {first_lines[name]})",
                    )
                else:
                    first_lines[name] = entry.document.line_of((*loc, "name"))
            cron = schedule.get("cron")
            if not (isinstance(cron, str) and isinstance(site_name, str) and isinstance(name, str)):
                continue
            try:
                entry.crons[index] = parse_cron(cron, f"{site_name}/{name}")
            except CronError as error:
                self.issue(entry.document, (*loc, "cron"), str(error))

    # -- the resolved config

    def _build(
        self, head: _ConfigHead, entries: list[_SiteEntry], api_token: Secret | None
    ) -> Config:
        host, port = parse_listen(head.listen)
        token_file = None
        if head.api_token_file is not None:
            token_file = self._credentials_path(
                self.documents[0], ("api_token_file",), head.api_token_file
            )
        defaults_settings = _resolve_settings((head.defaults,))
        sites = tuple(
            self._build_site(head.defaults, defaults_settings, entry) for entry in entries
        )
        return Config(
            source_path=self.main_path,
            listen_host=host,
            listen_port=port,
            state_dir=self._state_dir(head.state_dir),
            api_token=api_token,
            api_token_file=token_file,
            limits=Limits(
                max_concurrent=head.limits.max_concurrent,
                groups=tuple(sorted(head.limits.groups.items())),
            ),
            sites=sites,
            state=self._state_settings(head.state),
        )

    def _state_settings(self, state: StateFile) -> StateSettings:
        dsn_file = None
        if state.dsn_file is not None:
            dsn_file = self._credentials_path(
                self.documents[0], ("state", "dsn_file"), state.dsn_file
            )
        return StateSettings(
            backend=state.backend,
            dsn=self._state_dsn,
            dsn_file=dsn_file,
            instance=state.instance or _default_instance_name(),
            lease_seconds=state.lease_duration or DEFAULT_LEASE_SECONDS,
        )

    def _state_dir(self, configured: str | None) -> Path:
        if configured is not None:
            return self.main_path.parent / configured
        from_systemd = self.environ.get("STATE_DIRECTORY", "")
        # StateDirectory= with several entries gives a colon-separated list: ours is the first.
        first = from_systemd.split(":")[0]
        return Path(first) if first else DEFAULT_STATE_DIR

    @staticmethod
    def _build_site(
        defaults: SettingsFile, defaults_settings: RunSettings, entry: _SiteEntry
    ) -> SiteConfig:
        site = entry.model
        assert site is not None
        assert entry.secret is not None
        # A layer that sets nothing changes nothing: share the settings of the layers above it.
        site_settings = (
            defaults_settings if _sets_no_setting(site) else _resolve_settings((defaults, site))
        )
        schedules = tuple(
            ScheduleConfig(
                name=schedule.name,
                profile=schedule.profile,
                cron=entry.crons[index],
                description=schedule.description,
                settings=(
                    site_settings
                    if _sets_no_setting(schedule)
                    else _resolve_settings((defaults, site, schedule))
                ),
            )
            for index, schedule in enumerate(site.schedules)
        )
        return SiteConfig(
            name=site.name,
            url=site.url,
            platform=site.platform,
            endpoint=site.endpoint,
            api=site.api,
            secret=entry.secret,
            group=site.group,
            labels=tuple(sorted(site.labels.items())),
            tls_verify=entry.tls_verify,
            http_verb=site.http_verb,
            auth=site.auth,
            settings=site_settings,
            schedules=schedules,
        )


_SETTING_NAMES: Final = frozenset(SettingsFile.model_fields)


def _sets_no_setting(layer: SettingsFile) -> bool:
    """Return True when ``layer`` leaves every run setting to the layers above it."""
    return _SETTING_NAMES.isdisjoint(layer.model_fields_set)


def _resolve_settings(layers: Sequence[SettingsFile]) -> RunSettings:
    """Return the settings where the last layer that sets a value wins over earlier ones."""

    def pick(name: str, builtin: Any) -> Any:
        for layer in reversed(layers):
            value = getattr(layer, name)
            if value is not None:
                return value
        return builtin

    timezone = pick("timezone", None)
    base = BUILTIN_SETTINGS
    return RunSettings(
        timezone=base.timezone if timezone is None else ZoneInfo(timezone),
        request_timeout_seconds=pick("request_timeout", base.request_timeout_seconds),
        connect_timeout_seconds=pick("connect_timeout", base.connect_timeout_seconds),
        run_timeout_seconds=pick("run_timeout", base.run_timeout_seconds),
        stall_timeout_seconds=pick("stall_timeout", base.stall_timeout_seconds),
        step_retries=pick("step_retries", base.step_retries),
        retry_backoff_seconds=pick("retry_backoff", base.retry_backoff_seconds),
        misfire=pick("misfire", base.misfire),
        misfire_grace_seconds=pick("misfire_grace", base.misfire_grace_seconds),
        jitter_seconds=pick("jitter", base.jitter_seconds),
        verify=pick("verify", base.verify),
    )


def _default_instance_name() -> str:
    """Return the host name cut to a valid instance name (``localhost`` when it has none)."""
    name = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().split(".")[0].lower())[:64]
    return name or "localhost"


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Return the validated, resolved configuration read from ``path`` and its includes.

    ``environ`` (default ``os.environ``) supplies CREDENTIALS_DIRECTORY, STATE_DIRECTORY and
    the variables named by ``secret_env``. Raise ConfigError holding every problem found, each
    with its location and line; no message contains a secret.
    """
    return _Loader(path, os.environ if environ is None else environ).load()


def config_json_schema() -> dict[str, object]:
    """Return the JSON Schema of the config file, generated from the file models."""
    schema: dict[str, object] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(ConfigFile.model_json_schema())
    return schema


def _main(arguments: Sequence[str]) -> int:
    if list(arguments) == ["--schema"]:
        sys.stdout.write(json.dumps(config_json_schema(), indent=2) + "\n")
        return 0
    sys.stderr.write("usage: python -m akeeba_backupd.config --schema > config/schema.json\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
