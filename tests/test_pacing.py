"""The processor's share of the event loop while senders wait (tracklayerd/pacing.py)."""

from __future__ import annotations

import pytest

from tracklayerd.pacing import (
    CONTENDED_MEMORY_SECS,
    LAG_HIGH_SECS,
    LAG_LOW_SECS,
    MAX_SHARE,
    MIN_SHARE,
    Pacer,
    share_for,
)


class Rig:
    """A timer the test moves (the processor's work) and a sleep that records pauses."""

    def __init__(self, contended: bool = True, now: float = 1000.0) -> None:
        self.timer = 0.0
        self.now = now
        self.contended = contended
        self.pauses: list[float] = []
        self.pacer = Pacer(lambda: self.contended, lambda: self.now, chunk_secs=0.002,
                           timer=lambda: self.timer, sleep=self.sleep)

    async def sleep(self, secs: float) -> None:
        self.pauses.append(secs)
        self.timer += secs

    async def work(self, secs: float, received_at: float) -> None:
        self.timer += secs
        await self.pacer.turn(received_at)


def test_share_grows_with_lag_between_the_bounds() -> None:
    assert share_for(0.0) == MIN_SHARE
    assert share_for(LAG_LOW_SECS) == MIN_SHARE
    middle = share_for((LAG_LOW_SECS + LAG_HIGH_SECS) / 2)
    assert middle == pytest.approx((MIN_SHARE + MAX_SHARE) / 2)
    assert share_for(LAG_HIGH_SECS) == MAX_SHARE
    assert share_for(10 * LAG_HIGH_SECS) == MAX_SHARE


async def test_no_turn_before_a_chunk_of_work() -> None:
    rig = Rig()
    await rig.work(0.001, received_at=rig.now)
    assert rig.pauses == []


async def test_a_fresh_backlog_keeps_the_minimum_share_while_senders_wait() -> None:
    rig = Rig()
    await rig.work(0.004, received_at=rig.now - 1.0)
    (pause,) = rig.pauses
    assert 0.004 / (0.004 + pause) == pytest.approx(MIN_SHARE)
    assert rig.pacer.paused_secs == pytest.approx(pause)


async def test_an_old_backlog_gets_up_to_half_the_time() -> None:
    rig = Rig()
    await rig.work(0.003, received_at=rig.now - 2 * LAG_HIGH_SECS)
    (pause,) = rig.pauses
    assert 0.003 / (0.003 + pause) == pytest.approx(MAX_SHARE)


async def test_without_waiting_senders_it_only_gives_the_loop_a_turn() -> None:
    rig = Rig(contended=False)
    for _ in range(3):
        await rig.work(0.0025, received_at=rig.now - 3600)
    assert rig.pauses == [0, 0, 0]
    assert rig.pacer.paused_secs == 0


async def test_time_awaiting_the_store_is_not_counted_as_work() -> None:
    rig = Rig()
    rig.timer += 5.0  # e.g. waiting for a read
    rig.pacer.resume()
    await rig.work(0.001, received_at=rig.now)
    assert rig.pauses == []


async def test_senders_seen_waiting_a_moment_ago_still_count() -> None:
    rig = Rig()
    assert rig.pacer.contended()
    rig.contended = False  # between two group commits nobody waits, for a moment
    rig.timer += CONTENDED_MEMORY_SECS / 2
    assert rig.pacer.contended()
    rig.pacer.resume()
    await rig.work(0.004, received_at=rig.now)
    assert len(rig.pauses) == 1 and rig.pauses[0] > 0
    rig.timer += CONTENDED_MEMORY_SECS
    assert not rig.pacer.contended()
