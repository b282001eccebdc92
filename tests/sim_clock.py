"""A manual fake clock for interleaving tests: sleepers wait until the test moves time on.

Unlike ``FakeClock`` (autojump: every sleep returns at once), :class:`SteppingClock` parks each
``sleep`` on a future; :meth:`run_for` then advances time from one sleeper's deadline to the
next, waking them in order and letting the event loop settle in between. So several concurrent
runs and the scheduler share one consistent timeline, and a simulated week takes milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

START = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)  # a Monday
SETTLE_ROUNDS = 30


class SteppingClock:
    """Clock whose time moves only in :meth:`run_for` and :meth:`jump`."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._monotonic = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        """Return the fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        """Park until :meth:`run_for` reaches ``seconds`` from now (0 or less: yield once)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._monotonic + seconds, next(self._seq), future))
        await future

    def jump(self, seconds: float) -> None:
        """Move the wall clock only (the machine slept, or NTP stepped it); wake no one."""
        self._now += timedelta(seconds=seconds)

    async def settle(self) -> None:
        """Let every ready task run until the loop is quiet."""
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def run_for(self, seconds: float) -> None:
        """Advance time by ``seconds``, waking each sleeper at its deadline, in order."""
        end = self._monotonic + seconds
        while True:
            await self.settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleeps
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            deadline, _, future = heapq.heappop(self._sleepers)
            self._advance_to(deadline)
            future.set_result(None)
        self._advance_to(end)
        await self.settle()

    def _advance_to(self, monotonic: float) -> None:
        if monotonic > self._monotonic:
            self._now += timedelta(seconds=monotonic - self._monotonic)
            self._monotonic = monotonic
