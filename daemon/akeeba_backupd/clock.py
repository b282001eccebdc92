"""Time, injected: the only module that reads the wall clock, the monotonic clock or sleeps.

Everything that schedules or measures takes a :class:`Clock`, so tests can run a simulated week
in milliseconds with a fake one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What the daemon needs to know about time."""

    def now(self) -> datetime:
        """Return the current wall-clock time as an aware UTC datetime (for cron decisions)."""
        ...

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes back (for durations and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` (0 or less yields once to the loop)."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)``, ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep with ``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))
