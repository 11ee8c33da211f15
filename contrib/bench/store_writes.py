"""The store's write costs on the delivery path, per event: what the processor's
`commit_processed` costs, and the scheduler's `lease_deliveries` + `finish_deliveries`.

Run from the repository root::

    .venv/bin/python contrib/bench/store_writes.py                 # 30,000 events, 3 runs
    .venv/bin/python contrib/bench/store_writes.py --events 100000 --repeat 1

Each run starts from an empty store and fills its inbox with realistic web purchases (every
identifier Meta matches on, one item, a consent statement: contrib/bench/delivery.py's
events, spread over the last hour), then:

* processes them with the real processor and pipeline (one Meta destination, whose endpoint
  is a closed port: nothing is sent). `commit_processed` is timed as the processor awaits it
  (what the event loop sees, thread hops included), as the writer thread's group-commit
  time (SQL, the job's Python work, the COMMIT and its fsync), and as the writer thread's
  CPU time (the same without waiting for the disk or for the GIL);
* drains the deliveries as the scheduler records a fully accepted batch: `lease_deliveries`
  of 1,000, then `finish_deliveries` with one Exchange for the request and one Attempt and
  one DeliveryUpdate ("delivered") per delivery. Each call is timed as awaited; the writer
  thread's CPU time for all of them is given too.

Figures are per event (one delivery per event), the median of the runs with their min-max.
Nothing is asserted. The machine is shared and slow: compare medians of several runs, and
re-measure a baseline in the same session before comparing a change against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec  # noqa: E402
from delivery import free_port, make_config, native_event  # noqa: E402

from tracklayerd.destinations.registry import create_destinations  # noqa: E402
from tracklayerd.processor import Pipeline, Processor  # noqa: E402
from tracklayerd.store.base import Attempt, DeliveryUpdate, Exchange, InboxRow  # noqa: E402
from tracklayerd.store.sqlite import SQLiteStore  # noqa: E402
from tracklayerd.threads import share_gil_with_store_threads  # noqa: E402

BATCH = 1000
FIGURES = ("commit_processed (awaited)", "commit_processed (writer, wall)",
           "commit_processed (writer, CPU)", "lease_deliveries", "finish_deliveries",
           "lease + finish", "lease + finish (writer, CPU)")


async def fill_inbox(store: SQLiteStore, n: int, now: float) -> None:
    """delivery.py's purchases, each at its own time over the last hour (as traffic comes:
    with one time for all, the identity graph's last_seen index is filled at random)."""
    encode = msgspec.json.encode
    for start in range(0, n, 5000):
        rows = []
        for i in range(start, min(n, start + 5000)):
            event = native_event(i, now)
            event["timestamp"] = now - 3600 + 3570 * i / n
            rows.append(InboxRow(source="web", message_id=f"order-{i}", kind="native",
                                 received_at=now, payload=encode(event)))
        await store.append_inbox(rows)


async def writer_cpu(store: SQLiteStore) -> float:
    """The writer thread's CPU time so far (less noisy than wall time on a shared machine;
    it leaves out the fsync waits)."""
    return await store.writer.run(lambda conn: time.thread_time(), rows=0)


def timed(call: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    return wrapper


async def one_run(data_dir: Path, n: int) -> dict[str, float]:
    """µs per event of each figure, for one store of n events."""
    # A closed port: the destination is built (payloads encoded) but nothing is sent.
    config = make_config(data_dir, free_port(), 1)
    path = Path(config.storage.path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(path)
    await store.open()
    try:
        now = time.time()
        await fill_inbox(store, n, now)
        await asyncio.sleep(2 * store._checkpoint_idle_secs)  # let the fill's checkpoint end

        committed: list[float] = []
        group_secs: list[float] = []
        store.commit_processed = timed(store.commit_processed, committed)  # type: ignore[method-assign]
        store.writer.on_commit_secs = group_secs.append
        destinations = create_destinations(config)
        cpu = await writer_cpu(store)
        await Processor(store, Pipeline(config, destinations)).run_until_idle()
        process_cpu = await writer_cpu(store) - cpu
        store.writer.on_commit_secs = None
        counts = await store.counts()
        if counts.get("deliveries.pending") != n:
            raise SystemExit(f"expected {n} pending deliveries: {counts}")
        await asyncio.sleep(2 * store._checkpoint_idle_secs)

        leases: list[float] = []
        finishes: list[float] = []
        delivered = 0
        clock = time.time()  # deliveries are due from when they were processed
        cpu = await writer_cpu(store)
        while True:
            clock += 1.0
            started = time.perf_counter()
            batch = await store.lease_deliveries("meta", clock, BATCH, 60.0)
            leases.append(time.perf_counter() - started)
            if not batch:
                break
            attempts = [Attempt(delivery=d.id, outcome="delivered") for d in batch]
            exchange = Exchange(destination="meta", attempts=attempts, started_at=clock,
                                duration_ms=250.0, http_status=200,
                                response=f'{{"events_received":{len(batch)},"messages":[],'
                                         '"fbtrace_id":"AbCdEfGhIj"}')
            updates = [DeliveryUpdate(id=d.id, status="delivered", next_attempt_at=clock)
                       for d in batch]
            started = time.perf_counter()
            await store.finish_deliveries([exchange], updates, clock + 0.25)
            finishes.append(time.perf_counter() - started)
            delivered += len(batch)
        deliver_cpu = await writer_cpu(store) - cpu
        if delivered != n:
            raise SystemExit(f"leased {delivered} deliveries, expected {n}")
        for destination in destinations.values():
            await destination.close()
    finally:
        await store.close()
    micro = 1e6 / n
    return {
        FIGURES[0]: sum(committed) * micro,
        FIGURES[1]: sum(group_secs) * micro,
        FIGURES[2]: process_cpu * micro,
        FIGURES[3]: sum(leases) * micro,
        FIGURES[4]: sum(finishes) * micro,
        FIGURES[5]: (sum(leases) + sum(finishes)) * micro,
        FIGURES[6]: deliver_cpu * micro,
    }


def report(runs: Sequence[dict[str, float]]) -> None:
    for figure in FIGURES:
        values = [run[figure] for run in runs]
        spread = f"  ({min(values):6.1f} - {max(values):6.1f})" if len(values) > 1 else ""
        print(f"{figure:34s} {statistics.median(values):7.1f} µs/event{spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    share_gil_with_store_threads()  # as every tracklayerd command does
    data_dir = Path(tempfile.mkdtemp(prefix="tracklayerd-bench-"))
    runs = []
    try:
        for i in range(args.repeat):
            runs.append(asyncio.run(one_run(data_dir, args.events)))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()),
                  file=sys.stderr)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{args.events:,} purchase events, one Meta destination, leases of {BATCH}, "
          f"{args.repeat} run(s), {os.cpu_count()} CPUs; median (min - max)")
    report(runs)


if __name__ == "__main__":
    main()
