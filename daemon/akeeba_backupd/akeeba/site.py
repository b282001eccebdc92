"""One configured site as the run engine sees it: endpoint found on first use, then typed calls.

``SiteRemote`` implements the run engine's ``BackupRemote`` protocol. It detects the endpoint
lazily (once, then cached) so that a failure to find it is a failed run like any other, and it
forgets the endpoint after failures that suggest the site changed (so the next run looks again).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from akeeba_backupd.clock import Clock

from .client import AkeebaClient, ClientSettings, RequestObserver
from .detect import Detection, candidate_endpoints, detect_endpoint
from .errors import AuthError, BadResponseError, HttpError
from .models import BackupRecord, BackupStatus, Profile, VersionInfo
from .options import ApiGeneration, Platform
from .secret import Secret

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SiteAddress:
    """Where and how to find a site's API."""

    url: str
    platform: Platform = Platform.AUTO
    api: ApiGeneration = ApiGeneration.AUTO
    endpoint_url: str | None = None


class SiteRemote:
    """Typed API calls to one site, finding its endpoint on first use."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        address: SiteAddress,
        secret: Secret,
        clock: Clock,
        settings: ClientSettings,
        observer: RequestObserver | None = None,
    ) -> None:
        self.address = address
        self._session = session
        self._secret = secret
        self._clock = clock
        self._settings = settings
        self._observer = observer
        self._detection: Detection | None = None

    @property
    def detection(self) -> Detection | None:
        """Return the endpoint found last, or None before the first successful contact."""
        return self._detection

    async def connect(self) -> Detection:
        """Return the site's endpoint and version, detecting them unless already known."""
        if self._detection is None:
            candidates = candidate_endpoints(
                self.address.url,
                self.address.platform,
                self.address.api,
                self.address.endpoint_url,
            )
            self._detection = await detect_endpoint(
                self._session, candidates, self._secret, self._clock, self._settings, self._observer
            )
        return self._detection

    async def refresh_version(self) -> VersionInfo:
        """Call getVersion again (the site may have been upgraded) and return it."""
        detection = await self.connect()
        version = await self._client(detection).get_version()
        self._detection = Detection(detection.endpoint, version)
        return version

    def forget(self) -> None:
        """Drop the cached endpoint so the next call detects it again."""
        self._detection = None

    async def get_profiles(self) -> tuple[Profile, ...]:
        """Return the site's backup profiles."""
        client = await self._connected_client()
        return await self._forget_on_failure(client.get_profiles())

    async def start_backup(
        self, profile_id: int, description: str, comment: str, backupid: str | None = None
    ) -> BackupStatus:
        """Start a backup; see AkeebaClient.start_backup."""
        client = await self._connected_client()
        return await client.start_backup(profile_id, description, comment, backupid)

    async def step_backup(self, backupid: str | None) -> BackupStatus:
        """Run one step of ``backupid``."""
        client = await self._connected_client()
        return await client.step_backup(backupid)

    async def get_backup_info(self, record_id: int) -> BackupRecord:
        """Return one backup record."""
        client = await self._connected_client()
        return await client.get_backup_info(record_id)

    async def list_backups(self, from_index: int = 0, limit: int = 50) -> tuple[BackupRecord, ...]:
        """Return backup records, newest first."""
        client = await self._connected_client()
        return await client.list_backups(from_index, limit)

    async def _connected_client(self) -> AkeebaClient:
        return self._client(await self.connect())

    def _client(self, detection: Detection) -> AkeebaClient:
        return AkeebaClient(
            self._session,
            detection.endpoint,
            self._secret,
            self._clock,
            self._settings,
            self._observer,
        )

    async def _forget_on_failure(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (AuthError, HttpError, BadResponseError):
            # The endpoint may have moved (plugin upgrade, new path): look again next time.
            self.forget()
            raise
