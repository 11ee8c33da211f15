"""The writer's linger: wait for more jobs only while the process is CPU-bound."""

from __future__ import annotations

from tracklayerd.store.writer import Linger


class Clocks:
    """A wall clock and a CPU clock the test moves; sleeping advances both (the other
    threads keep the CPU busy while the writer sleeps) and lets `arrivals` jobs in."""

    def __init__(self, arrivals: list[int]) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.queued = 1
        self.arrivals = list(arrivals)
        self.sleeps: list[float] = []

    def sleep(self, secs: float) -> None:
        self.sleeps.append(secs)
        self.wall += secs
        self.cpu += secs
        self.queued += self.arrivals.pop(0) if self.arrivals else 0

    def run(self, secs: float, cpu_fraction: float) -> None:
        self.wall += secs
        self.cpu += secs * cpu_fraction


def linger(clocks: Clocks, **kwargs: float) -> Linger:
    return Linger(wall=lambda: clocks.wall, cpu=lambda: clocks.cpu, sleep=clocks.sleep,
                  **kwargs)


def test_an_idle_process_commits_at_once() -> None:
    clocks = Clocks(arrivals=[5, 5, 5])
    policy = linger(clocks)
    clocks.run(0.01, cpu_fraction=0.3)
    assert policy.wait(lambda: clocks.queued) == 0.0
    assert clocks.sleeps == []
    assert policy.waits == 0


def test_a_busy_process_waits_while_jobs_keep_arriving() -> None:
    clocks = Clocks(arrivals=[3, 2, 0, 4])
    policy = linger(clocks, max_secs=0.002, step_secs=0.0002)
    clocks.run(0.01, cpu_fraction=0.97)
    waited = policy.wait(lambda: clocks.queued)
    # Two steps saw new jobs, the third saw none: the group is complete.
    assert clocks.sleeps == [0.0002] * 3
    assert abs(waited - 0.0006) < 1e-12
    assert clocks.queued == 6
    assert policy.waits == 1


def test_the_wait_is_bounded() -> None:
    clocks = Clocks(arrivals=[1] * 100)
    policy = linger(clocks, max_secs=0.002, step_secs=0.0005)
    clocks.run(0.01, cpu_fraction=1.0)
    assert policy.wait(lambda: clocks.queued) == 0.002
    assert len(clocks.sleeps) == 4


def test_busy_is_measured_since_the_previous_group() -> None:
    clocks = Clocks(arrivals=[])
    policy = linger(clocks)
    clocks.run(1.0, cpu_fraction=0.2)
    assert policy.wait(lambda: clocks.queued) == 0.0
    # Only the time since that group counts: a long idle past does not hide a busy present.
    clocks.run(0.005, cpu_fraction=0.95)
    assert policy.wait(lambda: clocks.queued) > 0.0
    clocks.run(0.005, cpu_fraction=0.5)
    assert policy.wait(lambda: clocks.queued) == 0.0


def test_zero_disables_it() -> None:
    clocks = Clocks(arrivals=[1, 1])
    policy = linger(clocks, max_secs=0.0)
    clocks.run(0.01, cpu_fraction=1.0)
    assert policy.wait(lambda: clocks.queued) == 0.0
