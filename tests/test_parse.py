"""The envelope is found in the bodies real sites send (PROTOCOL.md §3), junk and all."""

from __future__ import annotations

import json

import pytest

from akeeba_backupd.akeeba.errors import BadResponseError
from akeeba_backupd.akeeba.parse import decode_envelope, extract_payload

ENVELOPE = {"status": 200, "data": {"HasRun": 1, "Domain": "init", "Warnings": []}}
BODY = json.dumps(ENVELOPE)


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("bare", BODY),
        ("bom", "\ufeff" + BODY),
        ("notice before", "<b>Notice</b>: Undefined index: x in /a.php on line 3<br>\n" + BODY),
        ("v1 hashes", "junk ###" + BODY + "### more junk"),
        ("html around", f"<html><body><p>{BODY}</p></body></html>"),
        ("css before", "<style>p { color: red }</style>" + BODY),
        ("script after", BODY + "<script>var x = {};</script>"),
        ("css and script", "<style>p{margin:0}</style>" + BODY + "<script>x={a:1}</script>"),
        ("object after", BODY + '\n{"debug": []}'),
        ("stray object first", '<script>cfg = {"a": 1};</script>' + BODY + "<script>{}</script>"),
    ],
)
def test_envelope_found_in_junk(label: str, text: str) -> None:
    """Each body yields the envelope itself, not a stray object from the junk."""
    envelope = decode_envelope(text, data_is_encoded=False)
    assert (envelope.status, envelope.data) == (200, ENVELOPE["data"]), label


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><head><title>Log in</title></head><body>form</body></html>",
        "{not json at all}",
        '{"status": 200}',
        '<script>var x = {"a": 1};</script>',
    ],
)
def test_no_envelope_is_bad_response(text: str) -> None:
    """A body without both status and data is a bad_response, never a crash."""
    with pytest.raises(BadResponseError):
        decode_envelope(text, data_is_encoded=False)


def test_many_braces_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body full of '{' is given up on after a bounded number of decode attempts, however
    large it is; the body is never copied once per attempt."""
    import akeeba_backupd.akeeba.parse as parse

    attempts: list[int] = []
    real = parse._raw_decode_or_none

    def counting(text: str, start: int) -> object | None:
        attempts.append(start)
        return real(text, start)

    monkeypatch.setattr(parse, "_raw_decode_or_none", counting)
    nested = '{"a":' * 40 + "[" + "1," * 100_000 + "1]" + "}"
    for text in ("{" * 200_000, nested, "x{" * 50_000 + "}"):
        attempts.clear()
        assert extract_payload(text) is None
        assert 0 < len(attempts) <= parse.MAX_BRACE_TRIES
