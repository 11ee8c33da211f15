"""The SQLite store, the only SQL behind the Store interface: this class and the mixins it
inherits (*_queries.py) hold the queries, schema.py the DDL.

PRAGMAs, set explicitly on the writer connection (docs/operations.md explains each; the
reader sets busy_timeout and query_only):

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers.
* ``synchronous=FULL`` (default) fsyncs the WAL at each COMMIT, so an acknowledged event
  survives power loss; ``NORMAL`` survives a process crash only. Group commit amortises the
  fsync over every request waiting in the group.
* ``busy_timeout``: how long a write waits for a lock held by another process (a backup,
  the CLI) before the request gets 503.
* ``foreign_keys=ON``: deliveries go when their event goes, and a delivery's details and
  attempts with it. Set once migrations have run (schema.upgrade runs them without).
* ``wal_autocheckpoint`` is raised to a safety valve; checkpoints normally run on a separate
  connection in the background, so WAL copying never stalls a request's COMMIT (the p99 trap
  in reference/performance.md §4).
* ``journal_size_limit`` (64 MiB) truncates a WAL that grew in a burst; ``temp_store=MEMORY``.
* ``max_page_count`` from ``storage.max_db_bytes`` when set: a full store refuses writes
  (503) instead of filling the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from tracklayerd import threads
from tracklayerd.errors import StartupError, StoreUnavailable
from tracklayerd.store import batch, schema
from tracklayerd.store.base import (
    QUEUED,
    IdentityChanges,
    InboxRecord,
    InboxRow,
    ProcessedEvent,
    QualitySummary,
    StoredEvent,
)
from tracklayerd.store.dedup_queries import DedupQueries
from tracklayerd.store.delivery_queries import DeliveryQueries
from tracklayerd.store.identity_queries import NODE_COLUMNS, IdentityQueries
from tracklayerd.store.report_queries import ReportQueries
from tracklayerd.store.status_queries import StatusQueries
from tracklayerd.store.writer import BulkInsert, Writer

log = logging.getLogger("tracklayerd.store")

SAFETY_AUTOCHECKPOINT_PAGES = 50_000
CHECKPOINT_IDLE_SECS = 1.0
REJECT_REASON_CHARS = 2000
INBOX_TAG = "inbox"
UPSERT_NODES = (
    f"INSERT INTO identity_nodes ({NODE_COLUMNS}) VALUES {{values}}"
    " ON CONFLICT (kind, value) DO UPDATE SET person = excluded.person,"
    " last_seen = max(last_seen, excluded.last_seen),"
    " last_event = CASE WHEN excluded.last_seen >= last_seen THEN excluded.last_event"
    " ELSE last_event END"
)
INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (id, source, event_id, name, status, reason, occurred_at,"
    " received_at, body, duplicate_of, explicit_id) VALUES {values}"
)
UPSERT_KEYS = (
    "INSERT INTO dedup_keys (key, event_row, source, seen_at) VALUES {values}"
    " ON CONFLICT (key) DO UPDATE SET event_row = excluded.event_row,"
    " source = excluded.source, seen_at = excluded.seen_at"
)
# RETURNING: the new rows only (a delivery already stored keeps its details).
INSERT_DELIVERIES = (
    "INSERT OR IGNORE INTO deliveries (event_row, destination, status, next_attempt_at,"
    " last_reason, updated_at, match_quality, match_missing, created_at, occurred_at,"
    " finished_at, consent_outcome, consent_rule) VALUES {values}"
    " RETURNING id, event_row, destination"
)
INSERT_DETAILS = (
    "INSERT INTO delivery_details (id, payload, warnings, consent) VALUES {values}"
)
INSERT_INBOX = (
    "INSERT OR IGNORE INTO inbox (source, message_id, kind, received_at, request_ip, payload)"
    " VALUES {values}"
)
FULL_FRACTION = 0.98


class SQLiteStore(DeliveryQueries, DedupQueries, IdentityQueries, ReportQueries, StatusQueries):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        max_pending_rows: int = 50_000,
        checkpoint_rows: int = 10_000,
        max_db_bytes: int | None = None,
        checkpoint_idle_secs: float = CHECKPOINT_IDLE_SECS,
        on_migrating: Callable[[int, int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        # Called (on the writer thread) before a schema upgrade runs: (from, to) version.
        # `serve` uses it to tell systemd that this start will take longer.
        self._on_migrating = on_migrating
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._max_pending_rows = max_pending_rows
        self._checkpoint_rows = checkpoint_rows
        self._max_db_bytes = max_db_bytes
        self._checkpoint_idle_secs = checkpoint_idle_secs
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._flush_fd: int | None = None  # the database file, for the checkpoint's fdatasync
        self._inbox_listeners: list[Callable[[], None]] = []
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._checkpoint_task: asyncio.Future[None] | None = None
        self._closing = False
        self._migrated = (0, 0)
        self._max_params = batch.DEFAULT_MAX_PARAMS
        self.checkpoints = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._open()
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            await self.close()
            raise StartupError(f"cannot open the store at {self.path}: {exc}") from None

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._writer = Writer(
            self._connect_writer, loop, max_pending_rows=self._max_pending_rows,
            on_commit=self._after_commit,
        )
        self._writer.start()
        await self._writer.wait_ready()  # the schema is migrated by then (_connect_writer)
        before, after = self._migrated
        if before != after:
            log.info("store schema migrated from version %d to %d", before, after)
        # For the checkpoint thread's fdatasync. Held open until every connection is closed:
        # POSIX drops all of a process's locks on a file when any descriptor of it is
        # closed, and another process closing its last connection would then find the
        # database unlocked, checkpoint it and delete the WAL under our writer.
        self._flush_fd = os.open(self.path, os.O_RDONLY)
        # Background checkpoints run on a thread of their own at a lower CPU priority
        # (threads.lower_priority): copying the WAL is ~35 ms of CPU a second under load,
        # and at equal priority it took half the core from the event loop meanwhile.
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tracklayerd-checkpoint",
            initializer=threads.lower_priority)
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        self._closing = True
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
        if self._checkpoint_task is not None:
            await self._checkpoint_task
        if self._writer is not None:
            await self._writer.stop()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._checkpointer is not None:
            self._checkpointer.shutdown(wait=True)
            self._checkpointer = None
        if self._flush_fd is not None:
            os.close(self._flush_fd)  # last: no connection of ours is left to lose its locks
            self._flush_fd = None

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA temp_store = MEMORY")
            if self._max_db_bytes:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, self._max_db_bytes // page_size)}")
            # Migrations run with foreign keys off (schema.upgrade), before any job.
            version = schema.current_version(conn)
            if version < schema.SCHEMA_VERSION:
                log.info("migrating the store schema from version %d to %d: this takes a "
                         "while on a big store (docs/operations.md, Upgrades)",
                         version, schema.SCHEMA_VERSION)
                if self._on_migrating is not None:
                    self._on_migrating(version, schema.SCHEMA_VERSION)
            self._migrated = schema.upgrade(conn)
            self._max_params = batch.max_params(conn)
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def healthy(self) -> bool:
        return self._writer is not None and self._writer.alive

    def ingest_waiting(self) -> bool:
        return self._writer is not None and self._writer.pending_tagged(INBOX_TAG) > 0

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise StoreUnavailable("store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("store is not open")
        return self._reader

    # -- notifications and checkpoints -----------------------------------------------------

    def on_inbox_append(self, callback: Callable[[], None]) -> None:
        self._inbox_listeners.append(callback)

    def _after_commit(self, rows: int, tags: set[str]) -> None:
        if INBOX_TAG in tags:
            for callback in self._inbox_listeners:
                callback()
        writer = self.writer
        if writer.stats.rows_since_checkpoint >= self._checkpoint_rows:
            self._start_checkpoint()
        elif self._checkpoint_timer is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._checkpoint_timer = loop.call_later(
                self._checkpoint_idle_secs, self._start_checkpoint
            )

    def _start_checkpoint(self) -> None:
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
            self._checkpoint_timer = None
        running = self._checkpoint_task is not None and not self._checkpoint_task.done()
        if self._closing or running or self._checkpointer is None:
            return
        self.writer.stats.rows_since_checkpoint = 0
        loop = asyncio.get_running_loop()
        self._checkpoint_task = asyncio.ensure_future(
            loop.run_in_executor(self._checkpointer, self._checkpoint))

    def _checkpoint(self, mode: str = "PASSIVE") -> None:
        # A connection of its own: PASSIVE never waits for the writer and never blocks it.
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                self.checkpoints += 1
                # Under continuous writes this pass ends short of the WAL's end, and SQLite
                # syncs the database file only when a checkpoint reaches it: that would be
                # the writer's tail, which then flushed the whole pass (~10-20 ms with
                # every commit waiting). Flushing here, off the writer, leaves the tail a
                # few pages.
                if self._synchronous != "OFF" and self._flush_fd is not None:
                    _fdatasync(self._flush_fd)
                # The bulk is copied; the writer finishes the tail between two groups.
                if self._writer is not None:
                    self._writer.checkpoint_tail_wanted = True
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("background WAL checkpoint failed: %s", exc)

    # -- ingest ---------------------------------------------------------------------------

    def append_inbox(
        self, rows: Sequence[InboxRow], commit_timeout: float | None = None
    ) -> asyncio.Future[int]:
        params = [
            (r.source, r.message_id, r.kind, r.received_at, r.request_ip, r.payload) for r in rows
        ]
        return self.writer.submit(
            BulkInsert(INSERT_INBOX, params), rows=len(params), tag=INBOX_TAG,
            commit_timeout=commit_timeout,
        )

    async def record_reject(self, source: str, reason: str) -> None:
        # Only our own description of the problem is kept (no raw sample): raw input may
        # carry personal data, and the sender already has it.
        now = time.time()

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ingest_rejects (source, received_at, reason) VALUES (?, ?, ?)",
                (source, now, reason[:REJECT_REASON_CHARS]),
            )

        await self.writer.run(job)

    async def inbox_message_ids(self, source: str) -> list[str]:
        return [
            row[0]
            for row in await self._fetchall(
                "SELECT message_id FROM inbox WHERE source = ? ORDER BY seq", (source,)
            )
        ]

    async def rejects(self, source: str) -> list[str]:
        rows = await self._fetchall(
            "SELECT reason FROM ingest_rejects WHERE source = ? ORDER BY id", (source,)
        )
        return [r[0] for r in rows]

    # -- processor ------------------------------------------------------------------------

    async def read_inbox(self, after_seq: int, limit: int) -> list[InboxRecord]:
        rows = await self._fetchall(
            "SELECT seq, source, message_id, kind, received_at, request_ip, payload"
            " FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [
            InboxRecord(
                seq=r[0], source=r[1], message_id=r[2], kind=r[3], received_at=r[4],
                request_ip=r[5], payload=bytes(r[6]),
            )
            for r in rows
        ]

    async def cursor(self, name: str) -> int:
        rows = await self._fetchall("SELECT position FROM cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    async def inbox_backlog(self, cursor_name: str) -> tuple[int, float | None]:
        # max(seq) and the first row after the cursor are both one search of the primary
        # key, whatever the size of the backlog.
        rows = await self._fetchall(
            "WITH c(position) AS (SELECT coalesce("
            "(SELECT position FROM cursors WHERE name = ?), 0))"
            " SELECT coalesce((SELECT max(seq) FROM inbox), 0) - c.position,"
            " (SELECT received_at FROM inbox WHERE seq > c.position ORDER BY seq LIMIT 1)"
            " FROM c", (cursor_name,))
        count, oldest = rows[0]
        return max(0, int(count)), oldest

    async def commit_processed(
        self, events: Sequence[ProcessedEvent], cursor_name: str, position: int,
        identity: IdentityChanges | None = None, now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        limit = self._max_params

        # An event's id is its inbox seq, so a slice processed twice (replayed, or retried
        # after a failed commit) changes nothing the second time. The statements are built
        # here, on the event loop: the writer thread only runs them.
        events_sql = batch.statements(INSERT_EVENTS, [
            (ev.inbox_seq, ev.source, ev.event_id, ev.name, ev.status, ev.reason,
             ev.occurred_at, ev.received_at, ev.body, ev.duplicate_of, int(ev.explicit_id))
            for ev in events
        ], limit)
        keys_sql = batch.statements(UPSERT_KEYS, [
            (ev.dedup_key, ev.inbox_seq, ev.source, ev.received_at)
            for ev in events if ev.dedup_key is not None
        ], limit)
        delivery_rows: list[tuple[Any, ...]] = []
        details: dict[tuple[int, str], tuple[bytes | None, str | None, str | None]] = {}
        for ev in events:
            for d in ev.deliveries:
                outcome, rule = batch.consent_columns(d.consent)
                delivery_rows.append((
                    ev.inbox_seq, d.destination, d.status, now, d.reason, now, d.match_quality,
                    " ".join(d.match_missing) or None, now, ev.occurred_at,
                    None if d.status in QUEUED else now, outcome, rule))
                warnings = "\n".join(d.warnings) or None
                if d.payload is not None or warnings is not None or d.consent is not None:
                    details[(ev.inbox_seq, d.destination)] = (
                        d.payload, warnings, None if d.consent is None else d.consent.decode())
        deliveries_sql = batch.statements(INSERT_DELIVERIES, delivery_rows, limit)
        nodes = [] if identity is None else identity.nodes
        nodes_sql = batch.statements(UPSERT_NODES, [
            (n.kind, n.value, n.person, n.first_seen, n.last_seen, n.first_event, n.last_event)
            for n in nodes
        ], limit)
        relabels = [] if identity is None else [(new, old) for old, new in identity.relabels]

        def job(conn: sqlite3.Connection) -> None:
            batch.run(conn, events_sql)
            batch.run(conn, keys_sql)  # only first claims (or claims after the window)
            added = batch.run(conn, deliveries_sql)
            if details:
                batch.run(conn, batch.statements(INSERT_DETAILS, [
                    (delivery, *details[(row, destination)])
                    for delivery, row, destination in added if (row, destination) in details
                ], limit))
            if relabels:
                conn.executemany("UPDATE identity_nodes SET person = ? WHERE person = ?", relabels)
            batch.run(conn, nodes_sql)
            conn.execute(
                "INSERT INTO cursors (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (cursor_name, position),
            )

        await self.writer.run(job, rows=len(events) + len(delivery_rows) + len(nodes) + 1)

    async def quality_summary(self, since: float = 0.0) -> list[QualitySummary]:
        rows = await self._fetchall(
            "SELECT d.destination, e.name, count(*), avg(d.match_quality),"
            " sum(d.match_quality < 2), sum(d.match_quality >= 2 AND d.match_quality < 4),"
            " sum(d.match_quality >= 4 AND d.match_quality < 6),"
            " sum(d.match_quality >= 6 AND d.match_quality < 8), sum(d.match_quality >= 8)"
            " FROM deliveries d JOIN events e ON e.id = d.event_row"
            " WHERE d.match_quality IS NOT NULL AND e.received_at >= ?"
            " GROUP BY d.destination, e.name ORDER BY d.destination, e.name", (since,))
        missing: dict[tuple[str, str], dict[str, int]] = {}
        for destination, name, kinds, count in await self._fetchall(
            "SELECT d.destination, e.name, d.match_missing, count(*)"
            " FROM deliveries d JOIN events e ON e.id = d.event_row"
            " WHERE d.match_missing IS NOT NULL AND e.received_at >= ?"
            " GROUP BY d.destination, e.name, d.match_missing", (since,)
        ):
            counts = missing.setdefault((destination, name), {})
            for kind in kinds.split():
                counts[kind] = counts.get(kind, 0) + int(count)
        return [
            QualitySummary(
                destination=r[0], event=r[1], deliveries=int(r[2]), mean=round(float(r[3]), 2),
                bands=[int(b) for b in r[4:9]],
                top_missing=sorted(missing.get((r[0], r[1]), {}).items(),
                                   key=lambda kv: (-kv[1], kv[0]))[:5],
            )
            for r in rows
        ]

    # -- health and inspection ------------------------------------------------------------

    async def check_writable(self) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cursors (name, position) VALUES ('readyz', ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (int(time.time()),),
            )
            if self._max_db_bytes:
                # The probe's own write fits in an existing page; ingest needs new ones.
                used = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                limit = conn.execute("PRAGMA max_page_count").fetchone()[0]
                if used - free >= limit * FULL_FRACTION:
                    raise StoreUnavailable("store is full (storage.max_db_bytes)")

        # rows=1: a probe waits in the same queue as ingest, so a full queue is not ready.
        await self.writer.run(job, rows=1)

    async def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for table in ("inbox", "events", "deliveries", "ingest_rejects"):
            rows = await self._fetchall(f"SELECT count(*) FROM {table}", ())
            result[table] = int(rows[0][0])
        for status, n in await self._fetchall(
            "SELECT status, count(*) FROM deliveries GROUP BY status", ()
        ):
            result[f"deliveries.{status}"] = int(n)
        for status, n in await self._fetchall(
            "SELECT status, count(*) FROM events GROUP BY status", ()
        ):
            result[f"events.{status}"] = int(n)
        return result

    async def events_for(self, source: str, event_ids: Sequence[str]) -> list[StoredEvent]:
        marks = ",".join("?" * len(event_ids))
        rows = await self._fetchall(
            "SELECT id, id, source, event_id, status, name, reason, body FROM events"
            f" WHERE source = ? AND event_id IN ({marks}) ORDER BY id",
            (source, *event_ids),
        )
        return [
            StoredEvent(id=r[0], inbox_seq=r[1], source=r[2], event_id=r[3], status=r[4],
                        name=r[5], reason=r[6], body=None if r[7] is None else bytes(r[7]))
            for r in rows
        ]

    async def deliveries_for(self, event_row: int) -> list[tuple[str, str]]:
        rows = await self._fetchall(
            "SELECT destination, status FROM deliveries WHERE event_row = ? ORDER BY destination",
            (event_row,),
        )
        return [(r[0], r[1]) for r in rows]

    async def inbox_record(self, seq: int) -> InboxRecord | None:
        rows = await self._fetchall(
            "SELECT seq, source, message_id, kind, received_at, request_ip, payload"
            " FROM inbox WHERE seq = ?", (seq,))
        if not rows:
            return None
        r = rows[0]
        return InboxRecord(seq=r[0], source=r[1], message_id=r[2], kind=r[3], received_at=r[4],
                           request_ip=r[5], payload=bytes(r[6]))

    async def stored_event(self, event_row: int) -> StoredEvent | None:
        rows = await self._fetchall(
            "SELECT id, id, source, event_id, status, name, reason, body FROM events"
            " WHERE id = ?", (event_row,))
        if not rows:
            return None
        r = rows[0]
        return StoredEvent(id=r[0], inbox_seq=r[1], source=r[2], event_id=r[3], status=r[4],
                           name=r[5], reason=r[6], body=None if r[7] is None else bytes(r[7]))

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            async with self.reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"read failed: {exc}") from exc


# macOS has no fdatasync (a local dev mirror runs there too).
_fdatasync = getattr(os, "fdatasync", os.fsync)
