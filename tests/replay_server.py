"""A real HTTP server that answers with captured replies, in order, checking each request.

Every request must call the API method the next capture expects (case-insensitively) and carry
valid authentication for its generation (v2: the secret in the header or ``_akeebaAuth`` query;
v1: a correct challenge). Mismatches are recorded and answered with HTTP 599 so tests fail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from tests.fixture_data import Exchange


@dataclass
class Reply:
    """One reply to serve, and the API method the request must call (None: do not check)."""

    expect_method: str | None
    status: int
    content_type: str
    body: str
    label: str = ""

    @classmethod
    def of(cls, exchange: Exchange, *, check_method: bool = True) -> Reply:
        """Return the captured reply of ``exchange``."""
        return cls(
            expect_method=exchange.api_method if check_method else None,
            status=exchange.status,
            content_type=exchange.content_type,
            body=exchange.body,
            label=exchange.label,
        )


@dataclass
class ReplayServer:
    """Serve ``replies`` in order at any path; see the module docstring."""

    generation: str
    secret: str
    replies: list[Reply] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)

    def queue(self, replies: Iterable[Reply]) -> None:
        """Append replies to serve."""
        self.replies.extend(replies)

    def app(self) -> web.Application:
        """Return the aiohttp application."""
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._handle)
        return application

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        fields: dict[str, str] = {**request.query, **{k: str(v) for k, v in form.items()}}
        if not self.replies:
            self.problems.append(f"unexpected request {fields.get('method')!r}: none queued")
            return web.Response(status=599, text="no reply queued")
        reply = self.replies.pop(0)
        method, problem = self._inspect(request, fields)
        if problem:
            self.problems.append(f"{reply.label}: {problem}")
        if (
            reply.expect_method is not None
            and (method or "").lower() != reply.expect_method.lower()
        ):
            self.problems.append(f"{reply.label}: expected {reply.expect_method}, got {method}")
            return web.Response(status=599, text="unexpected method")
        self.served.append(reply.label)
        return web.Response(
            status=reply.status,
            body=reply.body.encode(),
            headers={"Content-Type": reply.content_type},
        )

    def _inspect(self, request: web.Request, fields: dict[str, str]) -> tuple[str | None, str]:
        if self.generation == "v2":
            header = request.headers.get("X-Akeeba-Auth")
            secret = header if header is not None else request.query.get("_akeebaAuth")
            if secret != self.secret:
                return fields.get("method"), "v2 request without the right secret"
            if request.headers.get("Accept") != "application/json":
                return fields.get("method"), "v2 request without Accept: application/json"
            return fields.get("method"), ""
        try:
            outer = json.loads(fields["json"])
            inner = json.loads(outer["body"])
            salt, digest = inner["challenge"].split(":")
        except (KeyError, ValueError, TypeError, AttributeError):
            return None, "v1 request without a decodable json object"
        expected = hashlib.md5((salt + self.secret).encode(), usedforsecurity=False).hexdigest()
        if outer.get("encapsulation") != 1 or digest != expected or len(salt) < 2:
            return inner.get("method"), "v1 request with a wrong challenge or encapsulation"
        return inner.get("method"), ""
