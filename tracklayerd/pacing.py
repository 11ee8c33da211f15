"""How the processor shares the event loop with ingest.

Acceptance comes first: an event is safe once its inbox row is committed, and a sender
waiting for that commit is what ingest latency is. Processing can wait, since the inbox is
durable and a backlog only delays deliveries. So while senders are waiting for commits the
processor keeps a share of the loop's time: MIN_SHARE while it is less than LAG_LOW_SECS
behind (the age of the record it is on), growing linearly to MAX_SHARE at LAG_HIGH_SECS,
so a burst is absorbed at nearly the full ingest rate and a sustained overload does not
starve deliveries (ingest keeps at least half). A pause during which the process is mostly
idle ends early. With no sender waiting the processor takes all the time there is, giving
the loop a turn every CHUNK_SECS of work.

The pauses only hold the processor back while ingest alone keeps the process at
IDLE_BELOW of a core or more: the CPU is overloaded, and the question is only who waits.
A sender waits with a connection open and may give up; a record in the inbox is already
safe, and ad platforms take conversions hours or days old. So the floor is small: a 10 %
floor cost ingest ~18 % of its rate (the processor's reads and commits come on top of its
paced work), 2 % costs ~5 % (paired runs, single events at 64 connections).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MIN_SHARE = 0.02
MAX_SHARE = 0.5
LAG_LOW_SECS = 10.0
LAG_HIGH_SECS = 120.0
# Work between two turns of the event loop: a request arriving meanwhile waits this long.
CHUNK_SECS = 0.002
# Senders seen waiting this recently still count: between two group commits nobody waits
# for a moment, and that moment says nothing about the load.
CONTENDED_MEMORY_SECS = 0.5
# Senders also wait for commits when the CPU is not the limit (a few connections, each
# waiting for its fsync). A pause is therefore taken in steps, and after a step in which
# the process used less than IDLE_BELOW of a core it ends: the time would otherwise be lost,
# and the processor would fall behind a load the machine can carry. (Each step is a timer
# and a wake-up: at a 2 % share a pause is ~100 ms, 25 steps.)
PAUSE_STEP_SECS = 0.004
IDLE_BELOW = 0.8


def share_for(lag_secs: float) -> float:
    """The processor's share of the loop while senders wait, `lag_secs` behind."""
    if lag_secs <= LAG_LOW_SECS:
        return MIN_SHARE
    if lag_secs >= LAG_HIGH_SECS:
        return MAX_SHARE
    progress = (lag_secs - LAG_LOW_SECS) / (LAG_HIGH_SECS - LAG_LOW_SECS)
    return MIN_SHARE + progress * (MAX_SHARE - MIN_SHARE)


class Pacer:
    """Gives the event loop a turn after every CHUNK_SECS of the processor's work, and
    while contended (`waiting()`: senders are waiting for a commit, now or within
    CONTENDED_MEMORY_SECS) pauses long enough to keep the processor to its share: after
    `w` seconds of work, `w * (1 - share) / share`."""

    def __init__(
        self,
        waiting: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        *,
        chunk_secs: float = CHUNK_SECS,
        timer: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.process_time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._waiting = waiting
        self._last_waiting = float("-inf")
        self._clock = clock
        self._chunk = chunk_secs
        self._timer = timer
        self._cpu = cpu
        self._sleep = sleep
        self._started = timer()
        self.paused_secs = 0.0  # time given to ingest (read by the tests)
        self.idle_resumes = 0  # pauses ended early because the process was idle

    def contended(self) -> bool:
        """Whether senders are waiting for commits, now or a moment ago."""
        now = self._timer()
        if self._waiting():
            self._last_waiting = now
            return True
        return now - self._last_waiting < CONTENDED_MEMORY_SECS

    def resume(self) -> None:
        """The processor starts working again (time spent awaiting the store is not work)."""
        self._started = self._timer()

    async def turn(self, received_at: float) -> None:
        """Between two records; `received_at` is the next record's receive time."""
        worked = self._timer() - self._started
        if worked < self._chunk:
            return
        if self.contended():
            share = share_for(self._clock() - received_at)
            await self._pause(worked * (1.0 - share) / share)
        else:
            await self._sleep(0)
        self._started = self._timer()

    async def _pause(self, secs: float) -> None:
        """Sleep `secs` in steps, ending after a step in which the process was mostly idle."""
        start = step_wall = self._timer()
        step_cpu = self._cpu()
        waited = 0.0
        while waited < secs:
            await self._sleep(min(secs - waited, PAUSE_STEP_SECS))
            now, cpu = self._timer(), self._cpu()
            waited = now - start
            if cpu - step_cpu < IDLE_BELOW * (now - step_wall):
                self.idle_resumes += 1
                break
            step_wall, step_cpu = now, cpu
        self.paused_secs += waited
