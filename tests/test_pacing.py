"""The processor's share of the event loop while senders wait (tracklayerd/pacing.py)."""

from __future__ import annotations

import pytest

from tracklayerd.pacing import (
    CONTENDED_MEMORY_SECS,
    IDLE_BELOW,
    LAG_HIGH_SECS,
    LAG_LOW_SECS,
    MAX_SHARE,
    MIN_SHARE,
    PAUSE_STEP_SECS,
    Pacer,
    share_for,
)


class Rig:
    """A timer and a CPU clock the test moves (the processor's work), and a sleep that
    records pauses; while the processor sleeps, ingest keeps `busy` of the core."""

    def __init__(self, contended: bool = True, now: float = 1000.0, busy: float = 1.0) -> None:
        self.timer = 0.0
        self.cpu = 0.0
        self.busy = busy
        self.now = now
        self.contended = contended
        self.pauses: list[float] = []
        self.pacer = Pacer(lambda: self.contended, lambda: self.now, chunk_secs=0.002,
                           timer=lambda: self.timer, cpu=lambda: self.cpu, sleep=self.sleep)

    async def sleep(self, secs: float) -> None:
        self.pauses.append(secs)
        self.timer += secs
        self.cpu += secs * self.busy

    async def work(self, secs: float, received_at: float) -> None:
        self.timer += secs
        self.cpu += secs
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
    pause = sum(rig.pauses)
    assert 0.004 / (0.004 + pause) == pytest.approx(MIN_SHARE)
    assert max(rig.pauses) <= PAUSE_STEP_SECS  # in steps, each a chance to see idleness
    assert rig.pacer.paused_secs == pytest.approx(pause)
    assert rig.pacer.idle_resumes == 0


async def test_an_old_backlog_gets_up_to_half_the_time() -> None:
    rig = Rig()
    await rig.work(0.003, received_at=rig.now - 2 * LAG_HIGH_SECS)
    pause = sum(rig.pauses)
    assert 0.003 / (0.003 + pause) == pytest.approx(MAX_SHARE)


async def test_a_pause_ends_once_the_process_has_been_mostly_idle() -> None:
    # Senders wait for their fsyncs, not for the CPU (a moderate load): the processor must
    # not fall behind a load the machine can carry.
    rig = Rig(busy=IDLE_BELOW - 0.1)
    await rig.work(0.004, received_at=rig.now)
    assert sum(rig.pauses) == pytest.approx(PAUSE_STEP_SECS)
    assert rig.pacer.idle_resumes == 1


async def test_a_pause_ends_within_a_step_of_the_load_dropping() -> None:
    # Judged step by step, not on the whole pause: 40 ms of saturation before the load
    # stops must not keep the processor waiting while the average catches up.
    rig = Rig(busy=1.0)
    saturated_until = rig.timer + 0.004 + 0.040
    record_sleep = rig.sleep

    async def sleep(secs: float) -> None:
        rig.busy = 1.0 if rig.timer < saturated_until else 0.0
        await record_sleep(secs)

    rig.pacer._sleep = sleep
    await rig.work(0.004, received_at=rig.now)
    assert rig.pacer.idle_resumes == 1
    assert sum(rig.pauses) == pytest.approx(0.040 + PAUSE_STEP_SECS)


async def test_a_busy_process_keeps_the_whole_pause() -> None:
    rig = Rig(busy=IDLE_BELOW + 0.05)
    await rig.work(0.004, received_at=rig.now)
    assert sum(rig.pauses) == pytest.approx(0.004 * (1 - MIN_SHARE) / MIN_SHARE)
    assert rig.pacer.idle_resumes == 0


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
    assert sum(rig.pauses) > 0
    rig.timer += CONTENDED_MEMORY_SECS
    assert not rig.pacer.contended()
