"""Endpoint detection against the simulated fleet over real HTTP: every platform and generation
the simulator serves, probe order, auth short-circuit, too-old servers and custom endpoints."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from akeeba_backupd.akeeba import (
    ApiGeneration,
    AuthError,
    ClientSettings,
    Detection,
    Platform,
    RemoteError,
    Secret,
    candidate_endpoints,
    detect_endpoint,
)
from akeeba_backupd.simulator import Simulator, SiteSpec
from tests.fakes import FakeClock

SECRET = "detect-secret"
SETTINGS = ClientSettings(request_timeout_seconds=5.0, connect_timeout_seconds=2.0)

# (generation, platform, endpoint found with Platform.AUTO, endpoint found with the platform)
SERVED = [
    ("v2", "joomla", "index.php?option=com_akeebabackup&view=Api&format=raw", None),
    ("v2", "joomla-api", "api/index.php/v2/akeebabackup", None),
    ("v2", "joomla3", "index.php?option=com_akeeba&view=Api&format=raw", None),
    ("v2", "wordpress", "wp-admin/admin-ajax.php?action=akeebabackup_api", None),
    (
        "v2",
        "wordpress-legacy",
        "wp-content/plugins/akeebabackupwp/app/index.php?option=com_akeeba&view=Api&format=raw",
        None,
    ),
    ("v2", "solo-remote", "remote.php?view=Api", None),
    # Joomla 3's com_akeeba path is tried before Solo's identical one
    ("v2", "solo", "index.php?option=com_akeeba&view=Api&format=raw", None),
    ("v1", "wordpress", "wp-content/plugins/akeebabackupwp/app/index.php?view=json", None),
    ("v1", "joomla", "index.php?option=com_akeeba&view=json&format=raw", None),
    # Solo's index.php answers the Joomla v1 path, which AUTO tries first
    ("v1", "solo", "index.php?option=com_akeeba&view=json&format=raw", "index.php?view=json"),
]
IDS = [f"{api}-{platform}" for api, platform, _, _ in SERVED]
# The simulator's older installs, as an operator names their platform in the config.
CONFIG_PLATFORM = {"joomla3": "joomla", "wordpress-legacy": "wordpress", "solo-remote": "solo"}


def config_platform(simulated: str) -> Platform:
    """Return the config's platform for one of the simulator's platforms."""
    return Platform(CONFIG_PLATFORM.get(simulated, simulated))


@contextlib.asynccontextmanager
async def fleet(
    spec: SiteSpec,
) -> AsyncIterator[tuple[Simulator, aiohttp.ClientSession, list[str]]]:
    """Serve ``spec``; yield the simulator, a session and the list of URLs it requests."""
    requested: list[str] = []

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        requested.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    simulator = Simulator([spec], seed=3)
    await simulator.start()
    try:
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            yield simulator, session, requested
    finally:
        await simulator.stop()


def _endpoint_of(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Return a URL's path and query without the per-call fields (method, json, secret)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = tuple(sorted((k, v) for k, v in query if k not in ("method", "json", "_akeebaAuth")))
    return parts.path, kept


async def _detect(
    simulator: Simulator,
    session: aiohttp.ClientSession,
    platform: Platform,
    *,
    api: ApiGeneration = ApiGeneration.AUTO,
    endpoint_url: str | None = None,
    secret: str = SECRET,
) -> Detection:
    candidates = candidate_endpoints(simulator.base_url("site"), platform, api, endpoint_url)
    return await detect_endpoint(session, candidates, Secret(secret), FakeClock(), SETTINGS)


@pytest.mark.parametrize(("api", "platform", "auto_path", "own_path"), SERVED, ids=IDS)
async def test_auto_finds_the_endpoint_and_generation_v2_candidates_first(
    api: str, platform: str, auto_path: str, own_path: str | None
) -> None:
    """Platform auto probes the candidates in order, v2 before v1, and stops at the site's API."""
    spec = SiteSpec(name="site", api=api, platform=platform, secret=SECRET)
    async with fleet(spec) as (simulator, session, requested):
        detection = await _detect(simulator, session, Platform.AUTO)
        candidates = candidate_endpoints(
            simulator.base_url("site"), Platform.AUTO, ApiGeneration.AUTO
        )
        expected_url = simulator.base_url("site") + auto_path
    assert detection.endpoint.url == expected_url
    assert detection.endpoint.generation is ApiGeneration(api)
    assert detection.version.api_level == (600 if api == "v2" else 330)
    found = [c.url for c in candidates].index(expected_url)
    assert [_endpoint_of(url) for url in requested] == [
        _endpoint_of(c.url) for c in candidates[: found + 1]
    ]
    generations = [c.generation for c in candidates[: found + 1]]
    assert generations == sorted(generations, key=lambda g: g is ApiGeneration.V1)
    assert simulator.site("site").calls_by_method == {"getVersion": 1}


@pytest.mark.parametrize(("api", "platform", "auto_path", "own_path"), SERVED, ids=IDS)
async def test_the_explicit_platform_finds_the_endpoint(
    api: str, platform: str, auto_path: str, own_path: str | None
) -> None:
    """Naming the platform (generation auto, or named too) finds the same API."""
    spec = SiteSpec(name="site", api=api, platform=platform, secret=SECRET)
    async with fleet(spec) as (simulator, session, _):
        by_platform = await _detect(simulator, session, config_platform(platform))
        both = await _detect(simulator, session, config_platform(platform), api=ApiGeneration(api))
        expected_url = simulator.base_url("site") + (own_path or auto_path)
    assert by_platform.endpoint.url == both.endpoint.url == expected_url
    assert by_platform.endpoint.generation is both.endpoint.generation is ApiGeneration(api)


@pytest.mark.parametrize(("api", "platform", "auto_path", "own_path"), SERVED, ids=IDS)
async def test_a_refused_secret_stops_the_probe_at_the_first_endpoint_that_answers(
    api: str, platform: str, auto_path: str, own_path: str | None
) -> None:
    """An auth failure (503 v2, 401 v1) ends the probe at once: the API exists there."""
    spec = SiteSpec(name="site", api=api, platform=platform, secret=SECRET)
    async with fleet(spec) as (simulator, session, requested):
        with pytest.raises(AuthError, match="access denied"):
            await _detect(simulator, session, Platform.AUTO, secret="wrong")
        site_endpoint = _endpoint_of(simulator.base_url("site") + auto_path)
    assert simulator.site("site").calls_by_method == {"getVersion": 1}
    assert _endpoint_of(requested[-1]) == site_endpoint
    assert [_endpoint_of(url) for url in requested].count(site_endpoint) == 1


@pytest.mark.parametrize(("api", "platform"), [("v2", "joomla"), ("v1", "wordpress")])
async def test_a_server_below_api_330_is_refused_with_a_clear_message(
    api: str, platform: str
) -> None:
    """A server reporting API level 320 is refused, naming the level and the minimum."""
    spec = SiteSpec(name="site", api=api, platform=platform, secret=SECRET, api_level=320)
    async with fleet(spec) as (simulator, session, requested):
        with pytest.raises(RemoteError) as caught:
            await _detect(simulator, session, Platform.AUTO)
    assert "API level 320: too old, API level 330 or newer is required" in caught.value.message
    assert simulator.site("site").calls_by_method == {"getVersion": 1}
    own = next(path for a, p, path, _ in SERVED if (a, p) == (api, platform))
    # nothing is probed after the too-old server
    assert _endpoint_of(requested[-1]) == _endpoint_of(simulator.base_url("site") + own)


@pytest.mark.parametrize(
    ("api", "platform", "path"),
    [
        ("v2", "wordpress", "wp-admin/admin-ajax.php?action=akeebabackup_api"),
        ("v1", "solo", "remote.php?view=json"),
    ],
)
async def test_a_custom_endpoint_is_used_as_given_with_either_generation(
    api: str, platform: str, path: str
) -> None:
    """Platform custom probes the given URL, v2 then v1, and finds the site's generation."""
    spec = SiteSpec(name="site", api=api, platform=platform, secret=SECRET)
    async with fleet(spec) as (simulator, session, requested):
        url = simulator.base_url("site") + path
        detection = await _detect(simulator, session, Platform.CUSTOM, endpoint_url=url)
    assert detection.endpoint.url == url
    assert detection.endpoint.generation is ApiGeneration(api)
    assert {_endpoint_of(u) for u in requested} == {_endpoint_of(url)}
    assert len(requested) == (1 if api == "v2" else 2)


async def test_the_joomla_api_route_needs_accept_json() -> None:
    """Joomla's API application answers 406 unless the request accepts application/json."""
    spec = SiteSpec(name="site", api="v2", platform="joomla-api", secret=SECRET)
    async with fleet(spec) as (simulator, session, _):
        url = simulator.base_url("site") + "api/index.php/v2/akeebabackup"
        query = {"method": "getVersion"}
        headers = {"X-Akeeba-Auth": SECRET}
        async with session.get(url, params=query, headers=headers) as response:
            refused = (response.status, response.content_type, await response.json())
        accepted_headers = {**headers, "Accept": "application/json"}
        async with session.get(url, params=query, headers=accepted_headers) as response:
            accepted = (response.status, await response.json())
    assert refused[:2] == (406, "application/vnd.api+json")
    assert refused[2]["errors"][0]["code"] == 406
    assert accepted == (
        200,
        {
            "status": 200,
            "data": {"api": 600, "component": "9.9.3", "date": "2024-05-13", "edition": "pro"},
        },
    )
