"""Load the real-server captures in tests/fixtures (copied from the project's shared captures).

Each exchange gives the API method and parameters the rig sent and the HTTP response the real
server returned, byte for byte, plus the rig's own decoding (independent of our parser).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V2_DIR = FIXTURES / "real-akeeba-joomla-pro-9.9.3-api600"
V1_DIR = FIXTURES / "real-akeeba-wp-core-1.3.4-api330"
V2_SECRET = "Vx7-Rq2!mZ9pL4#tK8wN"
V1_SECRET = "RealTestSecret42"


@dataclass(frozen=True)
class Exchange:
    """One captured request/response pair."""

    generation: str  # "v2" | "v1"
    name: str  # file name without .json
    label: str  # e.g. "A07-stepBackup-001" or "004-A-stepBackup-1"
    http_verb: str
    api_method: str | None
    params: dict[str, object]
    status: int
    content_type: str
    body: str
    rig_data: object
    """What the capture rig decoded as the envelope's data (None when it could not)."""
    rig_status: int | None
    """The envelope status the rig decoded (None when the body had no envelope)."""


def _content_type(headers: list[list[str]]) -> str:
    for key, value in headers:
        if key.lower() == "content-type":
            return value
    return "text/html"


def _load_v2(path: Path) -> Exchange:
    raw = json.loads(path.read_text())
    request = raw["request"]
    query = dict(parse_qsl(urlsplit(request["url"]).query, keep_blank_values=True))
    form = dict(parse_qsl(request["body"] or "", keep_blank_values=True))
    fields = form if request["method"] == "POST" else query
    params: dict[str, object] = {
        key: value
        for key, value in fields.items()
        if key not in ("option", "view", "format", "method", "_akeebaAuth")
    }
    response = raw["response"]
    envelope = response.get("json")
    has_envelope = isinstance(envelope, dict) and "status" in envelope
    return Exchange(
        generation="v2",
        name=path.stem,
        label=raw["label"],
        http_verb=request["method"],
        api_method=fields.get("method"),
        params=params,
        status=response["status"],
        content_type=_content_type(response["headers"]),
        body=response["body"] or "",
        rig_data=envelope["data"] if has_envelope else None,
        rig_status=envelope["status"] if has_envelope else None,
    )


def _load_v1(path: Path) -> Exchange:
    raw = json.loads(path.read_text())
    request = raw["request"]
    method: str | None = None
    params: dict[str, object] = {}
    try:
        outer = json.loads(request.get("json_param") or "")
        inner = outer["body"]
        if isinstance(inner, str):
            inner = json.loads(inner)
        method = inner.get("method")
        params = dict(inner.get("data") or {})
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    response = raw["response"]
    decoded = raw.get("decoded") or {}
    envelope = decoded.get("envelope")
    body = envelope.get("body") if isinstance(envelope, dict) else None
    return Exchange(
        generation="v1",
        name=path.stem,
        label=raw["name"],
        http_verb=request["method"],
        api_method=method,
        params=params,
        status=response["status"],
        content_type=_content_type(response["headers"]),
        body=response["body"] or "",
        rig_data=decoded.get("data_decoded"),
        rig_status=body.get("status") if isinstance(body, dict) else None,
    )


@cache
def exchanges(generation: str) -> tuple[Exchange, ...]:
    """Return every capture of one generation, in capture order."""
    if generation == "v2":
        return tuple(_load_v2(path) for path in sorted(V2_DIR.glob("0*.json")))
    return tuple(_load_v1(path) for path in sorted(V1_DIR.glob("[0-9]*.json")))


def by_prefix(generation: str, prefix: str) -> Exchange:
    """Return the one capture whose file name starts with ``prefix`` (e.g. "0026", "015")."""
    (found,) = [item for item in exchanges(generation) if item.name.startswith(prefix + "-")]
    return found


def span(generation: str, first: str, last: str) -> list[Exchange]:
    """Return the captures from prefix ``first`` to prefix ``last`` inclusive."""
    names = [item.name for item in exchanges(generation)]
    start = next(i for i, name in enumerate(names) if name.startswith(first + "-"))
    end = next(i for i, name in enumerate(names) if name.startswith(last + "-"))
    return list(exchanges(generation)[start : end + 1])
