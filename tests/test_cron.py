"""Cron maths: fire times across month ends, weekdays and DST; H spreading; errors; intervals."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from akeeba_backupd.cron import (
    CronError,
    expected_interval_seconds,
    next_fire_time,
    parse_cron,
    previous_fire_time,
)

UTC_ZONE = ZoneInfo("UTC")
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NEW_YORK = ZoneInfo("America/New_York")
KEY = "example-org/nightly"
DAY = 86400.0


def at(text: str) -> datetime:
    """Return the aware datetime written as ISO 8601 with its offset (Z for UTC)."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text
    return moment


# (expression, zone, after, expected next fire time); times carry the local offset, so a DST
# case reads as the wall clock it is about.
NEXT_CASES = [
    # plain
    ("0 9 * * *", UTC_ZONE, "2024-01-01T08:59:00Z", "2024-01-01T09:00:00Z"),
    ("0 9 * * *", UTC_ZONE, "2024-01-01T09:00:00Z", "2024-01-02T09:00:00Z"),
    ("0 9 * * *", UTC_ZONE, "2024-01-01T09:00:00.500000Z", "2024-01-02T09:00:00Z"),
    ("0 9 * * *", UTC_ZONE, "2024-01-01T08:59:59.999999Z", "2024-01-01T09:00:00Z"),
    ("5,35 * * * *", UTC_ZONE, "2024-01-01T10:35:00Z", "2024-01-01T11:05:00Z"),
    ("0 0 * * *", UTC_ZONE, "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z"),
    ("30 2 * * *", AMSTERDAM, "2024-01-15T12:00:00+01:00", "2024-01-16T02:30:00+01:00"),
    ("30 2 * * *", NEW_YORK, "2024-07-01T03:00:00-04:00", "2024-07-02T02:30:00-04:00"),
    # the zone of `after` does not matter, only the instant
    ("0 9 * * *", UTC_ZONE, "2024-01-01T10:59:00+02:00", "2024-01-01T09:00:00Z"),
    # month ends
    ("0 0 31 * *", UTC_ZONE, "2024-04-01T00:00:00Z", "2024-05-31T00:00:00Z"),
    ("0 0 31 * *", UTC_ZONE, "2024-01-31T00:00:00Z", "2024-03-31T00:00:00Z"),
    ("0 0 30 * *", UTC_ZONE, "2024-01-30T00:00:00Z", "2024-03-30T00:00:00Z"),
    ("0 0 1 * *", UTC_ZONE, "2024-01-31T12:00:00Z", "2024-02-01T00:00:00Z"),
    ("0 0 29 2 *", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-02-29T00:00:00Z"),
    ("0 0 29 2 *", UTC_ZONE, "2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z"),
    ("0 0 29 2 *", UTC_ZONE, "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
    ("0 0 29 2 *", UTC_ZONE, "2099-03-01T00:00:00Z", "2104-02-29T00:00:00Z"),  # 2100: no
    ("0 12 28-31 2 *", UTC_ZONE, "2023-02-28T12:00:00Z", "2024-02-28T12:00:00Z"),
    ("0 12 28-31 2 *", UTC_ZONE, "2024-02-28T12:00:00Z", "2024-02-29T12:00:00Z"),
    # weekday names and ranges (2024-01-01 is a Monday)
    ("0 9 * * mon", UTC_ZONE, "2024-01-03T00:00:00Z", "2024-01-08T09:00:00Z"),
    ("0 9 * * MON-FRI", UTC_ZONE, "2024-01-05T09:00:00Z", "2024-01-08T09:00:00Z"),
    ("0 9 * * mon-fri", UTC_ZONE, "2024-01-02T09:00:00Z", "2024-01-03T09:00:00Z"),
    ("0 9 * * sat,sun", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-01-06T09:00:00Z"),
    ("0 9 * * 0", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-01-07T09:00:00Z"),
    ("0 9 * * 7", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-01-07T09:00:00Z"),
    ("0 9 * * 5-7", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-01-05T09:00:00Z"),
    ("0 0 1 jul *", UTC_ZONE, "2024-07-01T00:00:00Z", "2025-07-01T00:00:00Z"),
    ("0 0 * Feb Sun", UTC_ZONE, "2024-01-01T00:00:00Z", "2024-02-04T00:00:00Z"),
    # day-of-month and day-of-week both set: either matches (Vixie cron)
    ("0 0 13 * fri", UTC_ZONE, "2024-09-01T00:00:00Z", "2024-09-06T00:00:00Z"),
    ("0 0 13 * fri", UTC_ZONE, "2024-10-11T00:00:00Z", "2024-10-13T00:00:00Z"),
    # steps
    ("*/15 * * * *", UTC_ZONE, "2024-01-01T10:07:00Z", "2024-01-01T10:15:00Z"),
    ("0 */6 * * *", UTC_ZONE, "2024-01-01T18:00:00Z", "2024-01-02T00:00:00Z"),
    ("10-50/20 * * * *", UTC_ZONE, "2024-01-01T10:50:00Z", "2024-01-01T11:10:00Z"),
    ("0 0 */10 * *", UTC_ZONE, "2024-01-21T00:00:00Z", "2024-01-31T00:00:00Z"),
    ("0 0 */10 * *", UTC_ZONE, "2024-01-31T00:00:00Z", "2024-02-01T00:00:00Z"),
    # Amsterdam spring forward, 2024-03-31 02:00 → 03:00: 02:xx fires as far into 03:xx
    ("30 2 * * *", AMSTERDAM, "2024-03-30T12:00:00+01:00", "2024-03-31T03:30:00+02:00"),
    ("0 2 * * *", AMSTERDAM, "2024-03-30T12:00:00+01:00", "2024-03-31T03:00:00+02:00"),
    ("30 2 * * *", AMSTERDAM, "2024-03-31T03:30:00+02:00", "2024-04-01T02:30:00+02:00"),
    ("30 * * * *", AMSTERDAM, "2024-03-31T01:30:00+01:00", "2024-03-31T03:30:00+02:00"),
    # ...and 03:30 does not fire a second time for the 02:30 that became it
    ("30 * * * *", AMSTERDAM, "2024-03-31T03:30:00+02:00", "2024-03-31T04:30:00+02:00"),
    # Amsterdam fall back, 2024-10-27 03:00 → 02:00: the repeated hour fires once, first time
    ("30 2 * * *", AMSTERDAM, "2024-10-26T12:00:00+02:00", "2024-10-27T02:30:00+02:00"),
    ("30 2 * * *", AMSTERDAM, "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"),
    ("30 * * * *", AMSTERDAM, "2024-10-27T02:30:00+02:00", "2024-10-27T03:30:00+01:00"),
    ("0 12 * * *", AMSTERDAM, "2024-10-26T12:00:00+02:00", "2024-10-27T12:00:00+01:00"),
    # New York spring forward, 2024-03-10 02:00 → 03:00
    ("30 2 * * *", NEW_YORK, "2024-03-09T12:00:00-05:00", "2024-03-10T03:30:00-04:00"),
    ("0 9 * * 1-5", NEW_YORK, "2024-03-08T09:00:00-05:00", "2024-03-11T09:00:00-04:00"),
    # New York fall back, 2024-11-03 02:00 → 01:00
    ("30 1 * * *", NEW_YORK, "2024-11-02T12:00:00-04:00", "2024-11-03T01:30:00-04:00"),
    ("30 1 * * *", NEW_YORK, "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"),
    ("*/20 1 * * *", NEW_YORK, "2024-11-03T01:40:00-04:00", "2024-11-04T01:00:00-05:00"),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), NEXT_CASES)
def test_next_fire_time(expression: str, zone: ZoneInfo, after: str, expected: str) -> None:
    """next_fire_time returns the first wall-clock match strictly after the instant, in UTC."""
    fire = next_fire_time(parse_cron(expression, KEY), at(after), zone)
    assert fire == at(expected)
    assert fire.tzinfo is UTC


# (expression, zone, at_or_before, expected previous fire time or None)
PREVIOUS_CASES = [
    ("0 9 * * *", UTC_ZONE, "2024-01-02T09:00:00Z", "2024-01-02T09:00:00Z"),
    ("0 9 * * *", UTC_ZONE, "2024-01-02T09:00:00.500000Z", "2024-01-02T09:00:00Z"),
    ("0 9 * * *", UTC_ZONE, "2024-01-02T08:59:59.999999Z", "2024-01-01T09:00:00Z"),
    ("0 0 * * *", UTC_ZONE, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
    ("59 23 * * *", UTC_ZONE, "2025-01-01T00:00:00Z", "2024-12-31T23:59:00Z"),
    ("0 9 * * MON-FRI", UTC_ZONE, "2024-01-08T08:00:00Z", "2024-01-05T09:00:00Z"),
    ("0 9 * * sun", UTC_ZONE, "2024-01-13T00:00:00Z", "2024-01-07T09:00:00Z"),
    ("0 0 31 * *", UTC_ZONE, "2024-05-01T00:00:00Z", "2024-03-31T00:00:00Z"),
    ("0 0 29 2 *", UTC_ZONE, "2024-12-31T00:00:00Z", "2024-02-29T00:00:00Z"),
    # none within the 400 days looked back
    ("0 0 29 2 *", UTC_ZONE, "2027-01-01T00:00:00Z", None),
    ("*/15 * * * *", UTC_ZONE, "2024-01-01T10:14:59Z", "2024-01-01T10:00:00Z"),
    # Amsterdam spring forward: 02:30 fired at 03:30
    ("30 2 * * *", AMSTERDAM, "2024-03-31T04:00:00+02:00", "2024-03-31T03:30:00+02:00"),
    ("30 2 * * *", AMSTERDAM, "2024-03-31T03:29:00+02:00", "2024-03-30T02:30:00+01:00"),
    # Amsterdam fall back: the latest fire is the first 02:30, not the repeated one
    ("30 2 * * *", AMSTERDAM, "2024-10-27T02:59:00+01:00", "2024-10-27T02:30:00+02:00"),
    ("30 * * * *", AMSTERDAM, "2024-10-27T03:00:00+01:00", "2024-10-27T02:30:00+02:00"),
    # New York both ways
    ("30 2 * * *", NEW_YORK, "2024-03-10T03:45:00-04:00", "2024-03-10T03:30:00-04:00"),
    ("30 1 * * *", NEW_YORK, "2024-11-03T01:45:00-05:00", "2024-11-03T01:30:00-04:00"),
]


@pytest.mark.parametrize(("expression", "zone", "at_or_before", "expected"), PREVIOUS_CASES)
def test_previous_fire_time(
    expression: str, zone: ZoneInfo, at_or_before: str, expected: str | None
) -> None:
    """previous_fire_time returns the latest fire at or before the instant (None past 400 days)."""
    fire = previous_fire_time(parse_cron(expression, KEY), at(at_or_before), zone)
    if expected is None:
        assert fire is None
    else:
        assert fire == at(expected)
        assert fire.tzinfo is UTC


def test_fall_back_hour_fires_once_over_the_whole_night() -> None:
    """Walking an hourly schedule through the fall-back night gives each wall time once."""
    schedule = parse_cron("30 * * * *", KEY)
    moment = at("2024-10-26T23:00:00+02:00")
    fires = []
    for _ in range(6):
        moment = next_fire_time(schedule, moment, AMSTERDAM)
        fires.append(moment.astimezone(AMSTERDAM).strftime("%H:%M%z"))
    assert fires == [
        "23:30+0200",
        "00:30+0200",
        "01:30+0200",
        "02:30+0200",
        "03:30+0100",
        "04:30+0100",
    ]


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@hourly", "H * * * *"),
        ("@daily", "H H * * *"),
        ("@midnight", "H H(0-2) * * *"),
        ("@weekly", "H H * * H"),
        ("@monthly", "H H H(1-28) * *"),
        ("@yearly", "H H H(1-28) H *"),
        ("@annually", "H H H(1-28) H *"),
        ("@DAILY", "H H * * *"),
    ],
)
def test_macro_is_its_hashed_expression(macro: str, equivalent: str) -> None:
    """A macro resolves exactly as the H expression it stands for, under the same key."""
    schedule = parse_cron(macro, KEY)
    assert schedule.expression == macro
    assert schedule.resolved == parse_cron(equivalent, KEY).resolved


def test_macro_fire_times() -> None:
    """@hourly fires once an hour and @weekly once a week, both at their hashed minute."""
    hourly = parse_cron("@hourly", KEY)
    first = next_fire_time(hourly, at("2024-01-01T00:00:00Z"), UTC_ZONE)
    second = next_fire_time(hourly, first, UTC_ZONE)
    assert second - first == timedelta(hours=1)
    assert first.minute == int(hourly.resolved.split()[0])
    weekly = parse_cron("@weekly", KEY)
    first = next_fire_time(weekly, at("2024-01-01T00:00:00Z"), UTC_ZONE)
    assert next_fire_time(weekly, first, UTC_ZONE) - first == timedelta(days=7)


# --- H ------------------------------------------------------------------------------------------


def test_hash_has_a_fixed_value_for_a_key() -> None:
    """H resolves to these exact values for this key: a change in the hashing breaks this test."""
    assert parse_cron("H 2 * * *", KEY).resolved == "6 2 * * *"
    assert parse_cron("@daily", KEY).resolved == "6 10 * * *"
    assert parse_cron("H H H * *", "a/b").resolved == "4 14 11 * *"
    assert parse_cron("H/15 * * * *", KEY).resolved == "6-59/15 * * * *"


def test_hash_is_stable_across_calls_and_processes() -> None:
    """The same key resolves the same in another process with another PYTHONHASHSEED."""
    expressions = ["H 2 * * *", "@weekly", "H(0-29)/10 H(1-5) * * *"]
    here = [parse_cron(expression, KEY).resolved for expression in expressions]
    assert here == [parse_cron(expression, KEY).resolved for expression in expressions]
    code = (
        "from akeeba_backupd.cron import parse_cron\n"
        f"for e in {expressions!r}: print(parse_cron(e, {KEY!r}).resolved)\n"
    )
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.stdout.splitlines() == here


def test_hash_depends_on_the_key() -> None:
    """Two schedules of one site with the same expression get their own H values."""
    resolved = {parse_cron("H H * * *", f"example-org/{name}").resolved for name in "abcdefgh"}
    assert len(resolved) > 1


def test_hash_spreads_500_sites_over_the_hour() -> None:
    """500 sites with 'H 2 * * *' land on nearly every minute of the hour, none crowded."""
    minutes = Counter(
        int(parse_cron("H 2 * * *", f"site-{number}/nightly").resolved.split()[0])
        for number in range(500)
    )
    assert len(minutes) >= 55
    assert max(minutes.values()) <= 20  # 8.3 a minute on average
    assert all(0 <= minute <= 59 for minute in minutes)


def test_hash_range_stays_in_range_and_covers_it() -> None:
    """H(0-29) picks within 0-29 only, and 500 keys reach most of it."""
    minutes = {
        int(parse_cron("H(0-29) * * * *", f"site-{number}/x").resolved.split()[0])
        for number in range(500)
    }
    assert minutes <= set(range(30))
    assert len(minutes) >= 25
    hours = {
        int(parse_cron("0 H(22-23) * * *", f"site-{number}/x").resolved.split()[1])
        for number in range(50)
    }
    assert hours == {22, 23}


def test_hash_day_of_month_exists_in_every_month() -> None:
    """A bare H day of month is 1-28, so 'H H H 2 *' is valid and fires every year for any key."""
    days = set()
    for number in range(500):
        schedule = parse_cron("H H H 2 *", f"site-{number}/x")
        days.add(int(schedule.resolved.split()[2]))
        fire = next_fire_time(schedule, at("2025-01-01T00:00:00Z"), UTC_ZONE)
        assert fire.month == 2
        assert fire.year == 2025
    assert days <= set(range(1, 29))
    assert len(days) >= 25


def test_hash_day_of_week_is_0_to_6() -> None:
    """A bare H weekday is 0-6: 7 would be Sunday twice as often."""
    weekdays = {
        int(parse_cron("0 0 * * H", f"site-{number}/x").resolved.split()[4])
        for number in range(200)
    }
    assert weekdays == set(range(7))


def test_hash_step_fires_every_step_from_a_hashed_start() -> None:
    """H/15 fires every 15 minutes from a start in 0-14 that differs between keys."""
    starts = set()
    for number in range(100):
        schedule = parse_cron("H/15 * * * *", f"site-{number}/x")
        fire = next_fire_time(schedule, at("2023-12-31T23:59:59Z"), UTC_ZONE)
        starts.add(fire.minute)
        following = [fire]
        for _ in range(4):
            following.append(next_fire_time(schedule, following[-1], UTC_ZONE))
        assert {later - earlier for earlier, later in itertools.pairwise(following)} == {
            timedelta(minutes=15)
        }
    assert starts <= set(range(15))
    assert len(starts) >= 12


def test_hash_items_in_one_field_are_separate() -> None:
    """'H(0-29),H(30-59)' gives one minute in each half hour."""
    for number in range(50):
        first, second = (
            parse_cron("H(0-29),H(30-59) * * * *", f"site-{number}/x")
            .resolved.split()[0]
            .split(",")
        )
        assert 0 <= int(first) <= 29
        assert 30 <= int(second) <= 59


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fault"),
    [
        ("H 25 * * *", "hour 25 is out of range 0-23"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("* * * * * *", "expected 5 fields"),
        ("* * * * * *", "got 6; seconds and year fields are not supported"),
        ("* * * *", "got 4"),
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("@reboot", "@reboot is not supported"),
        ("@fortnightly", "unknown macro '@fortnightly'"),
        ("5-1 * * * *", "minute range '5-1' is backwards (5 > 1)"),
        ("0 0 * * fri-mon", "write it as two ranges: 5-6,0-1"),
        ("*/0 * * * *", "minute step '0' in '*/0' is not a number from 1 to 60"),
        ("0 0 */32 * *", "not a number from 1 to 31"),
        ("0 0 30 2 *", "it never fires"),
        ("0 0 31 4,6,9,11 *", "it never fires"),
        ("0 0 * foo *", "month 'foo' is not a number or a name"),
        ("0 0 * * mon-foo", "day-of-week 'foo' in 'mon-foo' is not a number or a name"),
        ("0 mon * * *", "hour 'mon' is not a number"),
        ("0 0 L * *", "day-of-month 'L' is not a number"),
        ("0 0 ,1 * *", "day-of-month ',1' has an empty list item"),
        ("H(5-1) * * * *", "minute 'H(5-1)' has its range backwards (5 > 1)"),
        ("H(0-99) * * * *", "minute 99 is out of range 0-59"),
        ("Hx * * * *", "is not H, H(a-b), H/n or H(a-b)/n"),
        ("h * * * *", "minute 'h' is not a number"),
        ("0 -1 * * *", "hour '-1' cannot be read"),
    ],
)
def test_invalid_expression(expression: str, fault: str) -> None:
    """An unusable expression raises CronError naming the expression and the fault."""
    with pytest.raises(CronError) as caught:
        parse_cron(expression, KEY)
    message = str(caught.value)
    assert f"invalid cron expression {expression!r}" in message
    assert fault in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: next_fire_time(s, datetime(2024, 1, 1), UTC_ZONE),  # noqa: DTZ001 # the point
        lambda s: previous_fire_time(s, datetime(2024, 1, 1), UTC_ZONE),  # noqa: DTZ001 # the point
        lambda s: expected_interval_seconds(s, UTC_ZONE, datetime(2024, 1, 1)),  # noqa: DTZ001 # the point
    ],
)
def test_naive_datetime_is_refused(call) -> None:
    """A naive datetime raises ValueError instead of being read in some zone."""
    with pytest.raises(ValueError, match="aware datetime"):
        call(parse_cron("0 9 * * *", KEY))


# --- expected interval --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "zone", "now", "seconds"),
    [
        ("0 * * * *", UTC_ZONE, "2024-01-01T00:00:00Z", 3600),
        ("*/15 * * * *", UTC_ZONE, "2024-01-01T00:00:00Z", 900),
        ("0 9 * * *", UTC_ZONE, "2024-01-01T00:00:00Z", DAY),
        ("0 9 * * 1", UTC_ZONE, "2024-01-03T00:00:00Z", 7 * DAY),
        ("0 9 * * 1-5", UTC_ZONE, "2024-01-03T00:00:00Z", 3 * DAY),  # the weekend
        ("0 9 * * 1-5", UTC_ZONE, "2024-01-06T00:00:00Z", 3 * DAY),
        ("0 9,17 * * *", UTC_ZONE, "2024-01-01T00:00:00Z", 16 * 3600),
        ("0 0 1 * *", UTC_ZONE, "2024-02-01T00:00:00Z", 31 * DAY),
        ("0 0 1 * *", UTC_ZONE, "2024-04-01T00:00:00Z", 31 * DAY),
        ("0 0 29 2 *", UTC_ZONE, "2024-01-01T00:00:00Z", 1461 * DAY),
        # DST: the 25-hour day is the longest gap; the 23-hour day is not
        ("0 12 * * *", AMSTERDAM, "2024-10-26T00:00:00Z", 25 * 3600),
        ("0 12 * * *", AMSTERDAM, "2024-03-30T00:00:00Z", DAY),
        ("0 12 * * *", NEW_YORK, "2024-11-02T12:00:00Z", 25 * 3600),
        ("30 2 * * *", AMSTERDAM, "2024-03-30T00:00:00Z", DAY),
        # the repeated 02:30 does not fire, so the fall-back night has a 2-hour gap
        ("30 * * * *", AMSTERDAM, "2024-10-27T00:00:00Z", 2 * 3600),
        ("30 * * * *", AMSTERDAM, "2024-03-31T00:00:00Z", 3600),
    ],
)
def test_expected_interval_seconds(
    expression: str, zone: ZoneInfo, now: str, seconds: float
) -> None:
    """The expected interval is the longest gap between fire times looking ahead from now."""
    assert expected_interval_seconds(parse_cron(expression, KEY), zone, at(now)) == seconds


# --- randomized ---------------------------------------------------------------------------------


def _field(values: range, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    single = st.sampled_from([*map(str, values), *names])
    ranged = st.tuples(st.sampled_from(values), st.sampled_from(values)).map(
        lambda pair: f"{min(pair)}-{max(pair)}"
    )
    stepped = st.tuples(
        st.sampled_from(["*", *(f"{v}-{values[-1]}" for v in values)]), st.integers(1, 12)
    ).map(lambda pair: f"{pair[0]}/{pair[1]}")
    item = st.one_of(single, ranged, stepped)
    return st.one_of(
        st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join), st.just("H")
    )


EXPRESSIONS = st.tuples(
    _field(range(60)),
    _field(range(24)),
    _field(range(1, 32)),
    _field(range(1, 13), ("jan", "jun", "dec")),
    _field(range(8), ("mon", "fri", "sun")),
).map(" ".join)
INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 # hypothesis bounds are naive; timezones= makes them aware
    max_value=datetime(2037, 12, 31),  # noqa: DTZ001 # as above
    timezones=st.just(UTC),
)
ZONES = st.sampled_from([UTC_ZONE, AMSTERDAM, NEW_YORK, ZoneInfo("Australia/Lord_Howe")])


@settings(deadline=None, max_examples=200)
@given(expression=EXPRESSIONS, key=st.text(min_size=1, max_size=20), zone=ZONES, moment=INSTANTS)
def test_next_and_previous_agree(
    expression: str, key: str, zone: ZoneInfo, moment: datetime
) -> None:
    """next is strictly later, previous of next is next itself, and nothing fires in between."""
    try:
        schedule = parse_cron(expression, key)
    except CronError:
        reject()  # generated fields can combine into an expression that never fires
    fire = next_fire_time(schedule, moment, zone)
    assert fire > moment
    assert fire.second == 0
    assert previous_fire_time(schedule, fire, zone) == fire
    before = previous_fire_time(schedule, fire - timedelta(microseconds=1), zone)
    assert before is None or before <= moment
    if before is not None:
        assert next_fire_time(schedule, before, zone) == fire


# --- memoised answers are the computed ones -------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(
    expression=EXPRESSIONS,
    key=st.text(min_size=1, max_size=20),
    zone=ZONES,
    moment=INSTANTS,
    offsets=st.lists(st.integers(-3 * 86400, 40 * 86400), min_size=1, max_size=6),
)
def test_memoised_fire_times_equal_computed_ones(
    expression: str, key: str, zone: ZoneInfo, moment: datetime, offsets: list[int]
) -> None:
    """next/previous_fire_time answer from their memo for instants near an earlier question:
    always exactly what the computation itself gives."""
    from akeeba_backupd import cron

    try:
        schedule = parse_cron(expression, key)
    except CronError:
        reject()
    for offset in offsets:
        instant = moment + timedelta(seconds=offset)
        fire = next_fire_time(schedule, instant, zone)
        assert fire == cron._next_fire_time(schedule.resolved, instant, zone)
        assert fire.tzinfo is UTC
        # The instants in between, and the fire time itself, hit the memo.
        for probe in (instant + (fire - instant) / 2, fire - timedelta(microseconds=1), fire):
            assert next_fire_time(schedule, probe, zone) == cron._next_fire_time(
                schedule.resolved, probe, zone
            )
        latest = previous_fire_time(schedule, instant, zone)
        assert latest == cron._previous_fire_time(schedule.resolved, instant, zone)
        if latest is not None:
            for probe in (latest, latest + (instant - latest) / 2, instant):
                assert previous_fire_time(schedule, probe, zone) == cron._previous_fire_time(
                    schedule.resolved, probe, zone
                )


def test_memoised_fire_times_walk_a_fleet_sharing_an_expression() -> None:
    """Schedules sharing a resolved expression, rescheduled moments apart, get the same fires;
    the memo is per zone."""
    schedule = parse_cron("30 2 * * *", KEY)
    now = at("2024-03-30T12:00:00Z")
    fires = {next_fire_time(schedule, now + timedelta(seconds=n), AMSTERDAM) for n in range(50)}
    assert fires == {at("2024-03-31T03:30:00+02:00")}
    assert next_fire_time(schedule, now, NEW_YORK) == at("2024-03-31T02:30:00-04:00")
    assert next_fire_time(schedule, now, AMSTERDAM) == at("2024-03-31T03:30:00+02:00")
    # Right at and after the fire time the next one is a day later (23 h of the short day).
    fire = at("2024-03-31T03:30:00+02:00")
    assert next_fire_time(schedule, fire, AMSTERDAM) == at("2024-04-01T02:30:00+02:00")
    assert previous_fire_time(schedule, fire, AMSTERDAM) == fire
    assert previous_fire_time(schedule, fire - timedelta(microseconds=1), AMSTERDAM) == at(
        "2024-03-30T02:30:00+01:00"
    )


SINGLE_MINUTE_HOUR_EXPRESSIONS = st.tuples(
    st.integers(0, 59).map(str) | _field(range(60)),
    st.integers(0, 23).map(str) | _field(range(24)),
    _field(range(1, 32)),
    _field(range(1, 13), ("jan", "jun", "dec")),
    _field(range(8), ("mon", "fri", "sun")),
).map(" ".join)


@settings(deadline=None, max_examples=200)
@given(
    expression=SINGLE_MINUTE_HOUR_EXPRESSIONS,
    key=st.text(min_size=1, max_size=20),
    moment=INSTANTS,
)
def test_expected_interval_in_utc_is_shared_across_times_of_day(
    expression: str, key: str, moment: datetime
) -> None:
    """In UTC a single minute or hour is moved to 0 before the memoised computation: the result
    is exactly the one computed for the expression itself."""
    from akeeba_backupd import cron

    try:
        schedule = parse_cron(expression, key)
    except CronError:
        reject()
    computed = cron._expected_interval_seconds.__wrapped__(
        schedule.resolved, UTC_ZONE, moment.date()
    )
    assert expected_interval_seconds(schedule, UTC_ZONE, moment) == computed


def test_expected_interval_is_not_shared_across_times_of_day_in_zones_with_dst() -> None:
    """Outside UTC the time of day matters: 02:30 falls in Amsterdam's spring-forward gap."""
    now = at("2024-03-30T00:00:00Z")
    assert expected_interval_seconds(parse_cron("30 2 * * *", KEY), AMSTERDAM, now) == DAY
    assert expected_interval_seconds(parse_cron("30 12 * * *", KEY), AMSTERDAM, now) == DAY
    assert expected_interval_seconds(parse_cron("30 * * * *", AMSTERDAM.key), AMSTERDAM, now) == (
        3600
    )


def test_parse_cron_gives_the_same_answers_from_its_caches() -> None:
    """Fields, H items and fire checks are cached by text: repeating a parse gives the same
    schedule or the same error, and H still depends on the key."""
    for _ in range(3):
        assert (
            parse_cron("H 2 * * 1-5", "a/b").resolved == parse_cron("H 2 * * 1-5", "a/b").resolved
        )
        with pytest.raises(CronError, match="it never fires"):
            parse_cron("0 0 31 2 *", KEY)
        with pytest.raises(CronError, match=r"minute 'H\(5-1\)' has its range backwards"):
            parse_cron("H(5-1) * * * *", KEY)
        with pytest.raises(CronError, match="hour 24 is out of range 0-23"):
            parse_cron("0 24 * * *", KEY)
    resolved = {parse_cron("H H * * *", f"site-{n}/s").resolved for n in range(100)}
    assert len(resolved) > 50
    assert parse_cron("0 9 * * MON", KEY).resolved == "0 9 * * mon"
