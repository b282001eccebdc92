"""Schedule maths: parse cron expressions (with Jenkins-style ``H``) and compute fire times.

Pure functions of their arguments: nothing here reads the clock. Fire times follow the wall clock
of the schedule's time zone, as classic cron does:

- a local time skipped by a spring-forward transition fires once, as far past the transition as
  it was past the start of the gap (02:30 in a 02:00→03:00 gap fires at 03:30);
- a local time repeated by a fall-back transition fires once, on its first occurrence.

Both rules are exactly what ``zoneinfo`` does with ``fold=0``, so a wall time is turned into an
instant with ``wall.replace(tzinfo=tz)`` and nothing else.

``H`` is a value hashed from the schedule's key within the field's range; in day-of-month that
range is 1-28 (as in Jenkins), so a hashed day exists in every month.
"""

from __future__ import annotations

import calendar
import contextlib
import copy
import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

__all__ = [
    "CronError",
    "CronSchedule",
    "expected_interval_seconds",
    "next_fire_time",
    "parse_cron",
    "previous_fire_time",
]


class CronError(ValueError):
    """A cron expression that cannot be used; the message names the expression and the fault."""


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression."""

    expression: str
    """The expression as the user wrote it."""
    resolved: str
    """The 5-field expression after macro expansion and ``H`` substitution."""


# Jenkins-style macros: every one of them spreads its fleet with H instead of storming at :00.
_MACROS: dict[str, str] = {
    "@hourly": "H * * * *",
    "@daily": "H H * * *",
    "@midnight": "H H(0-2) * * *",
    "@weekly": "H H * * H",
    "@monthly": "H H H(1-28) * *",
    "@yearly": "H H H(1-28) H *",
    "@annually": "H H H(1-28) H *",
}

# Spelled out: calendar.month_abbr follows the process locale.
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    distinct_high: int
    """The top of the distinct values: day-of-week 6, since 7 is Sunday again."""
    hash_high: int
    """The top of the range a bare H (or H/n) picks from."""


_FIELDS = (
    _Field("minute", 0, 59, {}, 59, 59),
    _Field("hour", 0, 23, {}, 23, 23),
    # H stops at 28, as in Jenkins: a hashed 29-31 would skip short months, and with a month
    # list ("H H H 2 *") make the expression never fire, so a site's name would decide whether
    # its config is valid.
    _Field("day-of-month", 1, 31, {}, 31, 28),
    _Field("month", 1, 12, _MONTH_NAMES, 12, 12),
    # 7 is Sunday too, as in Vixie cron.
    _Field("day-of-week", 0, 7, _DAY_NAMES, 6, 6),
)
_FIELD_TITLES = "minute hour day-of-month month day-of-week"

_HASH_ITEM = re.compile(r"H(?:\((?P<low>[^)]*)-(?P<high>[^)]*)\))?(?:/(?P<step>.*))?")
_PLAIN_ITEM = re.compile(r"(?P<low>\*|[^-/*]+)(?:-(?P<high>[^/]+))?(?:/(?P<step>.*))?")

# A leap year, so that "Feb 29" counts as a day that exists.
_LEAP_YEAR = 2024

_LOOKAHEAD_MIN = timedelta(days=8)
_LOOKAHEAD_MAX = timedelta(days=400)
_LOOKAHEAD_MAX_FIRES = 400
# Zone offsets are read this far around an instant; every real transition is far rarer.
_OFFSET_PROBE = timedelta(days=2)

# Memos of next_fire_time and previous_fire_time per (resolved expression, zone): the instants
# (start, fire) and (fire, limit) of the latest answer computed. Fire times are a fixed set of
# instants per (resolved, zone), so the next one after any instant in [start, fire) is that same
# fire, and the latest one at or before any instant in [fire, limit] too. Schedules sharing an
# expression (and, with H, its hashed values) rescheduled at about the same time compute it
# once. Dicts keep insertion order: when full, the oldest entry goes.
_MEMO_SIZE = 65536
_NEXT_FIRES: dict[tuple[str, ZoneInfo], tuple[datetime, datetime]] = {}
_PREVIOUS_FIRES: dict[tuple[str, ZoneInfo], tuple[datetime, datetime]] = {}


class _FieldError(Exception):
    """A fault in one field; parse_cron adds the expression to the message."""


def parse_cron(expression: str, hash_key: str) -> CronSchedule:
    """Return the validated schedule for ``expression``, resolving ``H`` from ``hash_key``.

    ``hash_key`` is ``"site/schedule"``; the same key always gives the same resolved expression,
    in every process. Raise CronError, whose message contains ``expression``, when the expression
    is not 5 valid fields or a known macro, or can never fire.
    """
    text = expression.strip()
    try:
        fields = _expand_macro(text).split()
        if len(fields) != len(_FIELDS):
            raise _FieldError(_field_count_message(len(fields)))
        resolved = " ".join(
            _resolve_field(value, index, hash_key) for index, value in enumerate(fields)
        )
        problem = _can_fire_problem(resolved)
        if problem is not None:
            raise _FieldError(problem)
    except _FieldError as error:
        raise CronError(f"invalid cron expression {expression!r}: {error}") from None
    return CronSchedule(expression=expression, resolved=resolved)


def next_fire_time(schedule: CronSchedule, after: datetime, tz: ZoneInfo) -> datetime:
    """Return the first fire time strictly after ``after``, as an aware UTC datetime.

    Fire times are wall-clock times in ``tz`` (see the module docstring for DST). Calling again
    with the result never returns the same instant twice. Raise ValueError when ``after`` is naive.
    """
    after_utc = _as_utc(after, "after")
    key = (schedule.resolved, tz)
    known = _NEXT_FIRES.get(key)
    # No fire time lies between a remembered start and the fire time found after it, so the
    # same fire time is the answer for every instant in between (see _NEXT_FIRES).
    if known is not None and known[0] <= after_utc < known[1]:
        return known[1]
    best = _next_fire_time(schedule.resolved, after_utc, tz)
    _remember(_NEXT_FIRES, key, (after_utc, best))
    return best


def _next_fire_time(resolved: str, after_utc: datetime, tz: ZoneInfo) -> datetime:
    offset_low, _ = _offset_bounds(tz, after_utc)
    # A wall time w fires at w - offset(w), so only walls after after_utc + offset can fire later.
    walls = _walls(resolved, _naive(after_utc) + offset_low, forward=True)
    best: datetime | None = None
    stop_wall: datetime | None = None
    for wall in walls:
        instant = _to_utc(wall, tz)
        if instant > after_utc and (best is None or instant < best):
            best = instant
            # A later wall can still land earlier only inside a spring-forward gap: its instant
            # is wall - offset, so past best + (largest offset) no wall can beat best.
            stop_wall = _naive(best) + _offset_bounds(tz, best)[1]
        if stop_wall is not None and wall >= stop_wall:
            break
    assert best is not None  # _walls never ends: parse_cron rejected expressions that never fire
    return best


def previous_fire_time(
    schedule: CronSchedule, at_or_before: datetime, tz: ZoneInfo
) -> datetime | None:
    """Return the latest fire time at or before ``at_or_before`` as an aware UTC datetime.

    Return None when there is none within the 400 days before it. Raise ValueError when
    ``at_or_before`` is naive.
    """
    limit_utc = _as_utc(at_or_before, "at_or_before")
    key = (schedule.resolved, tz)
    known = _PREVIOUS_FIRES.get(key)
    # Likewise, nothing fires after a fire time found and up to the limit it was found for.
    if known is not None and known[0] <= limit_utc <= known[1]:
        return known[0]
    latest = _previous_fire_time(schedule.resolved, limit_utc, tz)
    if latest is not None:
        _remember(_PREVIOUS_FIRES, key, (latest, limit_utc))
    return latest


def _previous_fire_time(resolved: str, limit_utc: datetime, tz: ZoneInfo) -> datetime | None:
    offset_low, offset_high = _offset_bounds(tz, limit_utc)
    earliest_utc = limit_utc - _LOOKAHEAD_MAX
    # Walls up to limit + (largest offset) can fire at or before the limit; croniter's previous
    # is strictly before its start, and fire times are whole minutes, so start one second later.
    start_wall = _naive(limit_utc) + offset_high + timedelta(seconds=1)
    give_up_wall = _naive(earliest_utc) + offset_low
    best: datetime | None = None
    stop_wall: datetime | None = None
    for wall in _walls(resolved, start_wall, forward=False):
        if wall < give_up_wall:
            break
        instant = _to_utc(wall, tz)
        if instant <= limit_utc and (best is None or instant > best):
            best = instant
            stop_wall = _naive(best) + _offset_bounds(tz, best)[0]
        if stop_wall is not None and wall <= stop_wall:
            break
    if best is None or best < earliest_utc:
        return None
    return best


def expected_interval_seconds(schedule: CronSchedule, tz: ZoneInfo, now: datetime) -> float:
    """Return the longest gap, in seconds, between consecutive fire times from ``now``'s local day.

    The look-ahead spans at least 8 days and 2 gaps (so weekly and monthly patterns show), and
    stops at 400 fire times or 400 days, unless fewer than 2 fire times were seen by then. The
    result depends only on (resolved expression, zone, local date of ``now``) and is memoised on
    them, so thousands of schedules sharing an expression cost one computation. Raise ValueError
    when ``now`` is naive.
    """
    local_day = _as_utc(now, "now").astimezone(tz).date()
    return _expected_interval_seconds(_interval_key(schedule.resolved, tz), tz, local_day)


# Zones whose offset never changes: fire instants are wall times less a constant.
_FIXED_ZONE_KEYS = frozenset({"UTC", "Etc/UTC"})


def _interval_key(resolved: str, tz: ZoneInfo) -> str:
    """Return an expression with the same expected interval as ``resolved`` in ``tz``.

    In a zone that never changes its offset, a single-value minute (or hour) field can be moved
    to 0: every fire time moves by the same amount, within its day, so the gaps between them,
    and where the look-ahead stops, stay the same. Schedules spread by H then share one result.
    """
    if getattr(tz, "key", None) not in _FIXED_ZONE_KEYS:
        return resolved
    minute, hour, rest = resolved.split(" ", 2)
    if minute.isascii() and minute.isdecimal():
        minute = "0"
    if hour.isascii() and hour.isdecimal():
        hour = "0"
    return f"{minute} {hour} {rest}"


# --- parsing ---------------------------------------------------------------------------------


def _expand_macro(text: str) -> str:
    if not text:
        raise _FieldError(f"the expression is empty; expected 5 fields ({_FIELD_TITLES})")
    if not text.startswith("@"):
        return text
    macro = text.lower()
    if macro == "@reboot":
        raise _FieldError("@reboot is not supported: schedules fire at times of day only")
    if macro not in _MACROS:
        known = ", ".join(_MACROS)
        raise _FieldError(f"unknown macro {text!r} (known: {known})")
    return _MACROS[macro]


def _field_count_message(count: int) -> str:
    message = f"expected 5 fields ({_FIELD_TITLES}), got {count}"
    if count > len(_FIELDS):
        message += "; seconds and year fields are not supported"
    return message


def _resolve_field(value: str, index: int, hash_key: str) -> str:
    """Return the field with every H item replaced by its hashed value; raise _FieldError."""
    if "H" not in value:  # no H item: the same for every key, checked once per text
        return _plain_field(value, index)
    return _resolve_items(value, index, hash_key)


@lru_cache(maxsize=4096)
def _plain_field(value: str, index: int) -> str:
    return _resolve_items(value, index, "")


def _resolve_items(value: str, index: int, hash_key: str) -> str:
    field = _FIELDS[index]
    resolved_items = []
    for item_index, item in enumerate(value.split(",")):
        if not item:
            raise _FieldError(f"{field.name} {value!r} has an empty list item")
        if item.startswith("H"):
            resolved_items.append(_resolve_hash_item(item, index, item_index, hash_key))
        else:
            _check_plain_item(item, field)
            resolved_items.append(item.lower())
    return ",".join(resolved_items)


def _resolve_hash_item(item: str, field_index: int, item_index: int, hash_key: str) -> str:
    low, high, step = _hash_item_range(item, field_index)
    # The item index keeps two H items of one field apart ("H(0-29),H(30-59)" gives two values).
    digest = hashlib.sha256(f"{hash_key}\0{field_index}\0{item_index}".encode()).digest()
    hashed = int.from_bytes(digest[:8], "big")
    if step is None:
        return str(low + hashed % (high - low + 1))
    start = low + hashed % min(step, high - low + 1)
    return f"{start}-{high}/{step}"


@lru_cache(maxsize=4096)
def _hash_item_range(item: str, field_index: int) -> tuple[int, int, int | None]:
    """Return (low, high, step or None) of an H item; raise _FieldError."""
    field = _FIELDS[field_index]
    match = _HASH_ITEM.fullmatch(item)
    if match is None:
        raise _FieldError(f"{field.name} {item!r} is not H, H(a-b), H/n or H(a-b)/n")
    if match["low"] is None:
        low, high = field.low, field.hash_high
    else:
        low = _number(match["low"], field, item)
        high = _number(match["high"], field, item)
        if low > high:
            raise _FieldError(f"{field.name} {item!r} has its range backwards ({low} > {high})")
    if match["step"] is None:
        return low, high, None
    return low, high, _step(match["step"], field, item)


def _check_plain_item(item: str, field: _Field) -> None:
    match = _PLAIN_ITEM.fullmatch(item)
    if match is None:
        raise _FieldError(f"{field.name} {item!r} cannot be read")
    if match["step"] is not None:
        _step(match["step"], field, item)
    if match["low"] == "*":
        if match["high"] is not None:
            raise _FieldError(f"{field.name} {item!r} cannot be read")
        return
    low = _number(match["low"], field, item)
    if match["high"] is not None:
        high = _number(match["high"], field, item)
        if low > high:
            # croniter would wrap around; Vixie cron refuses, and so do we: say it explicitly.
            raise _FieldError(
                f"{field.name} range {item!r} is backwards ({low} > {high}); "
                f"write it as two ranges: {low}-{field.distinct_high},{field.low}-{high}"
            )


def _number(text: str, field: _Field, item: str) -> int:
    word = text.strip().lower()
    if word.isdecimal() and word.isascii():
        number = int(word)
    elif word in field.names:
        return field.names[word]
    else:
        expected = "a number or a name" if field.names else "a number"
        where = "" if text == item else f" in {item!r}"
        raise _FieldError(f"{field.name} {text!r}{where} is not {expected}")
    if not field.low <= number <= field.high:
        raise _FieldError(
            f"{field.name} {number} is out of range {field.low}-{field.high}"
            + ("" if text == item else f" (in {item!r})")
        )
    return number


def _step(text: str, field: _Field, item: str) -> int:
    span = field.distinct_high - field.low + 1
    if not (text.isdecimal() and text.isascii()) or not 1 <= int(text) <= span:
        raise _FieldError(
            f"{field.name} step {text!r} in {item!r} is not a number from 1 to {span}"
        )
    return int(text)


@lru_cache(maxsize=4096)
def _can_fire_problem(resolved: str) -> str | None:
    """Return why croniter refuses ``resolved`` or it names no existing day, or None."""
    try:
        expanded, _ = croniter.expand(resolved)
    except (ValueError, KeyError) as error:  # croniter's errors are ValueErrors
        return f"croniter refused {resolved!r}: {error}"
    days, months, weekdays = expanded[2], expanded[3], expanded[4]
    # With a restricted day-of-week the days are OR'ed (croniter's default, as Vixie cron), so
    # some day always matches; otherwise the day of month must exist in one of the months.
    if weekdays != ["*"] or days == ["*"]:
        return None
    all_months = range(1, 13) if months == ["*"] else months
    if any(
        day <= calendar.monthrange(_LEAP_YEAR, month)[1] for day in days for month in all_months
    ):
        return None
    return "it never fires: no month listed has that day"


# --- iteration -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _template(resolved: str) -> croniter:
    # Building a croniter costs as much as one step (it re-parses); copies of a parsed one do not.
    return croniter(resolved, datetime(2000, 1, 1), ret_type=datetime)  # noqa: DTZ001 # naive wall time on purpose


def _walls(resolved: str, start_wall: datetime, *, forward: bool) -> Iterator[datetime]:
    """Yield matching naive wall times strictly after (or before) ``start_wall``, in order."""
    iterator = copy.copy(_template(resolved))
    iterator.set_current(start_wall, force=True)
    step = iterator.get_next if forward else iterator.get_prev
    while True:
        wall: datetime = step(datetime)
        yield wall


def _remember(
    memo: dict[tuple[str, ZoneInfo], tuple[datetime, datetime]],
    key: tuple[str, ZoneInfo],
    span: tuple[datetime, datetime],
) -> None:
    memo.pop(key, None)
    if len(memo) >= _MEMO_SIZE:
        # Another thread may change the memo meanwhile: then this eviction can wait.
        with contextlib.suppress(StopIteration, KeyError, RuntimeError):
            del memo[next(iter(memo))]
    memo[key] = span


def _as_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _naive(instant_utc: datetime) -> datetime:
    return instant_utc.replace(tzinfo=None)


def _to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a skipped time uses the offset before the gap (02:30 → 03:30), a repeated time its
    # first occurrence.
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _offset_bounds(tz: ZoneInfo, instant_utc: datetime) -> tuple[timedelta, timedelta]:
    """Return the smallest and largest UTC offset of ``tz`` within a few days of the instant."""
    offsets = [
        _utc_offset(tz, instant_utc + delta)
        for delta in (-_OFFSET_PROBE, timedelta(0), _OFFSET_PROBE)
    ]
    return min(offsets), max(offsets)


def _utc_offset(tz: ZoneInfo, instant_utc: datetime) -> timedelta:
    offset = instant_utc.astimezone(tz).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


@lru_cache(maxsize=65536)
def _expected_interval_seconds(resolved: str, tz: ZoneInfo, local_day: date) -> float:
    start_wall = datetime.combine(local_day, datetime.min.time()) - timedelta(seconds=1)
    instants: list[datetime] = []
    first_wall: datetime | None = None
    for wall in _walls(resolved, start_wall, forward=True):
        instants.append(_to_utc(wall, tz))
        if first_wall is None:
            first_wall = wall
        span = wall - first_wall
        if len(instants) >= _LOOKAHEAD_MAX_FIRES:
            break
        if len(instants) >= 2 and span >= _LOOKAHEAD_MAX:
            break
        if len(instants) >= 3 and span >= _LOOKAHEAD_MIN:
            break
    # Two walls can share an instant (02:30 in a gap and 03:30), and a gap wall may land after
    # the next one: sort and drop repeats so the gaps are between distinct fire times.
    ordered = sorted(set(instants))
    if len(ordered) < 2:  # only when every wall landed on one instant; cannot really happen
        return _LOOKAHEAD_MAX.total_seconds()
    return max((later - earlier).total_seconds() for earlier, later in itertools.pairwise(ordered))
