"""The SQLite store: the only module with SQL (DDL lives in schema.py).

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
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from tracklayerd.errors import StartupError, StoreUnavailable
from tracklayerd.store import batch, schema
from tracklayerd.store.base import (
    QUEUED,
    AttemptRecord,
    DeliveryRecord,
    DeliveryUpdate,
    Exchange,
    ExplicitIdShare,
    ForgetReport,
    IdentityChanges,
    IdentityNode,
    InboxRecord,
    InboxRow,
    LeasedDelivery,
    Overlap,
    ProcessedEvent,
    QualitySummary,
    StoredEvent,
)
from tracklayerd.store.report_queries import ReportQueries
from tracklayerd.store.status_queries import StatusQueries
from tracklayerd.store.writer import BulkInsert, Writer

log = logging.getLogger("tracklayerd.store")
T = TypeVar("T")

SAFETY_AUTOCHECKPOINT_PAGES = 50_000
CHECKPOINT_IDLE_SECS = 1.0
REJECT_REASON_CHARS = 2000
INBOX_TAG = "inbox"
NODE_COLUMNS = "kind, value, person, first_seen, last_seen, first_event, last_event"
NODE_COLUMNS_OF_N = ", ".join(f"n.{column}" for column in NODE_COLUMNS.split(", "))
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
# The request's id is the first parameter (known once the request row is in).
INSERT_ATTEMPTS = (
    "INSERT INTO attempts (delivery, request, at, outcome, reason)"
    " SELECT v.column1, r.request, v.column2, v.column3, v.column4"
    " FROM (SELECT ? AS request) AS r, (VALUES {values}) AS v"
)
# Deliveries given the same new state (a batch the platform accepted) in one statement, the
# ids as a JSON array; the others (retries, each with its own backoff) row by row, in a VALUES
# list.
FINISH_DELIVERIES = (
    "UPDATE deliveries SET status = ?, attempts = attempts + ?, next_attempt_at = ?,"
    " last_reason = ?, updated_at = ?, finished_at = ?, lease_until = NULL"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
FINISH_EACH_DELIVERY = (
    "WITH u (id, status, tried, next_attempt_at, reason, updated_at, finished_at)"
    " AS (VALUES {values}) UPDATE deliveries SET status = u.status,"
    " attempts = attempts + u.tried, next_attempt_at = u.next_attempt_at,"
    " last_reason = u.reason, updated_at = u.updated_at, finished_at = u.finished_at,"
    " lease_until = NULL FROM u WHERE deliveries.id = u.id"
)
INSERT_INBOX = (
    "INSERT OR IGNORE INTO inbox (source, message_id, kind, received_at, request_ip, payload)"
    " VALUES {values}"
)
FULL_FRACTION = 0.98
QUEUED_SQL = "(" + ", ".join(f"'{status}'" for status in QUEUED) + ")"


class SQLiteStore(ReportQueries, StatusQueries):
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
        self._inbox_listeners: list[Callable[[], None]] = []
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
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
        if self._closing or running:
            return
        self.writer.stats.rows_since_checkpoint = 0
        self._checkpoint_task = asyncio.create_task(asyncio.to_thread(self._checkpoint))

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
                if self._synchronous != "OFF":
                    _flush_file(self.path)
                # The bulk is copied; the writer finishes the tail between two groups.
                if self._writer is not None:
                    self._writer.checkpoint_tail_wanted = True
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("background WAL checkpoint failed: %s", exc)

    # -- ingest ---------------------------------------------------------------------------

    async def append_inbox(
        self, rows: Sequence[InboxRow], commit_timeout: float | None = None
    ) -> int:
        params = [
            (r.source, r.message_id, r.kind, r.received_at, r.request_ip, r.payload) for r in rows
        ]

        inserted: int = await self.writer.run(
            BulkInsert(INSERT_INBOX, params), rows=len(params), tag=INBOX_TAG,
            commit_timeout=commit_timeout,
        )
        return inserted

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

    # -- identity graph -------------------------------------------------------------------

    async def load_identity(self, keys: Sequence[tuple[str, str]]) -> list[IdentityNode]:
        found: dict[tuple[str, str], IdentityNode] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in _chunks(unique, 400):
            values = ",".join("(?, ?)" for _ in chunk)
            # A join driven by the keys: `(kind, value) IN (VALUES ...)` makes SQLite scan
            # the whole table for every chunk (quadratic as the graph grows).
            rows = await self._fetchall(
                f"WITH k(kind, value) AS (VALUES {values}) SELECT {NODE_COLUMNS_OF_N}"
                " FROM k CROSS JOIN identity_nodes AS n ON n.kind = k.kind"
                " AND n.value = k.value", [part for key in chunk for part in key])
            for row in rows:
                found[(row[0], row[1])] = IdentityNode(*row)
        persons = list({node.person for node in found.values()})
        for people in _chunks(persons, 800):
            marks = ",".join("?" * len(people))
            for row in await self._fetchall(
                f"SELECT {NODE_COLUMNS} FROM identity_nodes WHERE person IN ({marks})", people
            ):
                found[(row[0], row[1])] = IdentityNode(*row)
        return list(found.values())

    async def prune_identity(self, before: float, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            # Bounded: retention never deletes millions of rows in one statement.
            return conn.execute(
                "DELETE FROM identity_nodes WHERE (kind, value) IN (SELECT kind, value"
                " FROM identity_nodes WHERE last_seen < ? LIMIT ?)", (before, limit),
            ).rowcount

        deleted: int = await self.writer.run(job, rows=limit)
        return deleted

    async def forget(
        self, *, user_ids: Sequence[str] = (), anonymous_ids: Sequence[str] = (),
        email_hashes: Sequence[str] = (), emails: Sequence[str] = (),
    ) -> ForgetReport:
        # 1. The person(s) these identifiers belong to, and everything linked to them.
        keys = ([("user_id", v) for v in user_ids] + [("anonymous_id", v) for v in anonymous_ids]
                + [("email", v) for v in email_hashes])
        nodes = await self.load_identity(keys)
        people = {n.person for n in nodes if (n.kind, n.value) in set(keys)}
        linked = [n for n in nodes if n.person in people]
        clear = {n.value for n in linked if n.kind not in ("email", "phone")}
        clear |= set(user_ids) | set(anonymous_ids)
        hashes = {n.value for n in linked if n.kind in ("email", "phone")} | set(email_hashes)
        needles = sorted({v.lower() for v in clear | set(emails) | hashes if len(v) >= 3})
        # 2. Stored events and raw inbox rows that name any of them (a scan: forget is rare).
        seqs: set[int] = set()
        for needle in needles:
            for table, column, key in (("events", "body", "id"), ("inbox", "payload", "seq")):
                rows = await self._fetchall(
                    f"SELECT {key} FROM {table} WHERE instr(lower(CAST({column} AS TEXT)), ?)",
                    (needle,))
                seqs.update(int(r[0]) for r in rows)
        node_keys = [(n.kind, n.value) for n in linked]
        seq_list = sorted(seqs)

        def job(conn: sqlite3.Connection) -> ForgetReport:
            # Deleted rows must not linger in free pages: overwrite them (erasure requests).
            # Then back to what the connection had (Debian's SQLite defaults to ON).
            before = conn.execute("PRAGMA secure_delete").fetchone()[0]
            conn.execute("PRAGMA secure_delete = ON")
            try:
                return delete(conn)
            finally:
                conn.execute(
                    f"PRAGMA secure_delete = {schema.SECURE_DELETE.get(before, 'ON')}")

        def delete(conn: sqlite3.Connection) -> ForgetReport:
            report = ForgetReport()
            for chunk in _chunks(seq_list, 800):
                marks = ",".join("?" * len(chunk))
                report.deliveries += conn.execute(
                    f"DELETE FROM deliveries WHERE event_row IN ({marks})", chunk).rowcount
                report.events += conn.execute(
                    f"DELETE FROM events WHERE id IN ({marks})", chunk).rowcount
                report.inbox_rows += conn.execute(
                    f"DELETE FROM inbox WHERE seq IN ({marks})", chunk).rowcount
            report.identity_nodes = sum(
                conn.execute("DELETE FROM identity_nodes WHERE kind = ? AND value = ?",
                             key).rowcount for key in node_keys)
            return report

        result: ForgetReport = await self.writer.run(job, rows=0)
        # Old copies of the pages also sit in the WAL until it is checkpointed and truncated.
        await asyncio.to_thread(self._checkpoint, "TRUNCATE")
        return result

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

    # -- delivery -------------------------------------------------------------------------

    async def lease_deliveries(
        self, destination: str, now: float, limit: int, lease_secs: float
    ) -> list[LeasedDelivery]:
        until = now + lease_secs

        def job(conn: sqlite3.Connection) -> list[Any]:
            # The status condition is spelled exactly as the partial index's, so it is used.
            # The payloads come with the rows, by primary key from delivery_details.
            return conn.execute(
                "UPDATE deliveries SET status = 'in_flight', lease_until = ?1,"
                " next_attempt_at = ?1, updated_at = ?2 WHERE id IN (SELECT id FROM deliveries"
                f" WHERE destination = ?3 AND status IN {QUEUED_SQL} AND next_attempt_at <= ?2"
                " ORDER BY next_attempt_at LIMIT ?4)"
                " RETURNING id, event_row, attempts, coalesce(created_at, updated_at),"
                " occurred_at, (SELECT payload FROM delivery_details AS p"
                " WHERE p.id = deliveries.id)",
                (until, now, destination, limit),
            ).fetchall()

        rows = await self.writer.run(job, rows=limit)
        leased = [
            LeasedDelivery(id=r[0], event_row=r[1], attempts=r[2], created_at=r[3],
                           occurred_at=r[4], payload=None if r[5] is None else bytes(r[5]))
            for r in rows
        ]
        leased.sort(key=lambda d: d.id)  # RETURNING order is unspecified; keep arrival order
        return leased

    async def event_bodies(self, event_rows: Sequence[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in _chunks(list(event_rows), 800):
            marks = ",".join("?" * len(chunk))
            for row_id, body in await self._fetchall(
                f"SELECT id, body FROM events WHERE id IN ({marks})", chunk
            ):
                if body is not None:
                    found[int(row_id)] = bytes(body)
        return found

    async def finish_deliveries(
        self, exchanges: Sequence[Exchange], updates: Sequence[DeliveryUpdate], now: float
    ) -> None:
        limit = self._max_params
        states: dict[tuple[Any, ...], list[int]] = {}
        for u in updates:
            states.setdefault((u.status, int(u.tried), u.next_attempt_at, u.reason, now,
                               now if u.status not in QUEUED else None), []).append(u.id)
        updates_sql: list[batch.Statement] = []
        each: list[tuple[Any, ...]] = []
        if len({u.id for u in updates}) == len(updates):
            for state, ids in states.items():
                if len(ids) > 1:
                    updates_sql.append((FINISH_DELIVERIES, [*state, json.dumps(ids)]))
                else:
                    each.append((ids[0], *state))
            updates_sql += batch.statements(FINISH_EACH_DELIVERY, each, limit)
        else:  # the same delivery twice: each update applies in turn, as given
            updates_sql = [
                (FINISH_DELIVERIES, [u.status, int(u.tried), u.next_attempt_at, u.reason, now,
                                     now if u.status not in QUEUED else None, f"[{u.id}]"])
                for u in updates]
        requests = [
            ((ex.destination, ex.started_at, ex.duration_ms, len(ex.attempts), ex.http_status,
              ex.response, ex.error) if ex.sent else None,
             batch.statements(INSERT_ATTEMPTS, [(a.delivery, ex.started_at, a.outcome, a.reason)
                                                for a in ex.attempts], limit, before=1))
            for ex in exchanges
        ]

        def job(conn: sqlite3.Connection) -> None:
            for request, attempts_sql in requests:
                request_id = None
                if request is not None:
                    request_id = conn.execute(
                        "INSERT INTO requests (destination, started_at, duration_ms, events,"
                        " http_status, response, error) VALUES (?, ?, ?, ?, ?, ?, ?)", request,
                    ).lastrowid
                for sql, params in attempts_sql:
                    params[0] = request_id
                    conn.execute(sql, params)
            batch.run(conn, updates_sql)

        attempts = sum(len(ex.attempts) for ex in exchanges)
        await self.writer.run(job, rows=len(updates) + attempts + len(exchanges))

    async def release_leases(self, ids: Sequence[int], now: float) -> None:
        rows = [(now, now, i) for i in ids]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN 'retrying'"
                " ELSE 'pending' END, next_attempt_at = ?, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND status = 'in_flight'", rows)

        await self.writer.run(job, rows=len(rows))

    async def queue_summary(self) -> dict[str, tuple[int, float | None]]:
        # Walks the queued rows only (the partial index): cheap unless a backlog is huge.
        rows = await self._fetchall(
            "SELECT destination, count(*), min(coalesce(created_at, updated_at))"
            f" FROM deliveries WHERE status IN {QUEUED_SQL} GROUP BY destination", ())
        return {r[0]: (int(r[1]), None if r[2] is None else float(r[2])) for r in rows}

    async def next_due(self, destination: str) -> float | None:
        rows = await self._fetchall(
            "SELECT min(next_attempt_at) FROM deliveries"
            f" WHERE destination = ? AND status IN {QUEUED_SQL}", (destination,))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def requeue(
        self, destination: str, statuses: Sequence[str], since: float | None, now: float,
        rebuild: bool = False, limit: int | None = None, force: bool = False,
    ) -> int:
        where, params = _requeue_filter(destination, statuses, since, force)

        def job(conn: sqlite3.Connection) -> int:
            ids = [row[0] for row in conn.execute(
                "UPDATE deliveries SET status = 'pending',"
                " next_attempt_at = ?, created_at = ?, updated_at = ?, finished_at = NULL,"
                " lease_until = NULL WHERE id IN (SELECT d.id FROM deliveries d"
                f" JOIN events e ON e.id = d.event_row WHERE {where} ORDER BY d.id LIMIT ?)"
                " RETURNING id",
                (now, now, now, *params, -1 if limit is None else limit),
            ).fetchall()]
            if rebuild:
                conn.execute(
                    "UPDATE delivery_details SET payload = NULL"
                    " WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))
            return len(ids)

        count: int = await self.writer.run(job, rows=limit or 1)
        return count

    async def count_deliveries(
        self, destination: str, statuses: Sequence[str], since: float | None = None,
        force: bool = False,
    ) -> int:
        where, params = _requeue_filter(destination, statuses, since, force)
        rows = await self._fetchall(
            f"SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_row WHERE {where}",
            params)
        return int(rows[0][0])

    # -- deduplication ----------------------------------------------------------------------

    async def dedup_seen(self, keys: Sequence[str]) -> dict[str, tuple[int, str, float]]:
        found: dict[str, tuple[int, str, float]] = {}
        for chunk in _chunks(list(dict.fromkeys(keys)), 800):
            marks = ",".join("?" * len(chunk))
            for key, row, source, seen_at in await self._fetchall(
                f"SELECT key, event_row, source, seen_at FROM dedup_keys WHERE key IN ({marks})",
                chunk,
            ):
                found[key] = (int(row), source, float(seen_at))
        return found

    async def delivered_event_ids(
        self, destination: str, event_ids: Sequence[str]
    ) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(dict.fromkeys(event_ids)), 800):
            marks = ",".join("?" * len(chunk))
            for event_id, row in await self._fetchall(
                # CROSS JOIN fixes the loop order: from these event ids outwards. Left to
                # itself SQLite walks every delivered row of the destination instead.
                "SELECT e.event_id, min(e.id) FROM events e CROSS JOIN deliveries d"
                " ON d.event_row = e.id AND d.destination = ? AND d.status = 'delivered'"
                f" WHERE e.event_id IN ({marks}) GROUP BY e.event_id", (destination, *chunk),
            ):
                found[event_id] = int(row)
        return found

    async def prune_dedup(self, before: float, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM dedup_keys WHERE key IN (SELECT key FROM dedup_keys"
                " WHERE seen_at < ? LIMIT ?)", (before, limit)).rowcount

        deleted: int = await self.writer.run(job, rows=limit)
        return deleted

    async def dedup_overlaps(self, since: float = 0.0) -> list[Overlap]:
        rows = await self._fetchall(
            "SELECT f.source, e.source, e.name, count(*) FROM events e"
            " JOIN events f ON f.id = e.duplicate_of"
            " WHERE e.duplicate_of IS NOT NULL AND e.received_at >= ?"
            " GROUP BY f.source, e.source, e.name ORDER BY count(*) DESC", (since,))
        return [Overlap(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def explicit_id_share(self, since: float = 0.0) -> list[ExplicitIdShare]:
        rows = await self._fetchall(
            "SELECT source, name, count(*), coalesce(sum(explicit_id), 0) FROM events"
            " WHERE status = 'accepted' AND received_at >= ? GROUP BY source, name"
            " ORDER BY source, name", (since,))
        return [ExplicitIdShare(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    async def delivery_records(self, event_row: int) -> list[DeliveryRecord]:
        records = [
            DeliveryRecord(
                id=r[0], destination=r[1], status=r[2], attempts=r[3], next_attempt_at=r[4],
                reason=r[5], created_at=r[6], finished_at=r[7], match_quality=r[8],
                match_missing=(r[9] or "").split(), payload=None if r[10] is None
                else bytes(r[10]), warnings=[w for w in (r[11] or "").split("\n") if w],
                consent=None if r[12] is None else r[12].encode(),
            )
            for r in await self._fetchall(
                "SELECT d.id, d.destination, d.status, d.attempts, d.next_attempt_at,"
                " d.last_reason, d.created_at, d.finished_at, d.match_quality, d.match_missing,"
                " p.payload, p.warnings, p.consent FROM deliveries d"
                " LEFT JOIN delivery_details p ON p.id = d.id WHERE d.event_row = ?"
                " ORDER BY d.destination", (event_row,))
        ]
        for record in records:
            record.history = [
                AttemptRecord(at=r[0], outcome=r[1], reason=r[2], request=r[3],
                              http_status=r[4], duration_ms=r[5], response=r[6], error=r[7])
                for r in await self._fetchall(
                    "SELECT a.at, a.outcome, a.reason, a.request, q.http_status,"
                    " q.duration_ms, q.response, q.error FROM attempts a"
                    " LEFT JOIN requests q ON q.id = a.request WHERE a.delivery = ?"
                    " ORDER BY a.id", (record.id,))
            ]
        return records

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


def _requeue_filter(
    destination: str, statuses: Sequence[str], since: float | None, force: bool
) -> tuple[str, list[Any]]:
    marks = ",".join("?" * len(statuses))
    where = (f"d.destination = ? AND d.status IN ({marks}) AND e.received_at >= ?")
    if not force:
        # The delivery ledger: what the platform accepted once is never sent again.
        where += (" AND d.status != 'delivered' AND NOT EXISTS (SELECT 1 FROM events e2"
                  " CROSS JOIN deliveries d2 ON d2.event_row = e2.id AND d2.destination ="
                  " d.destination AND d2.status = 'delivered' WHERE e2.event_id = e.event_id)")
    return where, [destination, *statuses, since or 0.0]


def _chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _flush_file(path: Path) -> None:
    """fdatasync a file through a descriptor of our own (flushes every writer's pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
