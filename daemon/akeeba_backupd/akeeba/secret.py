"""A secret that cannot leak by accident: its ``str`` and ``repr`` never show the value."""

from __future__ import annotations

import contextlib
import html
import json
import re
from urllib.parse import quote, quote_plus

import yarl

_AUTH_PARAMETER = re.compile(r"(_akeebaAuth=)[^&\s\"'<>]*", re.IGNORECASE)
"""An ``_akeebaAuth`` query value, however the secret was encoded in it."""

_QUERY_SAFE = "/?:@!$'()*,;~"
"""Characters that URL builders (yarl among them) may leave unencoded in a query value."""


class Secret:
    """Hold a secret string; only :meth:`reveal` returns it."""

    __slots__ = ("_forms", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._forms: tuple[str, ...] = _spellings(value) if value else ()

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def scrub(self, text: str) -> str:
        """Return ``text`` with the secret masked in every spelling a server may echo.

        Masks the plain value, its URL encodings (strict, ``+`` for spaces, and the lenient
        one HTTP clients send), its HTML-escaped form, and any ``_akeebaAuth=`` query value.
        """
        for form in self._forms:
            text = text.replace(form, "***")
        # Last, so that a raw secret holding '&' is masked whole before the value is cut at it.
        return _AUTH_PARAMETER.sub(r"\1***", text)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def _spellings(value: str) -> tuple[str, ...]:
    """Return the distinct spellings of ``value`` a server may echo, longest first: plain, URL
    encoded (strict, form, lenient), HTML escaped (Python's, PHP's ``&#039;``, quotes left
    alone) and JSON encoded (with PHP's ``\\/``)."""
    escaped = html.escape(value)
    in_json = json.dumps(value)[1:-1]
    forms = {
        value,
        escaped,
        escaped.replace("&#x27;", "&#039;"),
        html.escape(value, quote=False),
        in_json,
        in_json.replace("/", "\\/"),
    }
    # Not encodable (surrogate escapes): it cannot have been sent in a URL either.
    with contextlib.suppress(UnicodeError):
        forms |= {
            quote(value, safe=""),
            quote_plus(value),
            quote(value, safe=_QUERY_SAFE),
            yarl.URL.build(path="/", query={"x": value}).raw_query_string[2:],
        }
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))
