"""The single SQLite writer: one thread, one connection, group commit.

Callers submit jobs (functions of a connection) from the event loop. The thread takes
everything queued, runs the jobs in one transaction and COMMITs once; only then are the
callers' futures resolved. Jobs must be safe to run again: when one fails, the transaction
is rolled back and the group rerun with each job in a SAVEPOINT, so one failing job does not
undo the others (the common case pays for no savepoints).
While one COMMIT (and its fsync) is in progress the next group forms on its own, so commit
size follows load. A hand-rolled thread rather than aiosqlite on this path: it costs one
thread hop per group instead of several per statement (reference/performance.md §3c:
~100k vs ~74k rows/s). Readers use aiosqlite on their own connections.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from tracklayerd.errors import StoreUnavailable
from tracklayerd.store import batch

log = logging.getLogger("tracklayerd.store")
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]

# Bounds one transaction so a huge backlog still commits (and acknowledges) in slices.
MAX_ROWS_PER_COMMIT = 5000


class BulkInsert:
    """A job inserting rows: `sql` has a `{values}` list (store/batch.py). Consecutive
    BulkInserts of the same SQL in a group share its multi-row statements (the ingest hot
    path: a few statements per group, not one per row, so the writer hands the GIL back
    and forth with the event loop a few times per group instead of around every row).

    Called on its own it returns how many rows were new (INSERT OR IGNORE).
    """

    __slots__ = ("rows", "sql")

    def __init__(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.sql = sql
        self.rows = rows

    def __call__(self, conn: sqlite3.Connection) -> int:
        return _insert(conn, self.sql, self.rows)


def _insert(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """Insert `rows` with multi-row statements; how many rows were new."""
    before = conn.total_changes
    batch.run(conn, batch.statements(sql, rows, batch.max_params(conn)))
    return conn.total_changes - before


class Linger:
    """How long the writer waits for more jobs before it commits a group.

    A commit has a fixed cost (BEGIN, COMMIT, the WAL write and fsync, waking the event
    loop, two threads taking turns on the GIL): ~160 µs of CPU here, next to ~7 µs per
    inbox row. While the process has CPU to spare, waiting only adds latency, so the
    writer commits at once. When the process is CPU-bound (the loop plus this thread used
    at least `busy` of a core since the last group began), jobs keep arriving while the
    first waits; the writer then waits `step` at a time, for as long as the queue grows
    and at most `max_secs`, so one commit serves many requests (single events at 64
    connections: ~6 → ~60 rows per commit, +25 % throughput; see docs/operations.md).
    """

    def __init__(
        self, *, max_secs: float = 0.002, step_secs: float = 0.0002, busy: float = 0.9,
        wall: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.process_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_secs = max_secs
        self._step = step_secs
        self._busy = busy
        self._wall = wall
        self._cpu = cpu
        self._sleep = sleep
        self._since = (wall(), cpu())
        self.waits = 0  # groups that waited (read by the tests)

    def wait(self, queued: Callable[[], int]) -> float:
        """Called when a group's first job arrives; returns the seconds waited."""
        wall, cpu = self._wall(), self._cpu()
        since_wall, since_cpu = self._since
        self._since = (wall, cpu)
        if self.max_secs <= 0 or cpu - since_cpu < self._busy * (wall - since_wall):
            return 0.0
        self.waits += 1
        waited, seen = 0.0, queued()
        while waited < self.max_secs:
            self._sleep(self._step)
            waited += self._step
            now = queued()
            if now == seen:
                break
            seen = now
        return waited


@dataclass(slots=True)
class _Pending:
    job: Job
    future: asyncio.Future[Any]
    rows: int
    tag: str | None


@dataclass
class WriterStats:
    commits: int = 0
    rows: int = 0
    failed_commits: int = 0
    last_commit_secs: float = 0.0
    last_error: str | None = None
    rows_since_checkpoint: int = field(default=0)


class Writer:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        loop: asyncio.AbstractEventLoop,
        *,
        max_pending_rows: int,
        on_commit: Callable[[int, set[str]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._loop = loop
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        # Jobs submitted during one pass of the event loop go to the thread together, at
        # its end (_flush): one hand-over, and one wake-up of the thread, per pass instead
        # of per request. Each wake-up made the thread take the GIL from the busy loop.
        self._outbox: list[_Pending] = []
        self._max_pending_rows = max_pending_rows
        self._pending_rows = 0  # touched only on the event loop thread
        self._pending_by_tag: collections.Counter[str] = collections.Counter()
        self._on_commit = on_commit
        self._thread: threading.Thread | None = None
        self._stopped = False
        # (deadline, future) in submission order; one timer sweeps them (cheaper than a
        # timeout per request).
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._sweep_handle: asyncio.TimerHandle | None = None
        # Set from the loop, read by the writer between groups: finish a WAL checkpoint.
        self.checkpoint_tail_wanted = False
        self.linger = Linger()
        self.stats = WriterStats()
        # Called on the writer thread with each group's commit time (tracklayerd.metrics).
        self.on_commit_secs: Callable[[float], None] | None = None

    def start(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="tracklayerd-writer", daemon=True
        )
        self._thread.start()
        self._ready = ready

    async def wait_ready(self) -> None:
        await self._ready

    def submit(
        self, job: Job, rows: int = 1, tag: str | None = None,
        commit_timeout: float | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a job for the next group commit; the future resolves after COMMIT.

        `rows` counts towards the backpressure bound; `tag` is passed to `on_commit` once the
        job has committed (even if the caller stopped waiting). Raises StoreUnavailable at
        once when the queue is over its bound. After `commit_timeout` s the future fails with
        StoreUnavailable; the job may still commit later (callers' retries are idempotent).
        """
        if self._stopped:
            raise StoreUnavailable("store is shutting down")
        # A request bigger than the whole bound is admitted when nothing else waits, or it
        # would be refused forever and its sender would retry it forever.
        if rows and self._pending_rows and self._pending_rows + rows > self._max_pending_rows:
            raise StoreUnavailable("write queue is full")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending_rows += rows
        if tag is not None:
            self._pending_by_tag[tag] += 1
        self._outbox.append(_Pending(job, future, rows, tag))
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)
        if commit_timeout is not None:
            deadline = self._loop.time() + commit_timeout
            self._deadlines.append((deadline, future))
            if self._sweep_handle is None:
                self._sweep_handle = self._loop.call_at(deadline, self._sweep)
        return future

    def _flush(self) -> None:
        if self._outbox:
            self._queue.put(self._outbox)
            self._outbox = []

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable(
                    "commit did not finish in time (storage.commit_timeout_secs)"))
        if deadlines:
            self._sweep_handle = self._loop.call_at(deadlines[0][0], self._sweep)

    async def run(
        self, job: Callable[[sqlite3.Connection], T], rows: int = 1, tag: str | None = None,
        commit_timeout: float | None = None,
    ) -> T:
        result: T = await self.submit(job, rows, tag, commit_timeout)
        return result

    async def stop(self) -> None:
        """Commit everything already queued, then close the connection."""
        if self._stopped:
            return
        self._stopped = True
        self._flush()
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def pending_tagged(self, tag: str) -> int:
        """Jobs with this tag submitted and not yet resolved."""
        return self._pending_by_tag[tag]

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        self._loop.call_soon_threadsafe(_set_result, ready, None)
        carried: collections.deque[_Pending] = collections.deque()  # taken, not committed
        stop = False
        try:
            while not stop or carried:
                if not carried:
                    first = self._queue.get()
                    if first is None:
                        break
                    carried.extend(first)
                    self.linger.wait(self._queue.qsize)
                group: list[_Pending] = []
                rows = 0
                while rows < MAX_ROWS_PER_COMMIT:
                    if not carried:
                        if stop:
                            break
                        try:
                            more = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            stop = True  # commit what was queued before it, then end
                            continue
                        carried.extend(more)
                    item = carried.popleft()
                    group.append(item)
                    rows += item.rows
                self._commit_group(conn, group, rows)
                if self.checkpoint_tail_wanted:
                    self.checkpoint_tail_wanted = False
                    self._checkpoint_tail(conn)
            # Drain what raced with stop(): commit it rather than drop it.
            leftovers: list[_Pending] = []
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    leftovers.extend(more)
            if leftovers:
                self._commit_group(conn, leftovers, sum(p.rows for p in leftovers))
        finally:
            conn.close()

    def _checkpoint_tail(self, conn: sqlite3.Connection) -> None:
        # A background checkpoint copies the bulk of the WAL while commits go on, but under
        # continuous writes it never reaches the end, so the WAL never restarts and grows
        # until SQLite checkpoints inside a COMMIT (a stall of hundreds of ms). Between two
        # groups no write is in progress: the few frames left copy fast and the next write
        # starts the WAL from the beginning again.
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint in the writer failed: %s", exc)

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Pending], rows: int) -> None:
        started = time.perf_counter()
        outcomes = self._commit_fast(conn, group)
        if outcomes is None:
            outcomes = self._commit_isolated(conn, group)
        if any(ok for _, ok, _ in outcomes):
            self.stats.commits += 1
            self.stats.rows += rows
            self.stats.rows_since_checkpoint += rows
            self.stats.last_error = None
        self.stats.last_commit_secs = time.perf_counter() - started
        if self.on_commit_secs is not None:
            self.on_commit_secs(self.stats.last_commit_secs)
        self._loop.call_soon_threadsafe(self._resolve, outcomes, rows)

    def _commit_fast(
        self, conn: sqlite3.Connection, group: list[_Pending]
    ) -> list[tuple[_Pending, bool, Any]] | None:
        """All jobs in one transaction, no savepoints; None when a job failed."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return self._all_failed(conn, group, exc)
        results: list[Any] = []
        try:
            index = 0
            while index < len(group):
                job = group[index].job
                if not isinstance(job, BulkInsert):
                    results.append(job(conn))
                    index += 1
                    continue
                end = index + 1
                while end < len(group) and _same_bulk(group[end].job, job.sql):
                    end += 1
                jobs = [cast(BulkInsert, p.job) for p in group[index:end]]
                rows = [row for bulk in jobs for row in bulk.rows] if end - index > 1 else job.rows
                if _insert(conn, job.sql, rows) != len(rows):
                    # Some rows were already there: each caller must learn its own count,
                    # so the group reruns job by job (rare: retries of committed events).
                    _rollback(conn)
                    return None
                results.extend(len(bulk.rows) for bulk in jobs)
                index = end
        except Exception:
            _rollback(conn)
            return None
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._all_failed(conn, group, exc)
        return [(p, True, r) for p, r in zip(group, results, strict=True)]

    def _all_failed(
        self, conn: sqlite3.Connection, group: list[_Pending], exc: sqlite3.Error
    ) -> list[tuple[_Pending, bool, Any]]:
        _rollback(conn)
        error = StoreUnavailable(f"commit failed: {_describe(exc)}")
        self.stats.failed_commits += 1
        self.stats.last_error = str(error)
        log.error("store %s; %d writes refused, senders will retry", error, len(group))
        return [(p, False, error) for p in group]

    def _commit_isolated(
        self, conn: sqlite3.Connection, group: list[_Pending]
    ) -> list[tuple[_Pending, bool, Any]]:
        """The slow path: each job in a SAVEPOINT, so only the failing ones fail."""
        failed: dict[int, Exception] = {}
        while True:
            results: dict[int, Any] = {}
            aborted = False
            try:
                conn.execute("BEGIN IMMEDIATE")
                for index, pending in enumerate(group):
                    if index in failed:
                        continue
                    conn.execute("SAVEPOINT job")
                    try:
                        results[index] = pending.job(conn)
                    except Exception as exc:
                        failed[index] = _job_error(exc)
                        if not conn.in_transaction:
                            # SQLite aborted the whole transaction (SQLITE_FULL, I/O error):
                            # the jobs before this one are undone too. None is resolved yet,
                            # so run the group again without the failing job.
                            aborted = True
                            break
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    else:
                        conn.execute("RELEASE job")
                if aborted:
                    continue
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                everyone = self._all_failed(conn, group, exc)
                return [(p, False, failed.get(i, error))
                        for i, (p, _, error) in enumerate(everyone)]
            for message in {str(e) for e in failed.values()}:
                log.error("store write refused: %s", message)
            return [
                (p, False, failed[i]) if i in failed else (p, True, results[i])
                for i, p in enumerate(group)
            ]

    def _resolve(self, outcomes: list[tuple[_Pending, bool, Any]], rows: int) -> None:
        self._pending_rows -= rows
        tags: set[str] = set()
        committed = False
        for pending, ok, value in outcomes:
            if pending.tag is not None:
                self._pending_by_tag[pending.tag] -= 1
            if ok:
                committed = True
                if pending.tag is not None:
                    tags.add(pending.tag)
            future = pending.future
            if future.done():
                continue  # the caller was answered already (timeout); the write stands
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():
            deadlines.popleft()
        if committed and self._on_commit is not None:
            self._on_commit(rows, tags)


def _same_bulk(job: Job, sql: str) -> bool:
    return isinstance(job, BulkInsert) and job.sql == sql


def _job_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(_describe(exc))
    return exc


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rollback failed")


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
