"""A server that echoes the request back (proxy error pages, WAFs, debug output) never makes the
secret reach an error message, whatever encoding the echo uses."""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from akeeba_backupd.akeeba import (
    AkeebaClient,
    AkeebaError,
    ApiGeneration,
    AuthPlacement,
    ClientSettings,
    Endpoint,
    FailureReason,
    HttpVerb,
    Secret,
)
from akeeba_backupd.akeeba.client import _check_same_site
from akeeba_backupd.akeeba.errors import HttpError
from tests.fakes import FakeClock

# Characters that URL encoders disagree about, an HTML metacharacter and a space.
SECRET = "Vx7-Rq2!mZ9pL4#tK8wN&<b> 'q'(x)*~"


@contextlib.asynccontextmanager
async def echo_client(
    handle: Callable[[web.Request], Awaitable[web.Response]],
    settings: ClientSettings | None = None,
) -> AsyncIterator[AkeebaClient]:
    """Serve ``handle`` as a v2 endpoint; yield a client holding SECRET pointed at it."""
    app = web.Application()
    app.router.add_route("*", "/index.php", handle)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        endpoint = Endpoint(
            str(server.make_url("/index.php?option=com_akeebabackup&view=Api&format=raw")),
            ApiGeneration.V2,
        )
        yield AkeebaClient(
            session, endpoint, Secret(SECRET), FakeClock(), settings or ClientSettings()
        )


def _raw_query_value(request: web.Request) -> str:
    """The ``_akeebaAuth`` value exactly as the client encoded it on the wire."""
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, value = pair.partition("=")
        if key == "_akeebaAuth":
            return value
    return ""


def _php_escaped(value: str) -> str:
    """PHP's htmlspecialchars(ENT_QUOTES): &#039; for the apostrophe, unlike Python."""
    return (
        value.replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("'", "&#039;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


def _decoded(request: web.Request) -> str:
    return request.query.get("_akeebaAuth", "")


ECHOES: dict[str, Callable[[web.Request], str]] = {
    # What real error pages echo: the raw query, the decoded value, HTML-escaped (Python, PHP,
    # quotes left alone), the header.
    "raw-query": _raw_query_value,
    "decoded": _decoded,
    "html-escaped": lambda request: html.escape(_decoded(request)),
    "php-escaped": lambda request: _php_escaped(_decoded(request)),
    "quotes-unescaped": lambda request: html.escape(_decoded(request), quote=False),
    "header": lambda request: request.headers.get("X-Akeeba-Auth", ""),
}


@pytest.mark.parametrize("title_prefix", ["", "403 Forbidden - invalid credentials: "])
@pytest.mark.parametrize("echo", sorted(ECHOES))
@pytest.mark.parametrize("verb", [HttpVerb.GET, HttpVerb.POST])
async def test_echoed_secret_is_masked(echo: str, verb: HttpVerb, title_prefix: str) -> None:
    """A 502 page whose title echoes the secret ends as http_error with the secret masked."""
    auth = AuthPlacement.HEADER if echo == "header" else AuthPlacement.QUERY
    echoed: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        value = ECHOES[echo](request)
        echoed.append(value)
        # A double quote makes repr() switch quotes; a long prefix makes the description cut.
        page = f'<html><head><title>{title_prefix}Denied "{value}"</title></head></html>'
        return web.Response(status=502, text=page, content_type="text/html")

    async with echo_client(handle, ClientSettings(verb=verb, auth=auth)) as client:
        with pytest.raises(AkeebaError) as caught:
            await client.get_version()
    error = caught.value
    assert error.reason is FailureReason.HTTP_ERROR
    # The page did carry the secret, so the masking was put to work.
    assert echoed
    assert echoed[0].startswith("Vx7-Rq2")
    assert "Denied" in error.message
    if not title_prefix:
        assert 'Denied "***"' in error.message
    for text in (error.message, str(error), repr(error)):
        assert "Vx7" not in text


def test_scrub_masks_every_spelling() -> None:
    """Each spelling a server may echo is masked; text without the secret is left alone."""
    secret = Secret(SECRET)
    spellings = [
        SECRET,
        html.escape(SECRET),
        _php_escaped(SECRET),
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET + "/x")[1:-1].replace("/", "\\/"),
        "Vx7-Rq2%21mZ9pL4%23tK8wN%26%3Cb%3E%20%27q%27%28x%29%2A~",
        "Vx7-Rq2!mZ9pL4%23tK8wN%26%3Cb%3E+'q'(x)*~",
        "?a=1&_akeebaAuth=anything-else&b=2",
    ]
    for spelling in spellings:
        scrubbed = secret.scrub(f"before {spelling} after")
        assert "Vx7" not in scrubbed, spelling
        assert "anything-else" not in scrubbed
        assert scrubbed.startswith("before ")
        assert "***" in scrubbed
    assert secret.scrub("nothing to hide here") == "nothing to hide here"
    assert str(secret) == "***"
    assert SECRET not in repr(secret)


async def test_engine_texts_echoing_the_secret_are_masked() -> None:
    """An engine Error or warning that quotes the secret (a debug message, a URL in a log line)
    reaches the run, the API and the logs masked."""

    async def handle(request: web.Request) -> web.Response:
        data = {
            "HasRun": 1,
            "Domain": "init",
            "Error": f"cannot fetch http://x/?_akeebaAuth={SECRET}",
            "Warnings": [f"secret word {SECRET} is weak", "an ordinary warning"],
            "Progress": 0,
        }
        return web.json_response({"status": 200, "data": data})

    async with echo_client(handle) as client:
        status = await client.step_backup("id-1")
    assert status.error == "cannot fetch http://x/?_akeebaAuth=***"
    assert status.warnings == ("secret word *** is weak", "an ordinary warning")


async def test_api_error_echoing_the_secret_late_is_masked_before_the_cut() -> None:
    """An API error message that quotes the secret near its 500-character cut shows no part
    of it (masking first, cutting second)."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"status": 500, "data": "x" * 480 + f" bad secret {SECRET}"})

    async with echo_client(handle) as client:
        with pytest.raises(AkeebaError) as caught:
            await client.get_version()
    assert caught.value.reason is FailureReason.REMOTE_ERROR
    assert "Vx7" not in caught.value.message
    assert "bad secret" in caught.value.message


def test_a_secret_that_is_not_utf8_does_not_crash() -> None:
    """Undecodable environment bytes (surrogate escapes) still make a Secret that masks."""
    odd = "abc\udcffdef"
    assert Secret(odd).scrub(f"x {odd} y") == "x *** y"


@pytest.mark.parametrize(
    ("current", "target", "followed"),
    [
        ("http://example.org/x", "https://example.org/y", True),  # upgrade to https
        ("https://example.org/x", "https://EXAMPLE.org/y?a=1", True),
        ("http://example.org/x", "http://example.org:80/y", True),  # the same port, spelt out
        ("http://example.org/x", "http://example.org:8080/y", False),  # another service maybe
        ("http://example.org:8080/x", "https://example.org:8443/y", False),
        ("https://example.org/x", "http://example.org/y", False),  # downgrade: secret in clear
        ("https://example.org/x", "https://www.example.org/y", False),
        ("https://example.org/x", "https://sso.example.com/login", False),
        ("https://example.org/x", "ftp://example.org/y", False),
    ],
)
def test_redirects_are_followed_only_on_the_same_host(
    current: str, target: str, followed: bool
) -> None:
    """The secret rides in a header aiohttp would forward: only same-host redirects are taken."""
    if followed:
        _check_same_site(URL(current), URL(target), "getVersion", 302)
    else:
        with pytest.raises(HttpError, match="not followed"):
            _check_same_site(URL(current), URL(target), "getVersion", 302)


async def test_an_error_after_a_redirect_is_judged_by_its_final_status() -> None:
    """A redirect followed to a gateway timeout is a retryable 504, named as a redirect."""

    async def handle(request: web.Request) -> web.Response:
        if "hop" not in request.query:
            return web.Response(status=302, headers={"Location": "/index.php?hop=1"})
        body = "<html><head><title>504 Gateway Time-out</title></head></html>"
        return web.Response(status=504, text=body, content_type="text/html")

    async with echo_client(handle) as client:
        with pytest.raises(HttpError) as caught:
            await client.get_version()
    assert caught.value.http_status == 504
    assert caught.value.retryable
    assert "HTTP 302 redirect to" in caught.value.message
    assert "504 Gateway Time-out" in caught.value.message


@pytest.mark.parametrize(
    "location", ["http://[::1/x", "http://example.org:99999/", "http://xn--a.b/"]
)
async def test_a_redirect_to_an_invalid_location_is_a_bad_response(location: str) -> None:
    """A Location that is no URL ends in bad_response, not in an exception of another kind."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    async with echo_client(handle) as client:
        with pytest.raises(AkeebaError) as caught:
            await client.get_version()
    assert caught.value.reason is FailureReason.BAD_RESPONSE
    assert "invalid Location" in caught.value.message
