"""Turn a reply body into the API envelope, defensively (PROTOCOL.md §3 and §4).

Real sites print PHP notices, BOMs or whole HTML templates around the JSON, wrap v1 replies in
``###``, and encode v1 ``data`` a second time. Everything here is pure: bytes or text in, values
or :class:`BadResponseError` out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import BadResponseError

MAX_BRACE_TRIES = 20
"""How many ``{`` positions to try when junk surrounds the JSON (bounded: bodies can be huge)."""

DESCRIBED_HEAD_CHARS = 65536
"""How much of a body an error description looks at (for an HTML title)."""

_DECODER = json.JSONDecoder()
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"\s+")


def _unchanged(text: str) -> str:
    return text


@dataclass(frozen=True, slots=True)
class Envelope:
    """The API's answer: ``status`` (200 is success) and ``data`` (result or error message)."""

    status: int
    data: object


def extract_payload(text: str) -> object | None:
    """Return the JSON value hidden in ``text``, or None when there is none.

    Order (PROTOCOL.md §3): what lies between the first and last ``###``; else the whole text;
    else one JSON value decoded from each ``{`` in turn (bounded), whatever follows it ignored,
    an object holding an envelope winning over any other.
    """
    text = text.lstrip("\ufeff")
    first = text.find("###")
    if first != -1:
        last = text.rfind("###")
        if last > first:
            value = _loads_or_none(text[first + 3 : last])
            if value is not None:
                return value
    value = _loads_or_none(text)
    if value is not None:
        return value
    # The spec's step 3 (first '{' to last '}', start moving on failure) in one pass: decoding
    # one value from each '{' finds the same objects without copying the body, and also
    # survives a '}' in junk after the JSON (inline CSS or script). An envelope wins over a
    # stray '{}' from the junk.
    fallback: object | None = None
    for start in _brace_positions(text):
        value = _raw_decode_or_none(text, start)
        if _is_envelope(value):
            return value
        if fallback is None:
            fallback = value
    return fallback


def _brace_positions(text: str) -> Iterator[int]:
    """Yield the first MAX_BRACE_TRIES positions of ``{``."""
    start = text.find("{")
    for _ in range(MAX_BRACE_TRIES):
        if start == -1:
            return
        yield start
        start = text.find("{", start + 1)


def _is_envelope(value: object) -> bool:
    return isinstance(value, dict) and (
        ("status" in value and "data" in value) or ("encapsulation" in value and "body" in value)
    )


def decode_envelope(
    text: str, *, data_is_encoded: bool, scrub: Callable[[str], str] = _unchanged
) -> Envelope:
    """Return the envelope in ``text``; raise BadResponseError when there is no usable one.

    v1 replies nest the envelope in ``{"encapsulation": 1, "body": {...}}`` and JSON-encode
    ``data`` once more (``data_is_encoded``); a ``data`` string that is not JSON is kept as is.
    """
    payload = extract_payload(text)
    if not isinstance(payload, dict):
        raise BadResponseError(f"no JSON API envelope in the reply ({describe_body(text, scrub)})")
    if "encapsulation" in payload and "body" in payload:
        if not data_is_encoded:
            raise BadResponseError("the endpoint answers in the legacy v1 format, not v2")
        body = payload["body"]
        if isinstance(body, str):
            body = _loads_or_none(body)
        if not isinstance(body, dict):
            raise BadResponseError("the v1 reply's body is not an object")
        payload = body
    if "status" not in payload or "data" not in payload:
        missing = " and ".join(key for key in ("status", "data") if key not in payload)
        raise BadResponseError(f"the reply's JSON lacks {missing} ({describe_body(text, scrub)})")
    status = coerce_int(payload["status"])
    if status is None:
        raise BadResponseError(f"the reply's status is not a number: {payload['status']!r:.40}")
    data = payload["data"]
    if data_is_encoded and isinstance(data, str):
        decoded = _loads_or_none(data)
        if decoded is not None or data.strip() == "null":
            data = decoded
    return Envelope(status=status, data=data)


def describe_body(text: str, scrub: Callable[[str], str] = _unchanged) -> str:
    """Return a short, single-line, printable description of a body for an error message.

    ``scrub`` masks the secret in the body's head before anything is cut, squashed or quoted,
    so no partial or escaped copy of it can reach the description.
    """
    head = scrub(text[:DESCRIBED_HEAD_CHARS])
    if not head.strip():
        return "empty body"
    title = _TITLE.search(head)
    if title:
        return "HTML page titled " + repr(_clip(title.group(1)))
    return "body starts with " + repr(_clip(head))


def _clip(text: str, limit: int = 80) -> str:
    flat = _SPACES.sub(" ", text[: limit * 16]).strip()
    flat = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _raw_decode_or_none(text: str, start: int) -> object | None:
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return value  # type: ignore[no-any-return]


def _loads_or_none(text: str) -> object | None:
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except (ValueError, RecursionError):
        return None


# --- tolerant scalar coercion (servers send numbers as strings, bools as 1, Error as false) ---


def coerce_int(value: object) -> int | None:
    """Return ``value`` as an int (int, integral float, digit string), or None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lstrip("-").isdigit() and len(stripped) < 20:
            return int(stripped)
    return None


def coerce_bool(value: object) -> bool | None:
    """Return ``value`` as a bool (true/false, 1/0, "1"/"0"/"true"/"false"), or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true"):
            return True
        if lowered in ("0", "false", ""):
            return False
    return None


def coerce_text(value: object) -> str:
    """Return ``value`` as display text: None and false become ""."""
    if value is None or value is False:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)[:1000]


def coerce_optional_text(value: object) -> str | None:
    """Return ``value`` as text, or None when it is absent or empty."""
    text = coerce_text(value)
    return text or None
