"""A server that echoes the request back (proxy error pages, WAFs, debug output) never makes the
secret reach an error message, whatever encoding the echo uses."""

from __future__ import annotations

import html
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

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
from tests.fakes import FakeClock

# Characters that URL encoders disagree about, an HTML metacharacter and a space.
SECRET = "Vx7-Rq2!mZ9pL4#tK8wN&<b> 'q'(x)*~"


def _raw_query_value(request: web.Request) -> str:
    """The ``_akeebaAuth`` value exactly as the client encoded it on the wire."""
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, value = pair.partition("=")
        if key == "_akeebaAuth":
            return value
    return ""


ECHOES: dict[str, Callable[[web.Request], str]] = {
    # What real error pages echo: the raw query, the decoded value, HTML-escaped, the header.
    "raw-query": _raw_query_value,
    "decoded": lambda request: request.query.get("_akeebaAuth", ""),
    "html-escaped": lambda request: html.escape(request.query.get("_akeebaAuth", "")),
    "header": lambda request: request.headers.get("X-Akeeba-Auth", ""),
}


@pytest.mark.parametrize("echo", sorted(ECHOES))
@pytest.mark.parametrize("verb", [HttpVerb.GET, HttpVerb.POST])
async def test_echoed_secret_is_masked(echo: str, verb: HttpVerb) -> None:
    """A 502 page whose title echoes the secret ends as http_error with the secret masked."""
    auth = AuthPlacement.HEADER if echo == "header" else AuthPlacement.QUERY
    echoed: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        value = ECHOES[echo](request)
        echoed.append(value)
        page = f"<html><head><title>Denied {value}</title></head><body>x</body></html>"
        return web.Response(status=502, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/index.php", handle)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        endpoint = Endpoint(
            str(server.make_url("/index.php?option=com_akeebabackup&view=Api&format=raw")),
            ApiGeneration.V2,
        )
        settings = ClientSettings(verb=verb, auth=auth)
        client = AkeebaClient(session, endpoint, Secret(SECRET), FakeClock(), settings)
        with pytest.raises(AkeebaError) as caught:
            await client.get_version()
    error = caught.value
    assert error.reason is FailureReason.HTTP_ERROR
    # The page did carry the secret, so the masking was put to work.
    assert echoed
    assert echoed[0].startswith("Vx7-Rq2")
    assert "Denied ***" in error.message
    for text in (error.message, str(error), repr(error)):
        assert "Vx7-Rq2" not in text


def test_scrub_masks_every_spelling() -> None:
    """Each spelling a server may echo is masked; text without the secret is left alone."""
    secret = Secret(SECRET)
    spellings = [
        SECRET,
        html.escape(SECRET),
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

    app = web.Application()
    app.router.add_route("*", "/index.php", handle)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        endpoint = Endpoint(
            str(server.make_url("/index.php?option=com_akeebabackup&view=Api&format=raw")),
            ApiGeneration.V2,
        )
        client = AkeebaClient(session, endpoint, Secret(SECRET), FakeClock(), ClientSettings())
        status = await client.step_backup("id-1")
    assert status.error == "cannot fetch http://x/?_akeebaAuth=***"
    assert status.warnings == ("secret word *** is weak", "an ordinary warning")
