"""Writing the exposition fast: the text formats, and gzip that reuses what did not change.

prometheus_client builds a Sample object per series and escapes every label character by
character, which at 10,000 schedules (about 400,000 series, 44 MB) takes seconds. The
collector keeps its per-schedule families as :class:`RowFamily` rows, renders each schedule's
lines once and again only when they change; :func:`render_exposition` writes those lines
between HELP/TYPE headers that prometheus_client's own encoder writes, so the bytes are the
same as its output (tests/test_exposition.py compares them).

:class:`GzipExposition` compresses a scrape as one gzip member in which every family is its
own deflate segment (ended by a full flush, so it depends on nothing before it): a family whose
lines did not change since the last scrape reuses its compressed segment, and the gzip CRC is
combined from each segment's CRC. Only what changed is compressed again.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class RowFamily(Metric):
    """A metric family of one type whose samples are kept as rows until they are needed.

    A row is (sample name suffix, base label values, the extra label's value or None, value).
    ``samples`` builds prometheus_client's Sample objects on demand (for any encoder, and for
    code reading families); :func:`render_exposition` writes the rows straight to text, which
    is what keeps a scrape of 10,000 schedules fast (bench/README.md).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        labelnames: Sequence[str],
        extra: str | None = None,
    ) -> None:
        self.rows: list[tuple[str, tuple[str, ...], str | None, float]] = []
        self.text: list[str] | None = None
        """Sample lines already rendered (by the collector's cache), used instead of rows by
        :func:`render_exposition`; ``rows_source`` then gives the rows when they are read."""
        self.rows_source: Callable[[], Iterable[Row]] | None = None
        super().__init__(name, documentation, typ)
        self.labelnames = tuple(labelnames)
        self.extra = "le" if typ == "histogram" else extra

    @property
    def samples(self) -> list[Sample]:
        """Return the rows as prometheus_client samples."""
        built = []
        rows = self.rows if self.rows_source is None else self.rows_source()
        for suffix, values, extra, value in rows:
            labels = dict(zip(self.labelnames, values, strict=True))
            if extra is not None:
                assert self.extra is not None
                labels[self.extra] = extra
            built.append(Sample(self.name + suffix, labels, value))
        return built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise ValueError("give a RowFamily rows (or rows_source), not samples")


_GO_FLOATS: Final = {0.0: "0.0", 1.0: "1.0"}
_float_text: Final[Callable[[float], str]] = floatToGoString


def _label_value(value: str) -> str:
    """Escape a label value as both text formats do (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


Row = tuple[str, tuple[str, ...], str | None, float]
"""(sample name suffix, base label values, the extra label's value or None, value)."""


def render_rows(family: RowFamily, out: list[str], rows: Iterable[Row] | None = None) -> None:
    """Append the sample lines of ``family`` as prometheus_client's encoders write them.

    They sort labels by name: the extra label goes where it sorts among the base ones, so each
    row's line is a cached head and tail around the extra label.
    """
    names = family.labelnames
    order = sorted(range(len(names)), key=names.__getitem__)
    extra = family.extra
    cut = sum(1 for name in names if extra is not None and name < extra)
    cache: dict[tuple[str, ...], tuple[str, str, str]] = {}
    go = _GO_FLOATS.get
    for suffix, values, extra_value, value in family.rows if rows is None else rows:
        parts = cache.get(values)
        if parts is None:
            pairs = [f'{names[i]}="{_label_value(values[i])}"' for i in order]
            head = ",".join(pairs[:cut])
            tail = ",".join(pairs[cut:])
            parts = cache[values] = (
                ",".join(pairs),
                head + "," if head else "",
                "," + tail if tail else "",
            )
        number = go(value) or _float_text(value)
        if extra_value is None:
            out.append(f"{family.name}{suffix}{{{parts[0]}}} {number}\n")
        else:
            out.append(
                f'{family.name}{suffix}{{{parts[1]}{extra}="{_label_value(extra_value)}"'
                f"{parts[2]}}} {number}\n"
            )


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self._metric,)


_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(slots=True)
class Exposition:
    """One scrape's output as parts: text (HELP and TYPE lines, small families) and the
    families whose sample lines the collector rendered (:attr:`RowFamily.text`)."""

    content_type: str
    parts: list[str | RowFamily]

    def body(self) -> bytes:
        """Return the whole exposition, uncompressed."""
        return b"".join(_part_bytes(part) for part in self.parts)


def _part_bytes(part: str | RowFamily) -> bytes:
    if isinstance(part, str):
        return part.encode("utf-8")
    assert part.text is not None
    return "".join(part.text).encode("utf-8")


def render_exposition(collector: Collector, accept_header: str) -> Exposition | None:
    """Return the exposition of ``collector`` for ``accept_header``.

    The same bytes as prometheus_client's encoder that ``choose_encoder`` picks, faster: the
    sample lines of :class:`RowFamily` families are written here (or were already rendered by
    the collector), whose metric and label names are plain (the same under every escaping
    scheme); every other family, and the HELP and TYPE lines, come from the encoder itself.
    Return None when the encoder is one this does not know (the caller then uses
    prometheus_client's output).
    """
    encoder, content_type = choose_encoder(accept_header)
    openmetrics = content_type.startswith("application/openmetrics-text")
    if not (openmetrics or content_type.startswith("text/plain")):
        return None
    eof = "# EOF\n"

    def encode(metric: Metric) -> str:
        text: str = encoder(_One(metric)).decode("utf-8")
        if openmetrics:
            assert text.endswith(eof)
            text = text[: -len(eof)]
        return text

    parts: list[str | RowFamily] = []
    for metric in collector.collect():
        if isinstance(metric, RowFamily) and _plain_names(metric):
            parts.append(encode(Metric(metric.name, metric.documentation, metric.type)))
            if metric.text is None:
                lines: list[str] = []
                render_rows(metric, lines)
                parts.append("".join(lines))
            else:
                parts.append(metric)
        else:
            parts.append(encode(metric))
    if openmetrics:
        parts.append(eof)
    return Exposition(content_type, parts)


def _plain_names(family: RowFamily) -> bool:
    names: tuple[str | None, ...] = (family.name, *family.labelnames, family.extra)
    return all(name is None or _LEGACY_NAME.fullmatch(name) for name in names)


# --- gzip -----------------------------------------------------------------------------------

_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""A gzip member header: deflate, no flags, no mtime, unknown OS (RFC 1952)."""
_CRC_POLYNOMIAL: Final = 0xEDB88320


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total = 0
    index = 0
    while vector:
        if vector & 1:
            total ^= matrix[index]
        vector >>= 1
        index += 1
    return total


def _gf2_square(matrix: Sequence[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def _zeros_operators() -> list[list[int]]:
    """Return, for k = 0..63, the GF(2) operator that appends 2**k zero bytes to a CRC-32."""
    one_bit = [_CRC_POLYNOMIAL] + [1 << bit for bit in range(31)]  # one zero bit
    operator = _gf2_square(_gf2_square(_gf2_square(one_bit)))  # one zero byte
    operators = []
    for _ in range(64):
        operators.append(operator)
        operator = _gf2_square(operator)
    return operators


_ZEROS: Final = _zeros_operators()


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """Return the CRC-32 of A + B from ``crc1`` = crc32(A), ``crc2`` = crc32(B) and len(B)
    (zlib's crc32_combine, which Python's zlib module does not offer)."""
    bit = 0
    while length2:
        if length2 & 1:
            crc1 = _gf2_times(_ZEROS[bit], crc1)
        length2 >>= 1
        bit += 1
    return crc1 ^ crc2


@dataclass(frozen=True, slots=True)
class _Segment:
    deflated: bytes
    crc: int
    size: int


def _deflate(data: bytes, level: int) -> _Segment:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    return _Segment(deflated, zlib.crc32(data), len(data))


_END: Final = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)
"""An empty final deflate block: ends the stream after the full-flushed segments."""


@dataclass(slots=True)
class GzipJob:
    """One scrape's compression: segments reused, and bytes still to deflate."""

    pieces: list[_Segment | bytes]
    fresh: list[tuple[str, list[str], int]]
    """(family, its lines, index in pieces) of families compressed anew: kept for next time."""
    level: int

    def run(self) -> bytes:
        """Deflate what is new and return the gzip member (safe in a worker thread)."""
        for index, piece in enumerate(self.pieces):
            if isinstance(piece, bytes):
                self.pieces[index] = _deflate(piece, self.level)
        crc = 0
        size = 0
        deflated = []
        for piece in self.pieces:
            assert isinstance(piece, _Segment)
            crc = crc32_combine(crc, piece.crc, piece.size)
            size += piece.size
            deflated.append(piece.deflated)
        return b"".join([_GZIP_HEADER, *deflated, _END, struct.pack("<II", crc, size & 0xFFFFFFFF)])


class GzipExposition:
    """Gzips expositions, compressing again only the families whose lines changed."""

    def __init__(self, level: int = 1) -> None:
        """Compress at ``level`` (1: tens of MB at 10,000 schedules take a fraction of the
        default level's time, for a third more bytes)."""
        self._level = level
        self._families: dict[str, tuple[list[str], _Segment]] = {}

    def prepare(self, exposition: Exposition) -> GzipJob:
        """Return the job for ``exposition``: unchanged families reuse their last segment.

        Call on the event loop (it reads the collector's line lists); run the job anywhere,
        then hand it to :meth:`remember`.
        """
        pieces: list[_Segment | bytes] = []
        fresh: list[tuple[str, list[str], int]] = []
        for part in exposition.parts:
            if isinstance(part, RowFamily) and part.text is not None:
                found = self._families.get(part.name)
                if found is not None and found[0] == part.text:
                    pieces.append(found[1])
                    continue
                fresh.append((part.name, part.text, len(pieces)))
            pieces.append(_part_bytes(part))
        return GzipJob(pieces, fresh, self._level)

    def remember(self, job: GzipJob) -> None:
        """Keep the segments of a finished job for the next scrape (families gone are
        forgotten when a later scrape no longer has them)."""
        names = {name for name, _text, _index in job.fresh}
        kept = {name: found for name, found in self._families.items() if name not in names}
        for name, text, index in job.fresh:
            segment = job.pieces[index]
            if isinstance(segment, _Segment):
                kept[name] = (text, segment)
        self._families = kept
