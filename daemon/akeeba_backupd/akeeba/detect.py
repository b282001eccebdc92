"""Find a site's working JSON API endpoint and generation (PROTOCOL.md §1).

Candidates are tried newest first, v2 before v1; the first one whose getVersion returns an
envelope wins. An answer from the API itself (access denied, an API error) ends the search at
once: the endpoint exists, so trying others would only hide the real problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from akeeba_backupd.clock import Clock

from .client import AkeebaClient, ClientSettings, RequestObserver
from .errors import AkeebaError, BadResponseError, HttpError, RemoteError
from .models import MIN_API_LEVEL, VersionInfo
from .options import ApiGeneration, Platform
from .secret import Secret
from .transport import Endpoint, redact_url

_V2_PATHS: dict[Platform, tuple[str, ...]] = {
    Platform.JOOMLA: (
        "index.php?option=com_akeebabackup&view=Api&format=raw",  # Akeeba Backup 9 (J4/J5)
        "index.php?option=com_akeeba&view=Api&format=raw",  # Akeeba Backup 7.4-8 (J3)
    ),
    Platform.JOOMLA_API: ("api/index.php/v2/akeebabackup",),
    Platform.WORDPRESS: (
        "wp-admin/admin-ajax.php?action=akeebabackup_api",  # 7.7.1+ / 8
        "wp-content/plugins/akeebabackupwp/app/index.php?option=com_akeeba&view=Api&format=raw",
    ),
    Platform.SOLO: (
        "index.php?option=com_akeeba&view=Api&format=raw",
        "remote.php?view=Api",
    ),
}
_V1_PATHS: dict[Platform, tuple[str, ...]] = {
    Platform.JOOMLA: ("index.php?option=com_akeeba&view=json&format=raw",),
    Platform.JOOMLA_API: (),
    Platform.WORDPRESS: ("wp-content/plugins/akeebabackupwp/app/index.php?view=json",),
    Platform.SOLO: ("index.php?view=json", "remote.php?view=json"),
}
_AUTO_ORDER = (Platform.JOOMLA, Platform.JOOMLA_API, Platform.WORDPRESS, Platform.SOLO)


@dataclass(frozen=True, slots=True)
class Detection:
    """A working endpoint and what answered there."""

    endpoint: Endpoint
    version: VersionInfo


def candidate_endpoints(
    site_url: str, platform: Platform, api: ApiGeneration, endpoint_url: str | None = None
) -> tuple[Endpoint, ...]:
    """Return the endpoints to try for a site, in order, without duplicates."""
    generations = (ApiGeneration.V2, ApiGeneration.V1) if api is ApiGeneration.AUTO else (api,)
    if platform is Platform.CUSTOM:
        if not endpoint_url:
            raise ValueError("platform custom needs an endpoint URL")
        return tuple(Endpoint(endpoint_url, generation) for generation in generations)
    platforms = _AUTO_ORDER if platform is Platform.AUTO else (platform,)
    base = site_url if site_url.endswith("/") else site_url + "/"
    found: list[Endpoint] = []
    for generation in generations:
        table = _V2_PATHS if generation is ApiGeneration.V2 else _V1_PATHS
        for each_platform in platforms:
            for path in table[each_platform]:
                endpoint = Endpoint(urljoin(base, path), generation)
                if endpoint not in found:
                    found.append(endpoint)
    return tuple(found)


async def detect_endpoint(
    session: aiohttp.ClientSession,
    candidates: tuple[Endpoint, ...],
    secret: Secret,
    clock: Clock,
    settings: ClientSettings,
    observer: RequestObserver | None = None,
) -> Detection:
    """Return the first candidate answering getVersion with API level >= 330.

    Raise the API's own error (auth, remote) as soon as one endpoint answers with it; raise
    unreachable/timeout errors at once (every candidate shares the host); when no candidate
    answers at all, raise an error listing what each one did.
    """
    misses: list[tuple[Endpoint, AkeebaError]] = []
    for endpoint in candidates:
        client = AkeebaClient(session, endpoint, secret, clock, settings, observer)
        try:
            version = await client.get_version()
        except (HttpError, BadResponseError) as error:
            misses.append((endpoint, error))
            continue
        if version.api_level < MIN_API_LEVEL:
            raise RemoteError(f"{redact_url(endpoint.url)}: {version.describe()}")
        return Detection(endpoint, version)
    raise _no_endpoint_error(misses)


def _no_endpoint_error(misses: list[tuple[Endpoint, AkeebaError]]) -> AkeebaError:
    tried = "; ".join(
        f"{redact_url(endpoint.url)} ({endpoint.generation}): {_short(error)}"
        for endpoint, error in misses
    )
    message = f"no Akeeba Backup JSON API found: tried {len(misses)} endpoint(s): {tried}"
    # The reason comes from the most telling miss, not from whichever path was tried first: a
    # 404 only says "not here", while a reply that came back unusable (junk, too large, HTTP 500)
    # is what actually went wrong on the site.
    errors = [error for _, error in misses]
    telling = next(
        (e for e in errors if not (isinstance(e, HttpError) and e.http_status == 404)),
        errors[0] if errors else None,
    )
    if isinstance(telling, HttpError):
        return HttpError(message, http_status=telling.http_status)
    return BadResponseError(message)


def _short(error: AkeebaError) -> str:
    # Drop the "method at URL: " prefix the client puts in front: the URL is already listed.
    text = error.message
    marker = ": "
    if " at " in text and marker in text:
        text = text.split(marker, 1)[1]
    return text[:160]
