"""How one API call looks on the wire for each generation (PROTOCOL.md §2 and §4). Pure.

:func:`prepare_request` builds the HTTP request for a method call; the client sends it and hands
the body back to :func:`decode_reply`. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from akeeba_backupd import __version__

from .options import ApiGeneration, AuthPlacement, HttpVerb
from .parse import Envelope, decode_envelope
from .secret import Secret

USER_AGENT = f"akeeba-backupd/{__version__}"
AUTH_HEADER = "X-Akeeba-Auth"
AUTH_QUERY_PARAMETER = "_akeebaAuth"

ParamValue = str | int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A site's JSON API entry point and the generation it speaks."""

    url: str
    generation: ApiGeneration


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One HTTP request, ready to send: ``query`` goes in the URL, ``form`` in a POST body."""

    verb: HttpVerb
    url: str
    query: tuple[tuple[str, str], ...]
    form: tuple[tuple[str, str], ...] | None
    headers: dict[str, str] = field(default_factory=dict)


def prepare_request(
    endpoint: Endpoint,
    method: str,
    params: dict[str, ParamValue],
    secret: Secret,
    *,
    verb: HttpVerb = HttpVerb.GET,
    auth: AuthPlacement = AuthPlacement.HEADER,
) -> PreparedRequest:
    """Return the HTTP request calling ``method`` with ``params`` at ``endpoint``."""
    base_url, base_query = _split_query(endpoint.url)
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if endpoint.generation is ApiGeneration.V1:
        fields = [("json", _v1_request_object(method, params, secret))]
    else:
        fields = [("method", method), *((key, str(value)) for key, value in params.items())]
        if auth is AuthPlacement.HEADER:
            headers[AUTH_HEADER] = secret.reveal()
        else:
            # The server reads _akeebaAuth from the query string only, never from a POST body.
            base_query = (*base_query, (AUTH_QUERY_PARAMETER, secret.reveal()))
    if verb is HttpVerb.POST:
        return PreparedRequest(verb, base_url, base_query, tuple(fields), headers)
    return PreparedRequest(verb, base_url, (*base_query, *fields), None, headers)


def decode_reply(endpoint: Endpoint, text: str, secret: Secret) -> Envelope:
    """Return the envelope of a reply body from ``endpoint``; raise BadResponseError if none
    (its message describes the body with ``secret`` masked)."""
    return decode_envelope(
        text, data_is_encoded=endpoint.generation is ApiGeneration.V1, scrub=secret.scrub
    )


def v1_challenge(secret: Secret, salt: str | None = None) -> str:
    """Return the v1 challenge ``salt:md5hex(salt + secret)`` with a random 32-character salt."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.md5((salt + secret.reveal()).encode(), usedforsecurity=False).hexdigest()
    return f"{salt}:{digest}"


def _v1_request_object(method: str, params: dict[str, ParamValue], secret: Secret) -> str:
    body = {"challenge": v1_challenge(secret), "method": method, "data": params}
    return json.dumps({"encapsulation": 1, "body": json.dumps(body)})


def _split_query(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(url)
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query


def redact_url(url: str) -> str:
    """Return ``url`` with the value of any ``_akeebaAuth`` parameter replaced by ``***``."""
    parts = urlsplit(url)
    if AUTH_QUERY_PARAMETER.lower() not in parts.query.lower():
        return url
    query = [
        (key, "***" if key.lower() == AUTH_QUERY_PARAMETER.lower() else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))
