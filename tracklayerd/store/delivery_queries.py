"""The delivery queue's SQL (a mixin of SQLiteStore; see tracklayerd/scheduler.py).

Leasing due deliveries, recording what a send did (requests, attempts, new states),
handing leases back, the queue's summary, operators' requeues (tracklayerd replay), and
a stored event's deliveries with their attempt history (the trace).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracklayerd.store import batch
from tracklayerd.store.base import (
    QUEUED,
    AttemptRecord,
    DeliveryRecord,
    DeliveryUpdate,
    Exchange,
    LeasedDelivery,
)

if TYPE_CHECKING:
    from tracklayerd.store.writer import Writer


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
QUEUED_SQL = "(" + ", ".join(f"'{status}'" for status in QUEUED) + ")"


class DeliveryQueries:
    """The delivery queue's reads and writes, mixed into SQLiteStore."""

    if TYPE_CHECKING:
        _max_params: int

        @property
        def writer(self) -> Writer: ...
        async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

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
        for chunk in batch.chunks(list(event_rows), 800):
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
