"""A secret that cannot leak by accident: its ``str`` and ``repr`` never show the value."""

from __future__ import annotations

from urllib.parse import quote, quote_plus


class Secret:
    """Hold a secret string; only :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def scrub(self, text: str) -> str:
        """Return ``text`` with every spelling of the secret (plain, URL-encoded) masked."""
        if not self._value:
            return text
        for form in {self._value, quote(self._value, safe=""), quote_plus(self._value)}:
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
