"""A secret that cannot leak by accident: its ``str`` and ``repr`` never show the value."""

from __future__ import annotations

import html
import re
from urllib.parse import quote, quote_plus

import yarl

_AUTH_PARAMETER = re.compile(r"(_akeebaAuth=)[^&\s\"'<>]*", re.IGNORECASE)
"""An ``_akeebaAuth`` query value, however the secret was encoded in it."""

_QUERY_SAFE = "/?:@!$'()*,;~"
"""Characters that URL builders (yarl among them) may leave unencoded in a query value."""


class Secret:
    """Hold a secret string; only :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def scrub(self, text: str) -> str:
        """Return ``text`` with the secret masked in every spelling a server may echo.

        Masks the plain value, its URL encodings (strict, ``+`` for spaces, and the lenient
        one HTTP clients send), its HTML-escaped form, and any ``_akeebaAuth=`` query value.
        """
        text = _AUTH_PARAMETER.sub(r"\1***", text)
        if not self._value:
            return text
        forms = {
            self._value,
            html.escape(self._value),
            quote(self._value, safe=""),
            quote_plus(self._value),
            quote(self._value, safe=_QUERY_SAFE),
            yarl.URL.build(path="/", query={"x": self._value}).raw_query_string[2:],
        }
        for form in sorted(forms, key=len, reverse=True):
            if form:
                text = text.replace(form, "***")
        return text

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))
