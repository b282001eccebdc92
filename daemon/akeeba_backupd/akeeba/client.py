"""The JSON API client: one site's endpoint, typed methods, every failure mapped to a reason.

``AkeebaClient`` sends one call at a time per method invocation over a shared
``aiohttp.ClientSession``; it never retries (retry policy belongs to the run engine) and never
lets the secret into an exception message.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import aiohttp
from yarl import URL

from akeeba_backupd.clock import Clock

from .errors import (
    AkeebaError,
    AuthError,
    BadResponseError,
    HttpError,
    RecordNotFoundError,
    RemoteError,
    RequestTimeoutError,
    UnreachableError,
)
from .models import (
    BackupRecord,
    BackupStatus,
    Profile,
    VersionInfo,
    parse_profiles,
    parse_record,
    parse_records,
    parse_status,
    parse_version,
)
from .options import ApiGeneration, AuthPlacement, HttpVerb
from .parse import Envelope, coerce_text, describe_body
from .secret import Secret
from .transport import Endpoint, ParamValue, decode_reply, prepare_request, redact_url

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
"""The largest reply read; listBackups with 200 records is well under 1 MiB."""

LIST_LIMIT_MAX = 200

MAX_REDIRECTS = 5
"""Redirects followed within one call (same host only; an http→https upgrade counts)."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


class RequestObserver(Protocol):
    """Told about every API call: its method, outcome (``ok`` or a reason) and duration."""

    def observe_request(self, method: str, outcome: str, duration_seconds: float) -> None:
        """Record one finished call."""
        ...


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to talk to one site."""

    verb: HttpVerb = HttpVerb.GET
    auth: AuthPlacement = AuthPlacement.HEADER
    request_timeout_seconds: float = 300.0
    connect_timeout_seconds: float = 10.0
    tls_verify: bool | str = True
    """False disables certificate checks; a string is the path of a CA bundle."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class AkeebaClient:
    """Typed calls to one site's JSON API endpoint."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        secret: Secret,
        clock: Clock,
        settings: ClientSettings | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._session = session
        self._secret = secret
        self._clock = clock
        self._settings = settings or ClientSettings()
        self._observer = observer
        self._ssl = _ssl_option(self._settings.tls_verify)

    async def get_version(self) -> VersionInfo:
        """Return the server's API level and release; raise AkeebaError on failure."""
        return await self._call("getVersion", {}, parse_version)

    async def get_profiles(self) -> tuple[Profile, ...]:
        """Return the site's backup profiles."""
        return await self._call("getProfiles", {}, parse_profiles)

    async def start_backup(
        self, profile_id: int, description: str, comment: str, backupid: str | None = None
    ) -> BackupStatus:
        """Start a backup and return the first status.

        ``backupid`` is sent to v1 servers only: API 330 engines then key the run's state by it
        (fixtures 113, 206); Akeeba Backup 9 ignores it and makes its own.
        """
        params: dict[str, ParamValue] = {
            "profile": profile_id,
            "description": description,
            "comment": comment,
        }
        if backupid and self.endpoint.generation is ApiGeneration.V1:
            params["backupid"] = backupid
        return await self._call("startBackup", params, _status_parser("startBackup", self._secret))

    async def step_backup(self, backupid: str | None) -> BackupStatus:
        """Run one more step of the backup ``backupid`` (None on API 330 servers that gave none)."""
        params: dict[str, ParamValue] = {"backupid": backupid} if backupid else {}
        return await self._call("stepBackup", params, _status_parser("stepBackup", self._secret))

    async def get_backup_info(self, record_id: int) -> BackupRecord:
        """Return the backup record ``record_id``; raise RecordNotFoundError when unknown."""
        return await self._call("getBackupInfo", {"backup_id": record_id}, parse_record)

    async def list_backups(self, from_index: int = 0, limit: int = 50) -> tuple[BackupRecord, ...]:
        """Return up to ``limit`` (1..200) backup records from ``from_index``, newest first."""
        limit = max(1, min(LIST_LIMIT_MAX, limit))
        return await self._call(
            "listBackups", {"from": max(0, from_index), "limit": limit}, parse_records
        )

    async def _call(
        self, method: str, params: dict[str, ParamValue], parse: Callable[[object], T]
    ) -> T:
        started = self._clock.monotonic()
        outcome = "ok"
        try:
            envelope = await self._exchange(method, params)
            _raise_for_api_status(method, envelope, self._secret)
            return parse(envelope.data)
        except AkeebaError as error:
            outcome = str(error.reason)
            error.message = self._secret.scrub(error.message)
            error.args = (error.message,)
            raise
        finally:
            if self._observer is not None:
                elapsed = self._clock.monotonic() - started
                self._observer.observe_request(method, outcome, elapsed)

    async def _exchange(self, method: str, params: dict[str, ParamValue]) -> Envelope:
        request = prepare_request(
            self.endpoint,
            method,
            params,
            self._secret,
            verb=self._settings.verb,
            auth=self._settings.auth,
        )
        settings = self._settings
        timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_seconds,
            sock_connect=settings.connect_timeout_seconds,
        )
        where = f"{method} at {redact_url(self.endpoint.url)}"
        verb = request.verb.value.upper()
        url = URL(request.url)
        query: tuple[tuple[str, str], ...] | None = request.query
        form = None if request.form is None else dict(request.form)
        redirected_by: tuple[int, URL] | None = None
        try:
            # One request_timeout for the whole call, redirects included.
            async with asyncio.timeout(settings.request_timeout_seconds):
                for _hop in range(MAX_REDIRECTS + 1):
                    async with self._session.request(
                        verb,
                        url,
                        params=query,
                        data=form,
                        headers=request.headers,
                        timeout=timeout,
                        ssl=self._ssl,
                        allow_redirects=False,
                    ) as response:
                        target = _redirect_target(response, where)
                        if target is None:
                            body = await _read_capped(response, settings.max_body_bytes, where)
                            http_status = response.status
                            reason = response.reason or ""
                            break
                        _check_same_site(url, target, where, response.status)
                        if redirected_by is None:
                            redirected_by = (response.status, target)
                        if response.status == 303 or (
                            response.status in (301, 302) and verb == "POST"
                        ):
                            verb, form = "GET", None  # what every browser does
                        url, query = target, None  # the Location carries its own query
                else:
                    raise BadResponseError(f"{where}: more than {MAX_REDIRECTS} redirects")
        except AkeebaError:
            raise
        except TimeoutError as error:
            raise _timeout_error(error, where, settings) from None
        except aiohttp.ClientError as error:
            raise _client_error(error, where) from None
        text = body.decode("utf-8", errors="replace")
        if 200 <= http_status < 300 and redirected_by is None:
            return decode_reply(self.endpoint, text, self._secret)
        try:
            # Some stacks answer an API envelope with a non-2xx status: trust the envelope.
            return decode_reply(self.endpoint, text, self._secret)
        except BadResponseError:
            if redirected_by is not None:
                # A login or maintenance page reached through a redirect: report the redirect,
                # but judge by the final status (a 504 after an https upgrade is still a 504).
                first_status, first_target = redirected_by
                raise HttpError(
                    f"{where}: HTTP {first_status} redirect to {_show_url(first_target)} "
                    f"ending in HTTP {http_status} "
                    f"({describe_body(text, self._secret.scrub)})",
                    http_status=http_status,
                ) from None
            raise HttpError(
                f"{where}: HTTP {http_status} {reason} ({describe_body(text, self._secret.scrub)})",
                http_status=http_status,
            ) from None


def _redirect_target(response: aiohttp.ClientResponse, where: str) -> URL | None:
    """Return where a redirect points (resolved against the request), or None if it is none.

    Raise BadResponseError for a ``Location`` that is no URL (bad IPv6 literal, port, name).
    """
    if response.status not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("Location")
    if not location:
        return None
    try:
        target = response.url.join(URL(location))
        # yarl parses lazily: reading the host and port is what raises for bad ones.
        if target.host is None or target.port is None:
            raise ValueError(location)
    except (ValueError, UnicodeError):
        raise BadResponseError(
            f"{where}: HTTP {response.status} redirect to an invalid Location"
        ) from None
    return target


def _check_same_site(current: URL, target: URL, where: str, http_status: int) -> None:
    """Refuse a redirect to another host or port: the secret travels in a header (or the
    query) that aiohttp would forward to it. Followed: the same scheme, host and port, and the
    upgrade from http on port 80 to https on port 443 of the same host."""
    same_host = (target.host or "").lower() == (current.host or "").lower()
    same_origin = target.scheme == current.scheme and target.port == current.port
    upgrade = (current.scheme, current.port, target.scheme, target.port) == (
        "http",
        80,
        "https",
        443,
    )
    if same_host and (same_origin or upgrade):
        return
    raise HttpError(
        f"{where}: redirected to {_show_url(target)}, another host or port or a downgrade to "
        "http; not followed, so that the secret does not go there (set the site's url to "
        "the address that answers directly)",
        http_status=http_status,
    )


def _show_url(url: URL) -> str:
    """Return ``url`` as safe to print: scheme, host, port and path, never its query."""
    return str(url.with_query(None).with_fragment(None).with_user(None).with_password(None))


def _status_parser(method: str, secret: Secret) -> Callable[[object], BackupStatus]:
    def parse(data: object) -> BackupStatus:
        status = parse_status(data, method)
        if not (status.error or status.warnings):
            return status
        # The engine's own texts reach logs, the API and error messages: mask an echoed secret.
        return replace(
            status,
            error=secret.scrub(status.error),
            warnings=tuple(secret.scrub(warning) for warning in status.warnings),
        )

    return parse


def _raise_for_api_status(method: str, envelope: Envelope, secret: Secret) -> None:
    status = envelope.status
    if status == 200:
        return
    # Masked before the cut, so that no partial copy of an echoed secret survives.
    message = secret.scrub(coerce_text(envelope.data))[:500] or "(no message)"
    if status in (401, 503):
        raise AuthError(
            f"{method}: access denied (API status {status}: {message}); check the secret, "
            "that the JSON API is enabled, and that the edition offers it (Core does not)"
        )
    if status == 404 and method == "getBackupInfo":
        raise RecordNotFoundError(f"{method}: {message}", api_status=status)
    raise RemoteError(f"{method}: API status {status}: {message}", api_status=status)


async def _read_capped(response: aiohttp.ClientResponse, limit: int, where: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BadResponseError(f"{where}: reply of {declared} bytes exceeds the {limit} byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise BadResponseError(f"{where}: reply exceeds the {limit} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _timeout_error(
    error: BaseException, where: str, settings: ClientSettings
) -> RequestTimeoutError:
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return RequestTimeoutError(
            f"{where}: could not connect within {settings.connect_timeout_seconds:g} s",
            request_sent=False,
        )
    return RequestTimeoutError(f"{where}: no reply within {settings.request_timeout_seconds:g} s")


def _client_error(error: aiohttp.ClientError, where: str) -> AkeebaError:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return UnreachableError(f"{where}: TLS certificate rejected ({error.certificate_error})")
    if isinstance(error, aiohttp.ClientSSLError | aiohttp.ClientConnectorSSLError):
        return UnreachableError(f"{where}: TLS handshake failed")
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return UnreachableError(f"{where}: DNS lookup of {error.host} failed")
    if isinstance(error, aiohttp.ClientConnectorError):
        detail = error.os_error.strerror or type(error.os_error).__name__
        return UnreachableError(f"{where}: cannot connect to {error.host}:{error.port}: {detail}")
    if isinstance(error, aiohttp.InvalidURL):
        return UnreachableError(f"{where}: invalid URL")
    if isinstance(error, aiohttp.TooManyRedirects):
        return BadResponseError(f"{where}: too many redirects")
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return BadResponseError(
            f"{where}: the connection closed before the reply was complete", in_doubt=True
        )
    if isinstance(error, aiohttp.ClientOSError):
        detail = error.strerror or type(error).__name__
        return UnreachableError(f"{where}: connection failed mid-request ({detail})", sent=True)
    return BadResponseError(f"{where}: HTTP exchange failed ({type(error).__name__})")


def _ssl_option(tls_verify: bool | str) -> ssl.SSLContext | bool:
    if tls_verify is True:
        return True
    if tls_verify is False:
        return False
    return ssl.create_default_context(cafile=tls_verify)
